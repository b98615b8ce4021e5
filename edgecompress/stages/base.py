"""The stage interface: a name, a small config model and ``run(model, ctx) -> model``.

A stage records what it did (numbers, not prose) in ``ctx.report``. Stages never call
each other; the pipeline composes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgecompress.artifacts import Artifact, ArtifactKind, Artifacts
from edgecompress.calibration.bundle import DataBundle
from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.exporters.registry import export_and_verify
from edgecompress.registry import Registry, load_late
from edgecompress.report.schema import Report
from edgecompress.stages.configs import StageConfig
from edgecompress.targets import TargetProfile

if TYPE_CHECKING:  # torch stays out of recipe parsing
    from torch import nn


@dataclass
class BuildOptions:
    """Machine-specific options that do not belong in a recipe."""

    rknn_python: str | None = None
    threads: int = 1
    progress: bool = True
    devices: tuple[str, ...] = ()  # ssh:// / adb:// devices to benchmark artifacts on
    device_python: str | None = None
    ssh_options: tuple[str, ...] = ()
    # Probe this machine first where it has no measured profile (``build --probe``).
    probe: bool = False


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
    artifacts: Artifacts = field(default_factory=Artifacts)
    # The running stage's own folder (out/stages/NN_name/) and whether this run resumes.
    stage_dir: Path | None = None
    resume: bool = False
    # The model as the user gave it: every accuracy is also compared with its predictions.
    original: nn.Module | None = None
    # (label, model) for the original and after each model-changing stage: the summary
    # times them all in one run (the bench stage). A stage's model is named by its saved
    # checkpoint, loaded when timed: a copy of each in memory would hold, on a 2.5 GB
    # ViT-H, gigabytes the pruning and training need.
    snapshots: list[tuple[str, nn.Module | Path]] = field(default_factory=list)
    # Normalised calibration inputs given as they are (``ec.export``), not from ``data``.
    calibration: Any = None
    _reference: Any = None

    def reference_logits(self) -> Any:
        """The original model's logits on the test inputs (computed once)."""
        if self._reference is None and self.original is not None:
            from edgecompress.measure import evaluate_logits

            self._reference = evaluate_logits(self.original, self.data.test_inputs)
        return self._reference

    def calibration_inputs(self) -> Any:
        """The calibration images as normalised float32 model inputs (N, C, H, W)."""
        import numpy as np

        if self.calibration is not None or not len(self.data.calibration_prepared):
            return self.calibration
        return np.stack([self.spec.normalize(im) for im in self.data.calibration_prepared])

    def log(self, message: str) -> None:
        """One progress line on stderr, unless the build is quiet."""
        if self.options.progress:
            import sys

            print(message, file=sys.stderr, flush=True)

    def artifact(self, kind: ArtifactKind, needed_by: str, name: str | None = None) -> Artifact:
        """The latest deployable artifact of ``kind`` (or the one called ``name``)."""
        from edgecompress.errors import ConfigError

        found = self.artifacts.latest(kind, name)
        if found is None:
            what = f"the {name!r} artifact" if name else f"an {kind.value} artifact"
            raise ConfigError(
                f"stage {needed_by!r} needs {what}, which no earlier stage produced; "
                f"add {maker_of(kind)} before it in the recipe"
            )
        return found

    def add_artifact(
        self, name: str, kind: ArtifactKind, precision: str, path: Path, *, deploy: bool = True
    ) -> Artifact:
        """Record a file the running stage wrote; returns the record (its name made unique)."""
        stage = self.stage_dir.name if self.stage_dir is not None else "?"
        return self.artifacts.add(Artifact(name, kind, precision, stage, path, deploy))


class Stage:
    """A stage's implementation: ``run(model, ctx) -> model``. What it needs and makes is
    declared on the class (and copied into its ``StageSpec`` when registered)."""

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    changes_model: ClassVar[bool] = False
    # What the stage reads and writes, checked over the whole recipe before anything runs.
    needs: ClassVar[tuple[ArtifactKind, ...]] = ()
    makes: ClassVar[tuple[ArtifactKind, ...]] = ()
    # False for stages that rewrite float layers (pruning, merging): they must come
    # before quantization; True ones run on a fake-quantized model as well.
    takes_quantized: ClassVar[bool] = True
    quantizes: ClassVar[bool] = False
    # A stage that changes the model makes the model before it the next teacher; a
    # recovery stage (distill) keeps the teacher it was given.
    sets_teacher: ClassVar[bool] = True

    def __init__(self, cfg: StageConfig) -> None:
        self.cfg = cfg

    def keeps_input(self) -> bool:
        """Does ``run`` leave the model it is given as it was (returning a new one)? Then
        that model is the next teacher as it stands, with no copy kept beside it."""
        return False

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        raise NotImplementedError


class ExportStage(Stage):
    """A stage that runs one exporter (:mod:`edgecompress.exporters.registry`): it writes
    its file, then proves it."""

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        export_and_verify(self, model, ctx)
        return model

    def export(self, model: nn.Module, ctx: BuildContext) -> Artifact | None:
        raise NotImplementedError

    def verify(self, model: nn.Module, artifact: Artifact, ctx: BuildContext) -> dict[str, float]:
        raise NotImplementedError


@dataclass(frozen=True)
class StageSpec:
    """A registered stage as the recipe sees it, without importing its implementation
    (``impl`` is "module:Class" for the built-ins, which import torch)."""

    name: str
    Config: type[StageConfig]
    impl: str | type[Stage]
    doc: str = ""
    changes_model: bool = False
    needs: tuple[ArtifactKind, ...] = ()
    makes: tuple[ArtifactKind, ...] = ()
    takes_quantized: bool = True
    quantizes: bool = False
    sets_teacher: bool = True

    def load(self) -> type[Stage]:
        loaded: type[Stage] = load_late(self.impl)
        return loaded

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "changes_model": self.changes_model, "doc": self.doc}


STAGES: Registry[StageSpec] = Registry("stage")


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Register a stage class (a plug-in or a test's) under its name."""
    spec = StageSpec(
        cls.name,
        cls.Config,
        cls,
        (cls.__doc__ or "").strip(),
        cls.changes_model,
        cls.needs,
        cls.makes,
        cls.takes_quantized,
        cls.quantizes,
        cls.sets_teacher,
    )
    STAGES.register(cls.name)(spec)
    return cls


def maker_of(kind: ArtifactKind) -> str:
    """The registered stage(s) that make ``kind``, for error messages."""
    names = [n for n in STAGES.names() if kind in STAGES.get(n).makes]
    return " or ".join(repr(n) for n in names) if names else f"a stage that makes {kind.value}"


def record_model(ctx: BuildContext, model: nn.Module, label: str) -> None:
    """One row of "what compression bought": MACs, parameters and test accuracy of the
    model as it stands (``label``: "original" or the stage folder that made it)."""
    import torch

    from edgecompress.evaluate import classification_metrics
    from edgecompress.measure import count_macs, evaluate_logits
    from edgecompress.quantize.fake import float_copy, is_quantized
    from edgecompress.report.schema import UNITS, metric

    quantized = is_quantized(model)
    example = torch.from_numpy(ctx.data.test_inputs[:1].copy())
    macs, params = count_macs(float_copy(model) if quantized else model, example)
    logits = evaluate_logits(model, ctx.data.test_inputs)
    acc = classification_metrics(logits, ctx.data.test_labels, ctx.reference_logits())
    how = f"PyTorch{' (fake-quantized)' if quantized else ''}, {len(logits)} test images"
    # Val top-1 is what choices read (goal attempts, the deployed form); test is reported.
    val = classification_metrics(evaluate_logits(model, ctx.data.val_inputs), ctx.data.val_labels)
    ctx.report.data.setdefault("models", []).append(
        {
            "label": label,
            "quantized": quantized,
            "macs": macs,
            "params": params,
            **{k: metric(v, UNITS.get(k, ""), how) for k, v in acc.items()},
            "val_top1": metric(val["top1"], "%", how.replace("test", "val")),
            "val_loss": metric(val["loss"], "", how.replace("test", "val")),
        }
    )
