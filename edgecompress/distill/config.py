"""The one recovery configuration: how every fine-tuning step trains (distillation,
recovery after pruning or merging, the QAT ladder), and the losses it mixes. Torch-free,
so a recipe is validated without importing torch."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from edgecompress.choices import LOSSES


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, LOSSES.validator("loss")]
    weight: float = Field(1.0, ge=0)
    temperature: float = Field(4.0, gt=0, description="kd: softening temperature")
    p: float = Field(2.0, gt=0, description="attention: power of the activation map")


class FitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="per process")
    optimizer: str = Field("sgd", pattern="^(sgd|adamw)$")
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: str = Field("cosine", pattern="^(cosine|constant)$")
    warmup_epochs: int = Field(0, ge=0)
    losses: tuple[LossConfig, ...] = (LossConfig(name="ce"), LossConfig(name="kd"))
    layers: dict[str, str] | None = Field(None, description="student layer -> teacher layer")
    accumulate: int = Field(1, ge=1, description="batches per optimizer step")
    clip_grad_norm: float | None = Field(
        5.0, gt=0, description="clip the gradient norm (BN-free merged nets diverge without it)"
    )
    patience: int | None = Field(
        None, ge=1, description="early stop after this many epochs without gain"
    )
    amp: bool = Field(True, description="mixed precision where a GPU is used")
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    bn_l1: float = Field(0.0, ge=0, description="L1 on BatchNorm scales (network slimming)")
    memory_gb: float | None = Field(
        None,
        gt=0,
        description="memory a training step may hold for activations; a batch that needs "
        "more is run in micro-batches (gradients accumulated). Default: half the memory "
        "free when training starts",
    )
    seed: int = 0
    augment_shift: int = Field(2, ge=0, description="random translation in pixels")
