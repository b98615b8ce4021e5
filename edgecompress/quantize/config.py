"""The bit-width ladder's rungs, torch-free (recipes are parsed without torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Rung(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    w_bits: int = Field(8, ge=2, le=8)
    a_bits: int = Field(8, ge=4, le=8)
    epochs: int = Field(2, ge=0)
