"""Exporters by name: what turns the build's model (or a file made from it) into the file
a device runs, and proves that file computes what its source did.

A :class:`~edgecompress.targets.TargetProfile` names its exporters in order; everything
that maps a target to files reads them here: the stage a recipe runs an exporter under,
the kind and suffixes of what it writes, the runtime that executes them, what it falls
back to. Adding a target is one profile (and an exporter, if its files are new):

    register_exporter(ExporterSpec("onnx_opt", ArtifactKind.onnx, (".opt.onnx",),
                                   "onnxruntime", ("onnx",), OptimizedOnnx))

Torch-free (recipes and profiles are checked against it); an implementation is imported
only when a build runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from edgecompress.artifacts import Artifact, ArtifactKind
from edgecompress.registry import Registry, load_late
from edgecompress.runtime.backends import SUFFIXES, register_suffix

if TYPE_CHECKING:
    from torch import nn

# Parity of a file with its source on the same inputs: ``cosine`` (worst output),
# ``max_abs_diff``, ... as ``exporters.onnx.parity_metrics`` computes them.
Parity = dict[str, float]


class Exporter(Protocol):
    """An exporter's implementation, made with its options (a pydantic ``Config``);
    ``ctx`` is the build's :class:`~edgecompress.stages.base.BuildContext`."""

    Config: ClassVar[Any]

    def __init__(self, cfg: Any) -> None: ...

    def export(self, model: nn.Module, ctx: Any) -> Artifact | None:
        """Write the file (atomically) and record it; None where it cannot be made here
        and the build says how to make it (a TensorRT engine without its GPU)."""
        ...

    def verify(self, model: nn.Module, artifact: Artifact, ctx: Any) -> Parity:
        """The file against its reference on the build's test inputs, recorded in the
        report; raises :class:`~edgecompress.errors.ParityError` past the options' limits."""
        ...


@dataclass(frozen=True)
class ExporterSpec:
    name: str  # as a target profile names it
    kind: ArtifactKind
    writes: tuple[str, ...]  # suffixes of what it writes, the default file's first
    runtime: str  # the backend in edgecompress.runtime.backends that executes its files
    accepts: tuple[str, ...]  # "model" (the build's PyTorch model) and/or artifact kinds
    impl: str | type[Exporter]  # "module:Class" (its options: the class's Config), loaded late
    # The stage a recipe names to run it alone; "export" (with ``exporters: [name]``)
    # for an exporter without one of its own.
    stage: str = "export"
    fallbacks: tuple[str, ...] = ()  # what it does where its first way fails
    doc: str = ""

    @property
    def needs(self) -> tuple[ArtifactKind, ...]:
        return tuple(ArtifactKind(a) for a in self.accepts if a != "model")

    def load(self) -> type[Exporter]:
        loaded: type[Exporter] = load_late(self.impl)
        return loaded

    def make(self, options: dict[str, Any] | None = None) -> Exporter:
        """The implementation with its options (validated against its ``Config``)."""
        cls = self.load()
        return cls(cls.Config.model_validate(options or {}))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "writes": list(self.writes),
            "runtime": self.runtime,
            "accepts": list(self.accepts),
            "fallbacks": list(self.fallbacks),
            "doc": self.doc,
        }


EXPORTERS: Registry[ExporterSpec] = Registry("exporter")


def export_and_verify(exporter: Exporter, model: nn.Module, ctx: Any) -> Artifact | None:
    """What running an exporter in a build means: write the file, then prove it."""
    artifact = exporter.export(model, ctx)
    if artifact is not None:
        exporter.verify(model, artifact, ctx)
    return artifact


def register_exporter(spec: ExporterSpec) -> ExporterSpec:
    """Register ``spec`` (a plug-in's or a test's); the runtime learns its suffixes."""
    EXPORTERS.register(spec.name)(spec)
    for suffix in spec.writes:
        register_suffix(suffix, spec.runtime)
    return spec


def unregister_exporter(name: str) -> None:
    """Remove a registered exporter (a test's, when it is done) and the suffixes only it
    wrote."""
    gone = EXPORTERS.get(name).writes
    EXPORTERS.remove(name)
    kept = {s for n in EXPORTERS for s in EXPORTERS.get(n).writes}
    for suffix in set(gone) - kept:
        SUFFIXES.pop(suffix.lower(), None)


def deployed_suffixes(exporters: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """What the last of ``exporters`` (a profile's: the file the device runs) writes;
    nothing for one not registered here (a report from a plug-in's build)."""
    last = exporters[-1] if exporters else ""
    return EXPORTERS.get(last).writes if last in EXPORTERS else ()


def writes(path: Path, exporters: tuple[str, ...] | list[str]) -> bool:
    """Is ``path`` a file the device a profile with ``exporters`` runs?"""
    return any(path.name.lower().endswith(s) for s in deployed_suffixes(exporters))


for _spec in (
    ExporterSpec(
        "onnx",
        ArtifactKind.onnx,
        (".onnx",),
        "onnxruntime",
        ("model",),
        "edgecompress.stages.export_onnx:ExportOnnx",
        stage="export_onnx",
        doc="FP32 ONNX of a float model, INT8 QDQ ONNX (the scales QAT learned) of a "
        "fake-quantized one; proven in ONNX Runtime against PyTorch",
    ),
    ExporterSpec(
        "rknn",
        ArtifactKind.rknn,
        (".rknn",),
        "rknnlite",
        ("onnx",),
        "edgecompress.stages.export_rknn:ExportRknn",
        stage="export_rknn",
        fallbacks=("float_calibrated",),
        doc="rknn-toolkit2 from the latest ONNX (its QDQ ranges taken over, or the "
        "toolkit's calibration); proven in the RKNN simulator against ONNX Runtime",
    ),
    ExporterSpec(
        "tensorrt",
        ArtifactKind.tensorrt,
        (".engine", ".plan"),
        "tensorrt",
        ("onnx",),
        "edgecompress.stages.export_tensorrt:ExportTensorrt",
        stage="export_tensorrt",
        fallbacks=("onnx_for_tensorrt",),
        doc="trtexec on the device (or a local GPU) from the latest ONNX; without one, the "
        "ONNX TensorRT reads and how to build the engine",
    ),
):
    register_exporter(_spec)
