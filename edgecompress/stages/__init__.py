"""Pipeline stages, registered by name. The built-ins are declared here as specs (what
each needs, makes and does to the model) with their torch-free configs; a stage's
implementation is imported only when a build runs it, so parsing and checking a recipe
never imports torch."""

from edgecompress.artifacts import ArtifactKind
from edgecompress.stages.base import STAGES, BuildContext, Stage, StageSpec, register_stage
from edgecompress.stages.configs import (
    BenchConfig,
    DistillConfig,
    EvaluateConfig,
    ExportConfig,
    ExportOnnxConfig,
    ExportRknnConfig,
    ExportTensorrtConfig,
    MergeConfig,
    PruneConfig,
    QuantizeConfig,
    StageConfig,
)

_BUILTIN = (
    StageSpec(
        "evaluate",
        EvaluateConfig,
        "edgecompress.stages.evaluate:Evaluate",
        "top-1/top-5, loss and agreement of the PyTorch model on the test split",
    ),
    StageSpec(
        "prune",
        PruneConfig,
        "edgecompress.stages.prune:Prune",
        "remove whole channels to a MAC/parameter/latency budget",
        changes_model=True,
        takes_quantized=False,
    ),
    StageSpec(
        "distill",
        DistillConfig,
        "edgecompress.stages.distill:Distill",
        "train the model against the one before the last change; keep the best epoch",
        changes_model=True,
        sets_teacher=False,
    ),
    StageSpec(
        "merge",
        MergeConfig,
        "edgecompress.stages.merge:Merge",
        "fewer, denser layers: BN folds, branch sums, stacked convs (DeepRebirth)",
        changes_model=True,
        takes_quantized=False,
    ),
    StageSpec(
        "quantize",
        QuantizeConfig,
        "edgecompress.stages.quantize:Quantize",
        "LSQ QAT down a bit-width ladder; a PTQ baseline beside it",
        changes_model=True,
        quantizes=True,
    ),
    StageSpec(
        "export",
        ExportConfig,
        "edgecompress.stages.export:Export",
        "the target's exporters in order (or those named), each file written then proven",
    ),
    StageSpec(
        "export_onnx",
        ExportOnnxConfig,
        "edgecompress.stages.export_onnx:ExportOnnx",
        "the model as ONNX (INT8 QDQ after quantize), proven in ONNX Runtime",
        makes=(ArtifactKind.onnx,),
    ),
    StageSpec(
        "export_rknn",
        ExportRknnConfig,
        "edgecompress.stages.export_rknn:ExportRknn",
        "the latest ONNX model as RKNN, run in the RKNN simulator",
        needs=(ArtifactKind.onnx,),
        makes=(ArtifactKind.rknn,),
    ),
    StageSpec(
        "export_tensorrt",
        ExportTensorrtConfig,
        "edgecompress.stages.export_tensorrt:ExportTensorrt",
        "the latest ONNX model as a TensorRT engine, built and timed by trtexec on the device",
        needs=(ArtifactKind.onnx,),
        makes=(ArtifactKind.tensorrt,),
    ),
    StageSpec(
        "bench",
        BenchConfig,
        "edgecompress.stages.bench:Bench",
        "latency, memory and energy of every artifact and every model state",
    ),
)
for _spec in _BUILTIN:
    STAGES.register(_spec.name)(_spec)

__all__ = ["STAGES", "BuildContext", "Stage", "StageConfig", "StageSpec", "register_stage"]
