"""Each built-in stage's config, torch-free: a recipe is parsed and checked (names
against the declared choices, the stage order against what each stage needs) without
importing torch or any toolchain. Every training step shares one recovery config
(``FitConfig``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from edgecompress.choices import (
    ALLOCATIONS,
    APPROXIMATE_RULES,
    CRITERIA,
    EXACT_RULES,
    MERGE_RULES,
    PTQ_CALIBRATION,
    QAT_INIT,
)
from edgecompress.distill.config import FitConfig
from edgecompress.quantize.config import Rung


class StageConfig(BaseModel):
    """Base of every stage's config: unknown keys are errors (typos must not pass)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EvaluateConfig(StageConfig):
    label: str = "pytorch"  # the accuracy entry's name in the report


class PruneConfig(StageConfig):
    metric: str = Field(
        "macs", pattern="^(macs|params|latency)$", description="what the budget counts"
    )
    keep: float = Field(0.5, gt=0, lt=1, description="fraction of the metric to keep")
    criterion: Annotated[str, CRITERIA.validator("prune.criterion")] = "l1"
    allocation: Annotated[str, ALLOCATIONS.validator("prune.allocation")] = "global"
    align: bool = Field(True, description="round widths to the target's channel alignment")
    ignore: tuple[str, ...] = Field(
        (), description="layer names never pruned (the classifier never is)"
    )
    schedule: str = Field("one_shot", pattern="^(one_shot|iterative)$")
    steps: int = Field(3, ge=1, description="iterative: pruning steps")
    k: float = Field(3.0, gt=1, description="iterative: p_i = p * (1 - (1 - i/n)^k)")
    recovery: FitConfig = Field(
        FitConfig(epochs=1, lr=0.01), description="iterative: training between steps"
    )
    slimming: float = Field(0.0, ge=0, description="L1 on BN gammas during a sparsity pre-training")
    slimming_epochs: int = Field(2, ge=1)
    calibration_batches: int = Field(
        4, ge=1, description="batches for data criteria and sensitivity"
    )


class DistillConfig(StageConfig):
    teacher: Path | None = Field(
        None, description="teacher model file (default: the model before the last change)"
    )
    teacher_arch: str | None = Field(None, description="--arch for a state_dict teacher")
    train: FitConfig = FitConfig(epochs=5, lr=0.01)


def _rules(rules: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(MERGE_RULES.check(r, "merge.rules") for r in rules)


class MergeConfig(StageConfig):
    rules: Annotated[tuple[str, ...], Field(description="exact rules to apply")] = EXACT_RULES
    approximate: bool = Field(
        False, description=f"also DeepRebirth's merges ({', '.join(APPROXIMATE_RULES)})"
    )
    tolerance: float = Field(1e-4, gt=0, description="exact merges: max relative output change")
    recovery_mode: str = Field(
        "all_at_once",
        pattern="^(none|all_at_once|layer_by_layer)$",
        description="after approximate merges: distil once after all of them, or after each",
    )
    recovery: FitConfig = FitConfig(epochs=3, lr=0.01)

    def model_post_init(self, _ctx: object) -> None:
        _rules(self.rules)


class QuantizeConfig(StageConfig):
    rungs: tuple[Rung, ...] | None = Field(
        None, description="the ladder; default: the target profile's (defaults.ladder)"
    )
    init: Annotated[str, QAT_INIT.validator("quantize.init")] = "minmax"
    lr: float = Field(0.002, gt=0)
    below_target: bool = Field(
        False, description="run rungs below what the target executes (for size)"
    )
    ptq: Annotated[str, PTQ_CALIBRATION.validator("quantize.ptq")] | None = Field(
        "minmax", description="PTQ baseline calibration, or null for none"
    )
    calibration_batches: int = Field(4, ge=1)
    keep_layers: tuple[str, ...] = Field(
        (), description="conv/linear layers (names or glob patterns) whose weights keep keep_bits"
    )
    sensitive_layers: int = Field(
        0,
        ge=0,
        description="also keep the N layers whose weights alone at the lowest rung move the "
        "outputs most (measured on val)",
    )
    keep_bits: int = Field(8, ge=2, le=8, description="weight bits of the kept layers")
    seed: int = Field(0, description="seeds the ladder's training order and augmentation")


class ExportOnnxConfig(StageConfig):
    opset: int | None = Field(None, ge=17, description="default: the target profile's")
    exporter: str = Field("auto", pattern="^(auto|dynamo|torchscript)$")
    simplify: bool = True
    max_abs_diff: float = Field(1e-3, gt=0, description="float export: fail past this")
    min_cosine: float = Field(0.9999, gt=0, le=1, description="float export: fail below this")
    min_cosine_int8: float = Field(
        0.99, gt=0, le=1, description="INT8 export vs the fake-quantized model: fail below this"
    )
    filename: str | None = Field(None, description="default: model.onnx, or model.int8.onnx")


class ExportRknnConfig(StageConfig):
    source: str | None = Field(
        None,
        description="the ONNX artifact to convert: default the latest deployable one; or a "
        "name from the report's artifacts (e.g. onnx_ptq)",
    )
    label: str = "rknn-simulator"
    quantize: bool = True
    algorithm: str = Field("normal", pattern="^(normal|mmse|kl_divergence)$")
    method: str = Field("channel", pattern="^(channel|layer)$")
    min_cosine: float = Field(0.98, gt=0, le=1, description="simulator vs ONNX Runtime, per output")
    filename: str = "model.rknn"
    fallback: str = Field(
        "none",
        pattern="^(none|float_calibrated)$",
        description="when converting an INT8 QDQ model fails or crashes the toolkit: "
        "none (the build fails), or float_calibrated (convert the float model quantize "
        "started from, with the toolkit's own calibration; the report says so)",
    )


class ExportTensorrtConfig(StageConfig):
    source: str | None = Field(
        None,
        description="the ONNX artifact to build from: default the latest deployable one",
    )
    filename: str = "model.engine"
    timeout_s: float = Field(1800, gt=0, description="trtexec's engine build on the device")


class ExportConfig(StageConfig):
    exporters: list[str] | None = Field(
        None, description="registered exporters to run, in order: default the target's"
    )
    options: dict[str, dict[str, object]] = Field(
        {}, description="per exporter, its options (those of its export_<name> stage)"
    )


class BenchConfig(StageConfig):
    runs: int = Field(200, ge=1, description="timed calls per file, shared by the rounds")
    rounds: int = Field(
        5,
        ge=1,
        description="host: files timed round-robin this many times; each keeps its fastest "
        "round (the least disturbed by other work on a shared machine)",
    )
    warmup: int = Field(20, ge=0)
    min_time_s: float = Field(1.0, ge=0)
    threads: int | None = Field(None, ge=1, description="default: the build's --threads")
    sensors: list[str] = Field(["auto"], description="power sensors on the device; [] for none")
    idle_s: float = Field(1.0, ge=0, description="idle window for the power baseline")
    timeout_s: float = Field(600.0, gt=0, description="per artifact and device")
    deploy: str = Field(
        "fastest",
        pattern="^(fastest|as_built)$",
        description="for a target that runs on this machine: deploy the fastest form timed "
        "here (the INT8 file, ONNX Runtime's PTQ of the same model, or its FP32 form) within "
        "max_accuracy_drop val points, or the file the export stages made",
    )
    max_accuracy_drop: float = Field(
        1.0, ge=0, description="val top-1 points below the original a deployed form may lose"
    )
