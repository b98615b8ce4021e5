"""Artifacts as typed records: what a stage wrote (kind, precision, the stage that made
it, path), so later stages ask for "the latest ONNX model" instead of a name another
stage happens to use. Torch-free: recipes are checked against these kinds before
anything runs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class ArtifactKind(StrEnum):
    onnx = "onnx"
    rknn = "rknn"
    tensorrt = "tensorrt"


@dataclass(frozen=True)
class Artifact:
    """One file a build wrote. ``name`` is its key in the report (unique in a build);
    ``deploy`` is False for files kept only for comparison (the PTQ baseline)."""

    name: str
    kind: ArtifactKind
    precision: str  # fp32 | fp16 | int8 (what the device executes)
    stage: str  # the stage folder that made it, e.g. "06_export_onnx"
    path: Path
    deploy: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "precision": self.precision,
            "stage": self.stage,
            "path": str(self.path),
            "deploy": self.deploy,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Artifact:
        return cls(
            raw["name"],
            ArtifactKind(raw["kind"]),
            raw["precision"],
            raw["stage"],
            Path(raw["path"]),
            bool(raw.get("deploy", True)),
        )


class Artifacts:
    """The artifacts of one build, in the order they were made."""

    def __init__(self, items: list[Artifact] | None = None) -> None:
        self.items: list[Artifact] = list(items or [])

    def add(self, artifact: Artifact) -> Artifact:
        """Record ``artifact``; a name already used by an earlier stage gets a suffix
        (a stage may appear twice in a recipe)."""
        taken = {a.name for a in self.items}
        name, n = artifact.name, 2
        while name in taken:
            name, n = f"{artifact.name}_{n}", n + 1
        if name != artifact.name:
            artifact = Artifact(
                name, artifact.kind, artifact.precision, artifact.stage, artifact.path,
                artifact.deploy,
            )  # fmt: skip
        self.items.append(artifact)
        return artifact

    def latest(self, kind: ArtifactKind, name: str | None = None) -> Artifact | None:
        """The most recent deployable artifact of ``kind`` (or the one called ``name``)."""
        for a in reversed(self.items):
            if name is not None and a.name == name:
                return a
            if name is None and a.kind is kind and a.deploy:
                return a
        return None

    def update(self, name: str, **changes: Any) -> Artifact:
        """Replace the record called ``name`` with a copy carrying ``changes`` (a file the
        bench stage moved, or stopped deploying)."""
        from dataclasses import replace

        i = next(i for i, a in enumerate(self.items) if a.name == name)
        self.items[i] = replace(self.items[i], **changes)
        return self.items[i]

    def deployed(self) -> list[Artifact]:
        """The last artifact of each kind: what the build hands over."""
        seen: dict[ArtifactKind, Artifact] = {}
        for a in self.items:
            if a.deploy:
                seen[a.kind] = a
        return list(seen.values())

    def __iter__(self) -> Iterator[Artifact]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
