"""A budget file: the limits a model's release must keep, per target, for the CI gate
(``edgecompress check report.json --budget budget.yaml``). Validated like a recipe
(unknown keys are errors that say which key was meant) and torch-free, so a CI job can
check a report without the compression stack.

    model: digits-resnet            # a label for the table and the JUnit suite
    default:                        # every target
      max_accuracy_drop: 1.0        # top-1 points below the reference (the model as given)
      min_parity_cosine: 0.999      # every exported artifact vs its reference
      max_size_mb: 5
    targets:
      rk3588:                       # overrides ``default`` key by key
        max_accuracy_drop: 2.0
        max_latency_ms: 8           # p50 of every measured latency entry
        max_latency_increase_pct: 10  # p50 vs the same entry of --baseline
        max_energy_mj: 3            # energy per inference, every figure
        measured_on: device         # latency/energy from --device boards only
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from edgecompress.errors import ConfigError
from edgecompress.targets import TARGETS
from edgecompress.validation import check_keys, did_you_mean, parse

TOP_KEYS = ("model", "default", "targets")


class MeasuredOn(StrEnum):
    """Which latency entries the latency and energy budgets read."""

    anywhere = "anywhere"  # host, boards and estimate-only entries
    host = "host"  # this machine (``NAME@host``)
    device = "device"  # the boards given with ``build --device URL``


class Limits(BaseModel):
    """The limits for one target; a field left out is not checked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_accuracy_drop: float | None = Field(
        None, ge=0, description="top-1 points below the reference, every other runtime"
    )
    max_latency_ms: float | None = Field(None, gt=0, description="p50 of every measured entry")
    max_latency_increase_pct: float | None = Field(
        None, gt=-100, description="p50 change vs the same entry of --baseline, in %"
    )
    max_size_mb: float | None = Field(None, gt=0, description="every artifact, 1 MB = 1e6 bytes")
    max_energy_mj: float | None = Field(None, gt=0, description="energy per inference, mJ")
    min_parity_cosine: float | None = Field(
        None, ge=-1, le=1, description="every cosine the parity section holds"
    )
    measured_on: MeasuredOn = MeasuredOn.anywhere

    def checks(self) -> dict[str, float]:
        """The limits that are set, by field name (``measured_on`` is not a limit)."""
        return {k: v for k, v in self.model_dump().items() if k != "measured_on" and v is not None}

    def merged(self, override: Limits) -> Limits:
        """These limits with every field ``override`` sets replaced by its value."""
        return self.model_copy(update=override.model_dump(exclude_unset=True))


LIMIT_KEYS: tuple[str, ...] = tuple(Limits.model_fields)


class BudgetFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str | None = None
    default: Limits = Limits()
    targets: dict[str, Limits] = {}
    source: str = "budget"

    def for_target(self, target: str, extra: Limits | None = None) -> Limits:
        """``default`` overridden by the target's own section, then by ``extra`` (the
        command line's flags); an error when no limit is left to check."""
        limits = (
            self.default.merged(self.targets[target]) if target in self.targets else self.default
        )
        if extra is not None:
            limits = limits.merged(extra)
        if not limits.checks():
            listed = ", ".join(self.targets) or "none"
            raise ConfigError(
                f"{self.source}: no budget applies to target {target!r} (no 'default' limits; "
                f"target sections: {listed}); add a 'targets: {{{target}: ...}}' section"
            )
        return limits


def parse_budget(raw: Any, source: str = "budget") -> BudgetFile:
    """Validate a budget file's content; every error names the file and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    check_keys(raw, TOP_KEYS, source)
    default = parse_limits(raw.get("default") or {}, f"{source}: default")
    targets_raw = raw.get("targets") or {}
    if not isinstance(targets_raw, dict):
        raise ConfigError(f"{source}: 'targets' must map target names to limits")
    targets = {}
    for name, section in targets_raw.items():
        if name not in TARGETS:
            raise ConfigError(
                f"{source}: targets: unknown target {name!r}{did_you_mean(str(name), TARGETS)}; "
                f"known targets: {', '.join(TARGETS)}"
            )
        targets[name] = parse_limits(section or {}, f"{source}: targets.{name}")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"{source}: 'model' must be a name, got {model!r}")
    if not default.checks() and not any(t.checks() for t in targets.values()):
        raise ConfigError(
            f"{source}: no limits; set at least one of {', '.join(LIMIT_KEYS[:-1])} under "
            "'default' or 'targets: {TARGET: ...}'"
        )
    return BudgetFile(model=model, default=default, targets=targets, source=source)


def load_budget(path: Path) -> BudgetFile:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such budget file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_budget(raw, str(path))


def parse_limits(raw: Any, where: str) -> Limits:
    """One section of limits (or the command line's flags as a mapping), validated."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of limits, got {raw!r}")
    return parse(Limits, raw, where)
