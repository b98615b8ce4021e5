"""The stage interface: a name, a small config model and ``run(model, ctx) -> model``.

A stage records what it did (numbers, not prose) in ``ctx.report``. Stages never call
each other; the pipeline composes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from edgecompress.calibration.bundle import DataBundle
from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.registry import Registry
from edgecompress.report.schema import Report
from edgecompress.targets import TargetProfile


class StageConfig(BaseModel):
    """Base of every stage's config: unknown keys are errors (typos must not pass)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class BuildOptions:
    """Machine-specific options that do not belong in a recipe."""

    rknn_python: str | None = None
    threads: int = 1
    progress: bool = True
    devices: tuple[str, ...] = ()  # ssh:// / adb:// devices to benchmark artifacts on
    device_python: str | None = None
    ssh_options: tuple[str, ...] = ()


@dataclass
class BuildContext:
    out_dir: Path
    target: TargetProfile
    spec: PreprocessSpec
    data: DataBundle
    report: Report
    options: BuildOptions = field(default_factory=BuildOptions)
    # The model as it was before the previous model-changing stage: the teacher for
    # recovery and the reference for "what did this stage cost".
    teacher: nn.Module | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    # The running stage's own folder (out/stages/NN_name/) and whether this run resumes.
    stage_dir: Path | None = None
    resume: bool = False
    # The model as the user gave it: every accuracy is also compared with its predictions.
    original: nn.Module | None = None
    _reference: Any = None

    def reference_logits(self) -> Any:
        """The original model's logits on the validation inputs (computed once)."""
        if self._reference is None and self.original is not None:
            from edgecompress.distill.loop import evaluate_logits

            self._reference = evaluate_logits(self.original, self.data.val_inputs)
        return self._reference

    def log(self, message: str) -> None:
        """One progress line on stderr, unless the build is quiet."""
        if self.options.progress:
            import sys

            print(message, file=sys.stderr, flush=True)

    def artifact(self, name: str, needed_by: str) -> Path:
        from edgecompress.errors import ConfigError

        if name not in self.artifacts:
            raise ConfigError(
                f"stage {needed_by!r} needs the {name!r} artifact, which no earlier stage "
                f"produced; add the export_{name} stage before it in the recipe"
            )
        return self.artifacts[name]


class Stage:
    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    changes_model: ClassVar[bool] = False
    # A stage that changes the model makes the model before it the next teacher; a
    # recovery stage (distill) keeps the teacher it was given.
    sets_teacher: ClassVar[bool] = True

    def __init__(self, cfg: StageConfig) -> None:
        self.cfg = cfg

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "changes_model": cls.changes_model,
            "doc": (cls.__doc__ or "").strip(),
        }


STAGES: Registry[type[Stage]] = Registry("stage")


def register_stage(cls: type[Stage]) -> type[Stage]:
    STAGES.register(cls.name)(cls)
    return cls
