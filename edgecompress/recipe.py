"""A recipe: the target, the one preprocessing spec, the data options and an ordered
list of stages, validated before anything runs. YAML sets it, CLI flags override it,
and the resolved recipe is saved next to the artifacts.

    target: rk3588
    preprocess: {input_size: [32, 32], resize: stretch,
                 mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
    data: {calibration_images: 100}
    stages:
      - evaluate
      - name: export_onnx
        max_abs_diff: 1.0e-4
      - export_rknn
      - bench
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgecompress.calibration.bundle import DataConfig
from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.distill.config import FitConfig
from edgecompress.errors import ConfigError
from edgecompress.exporters.registry import EXPORTERS
from edgecompress.stages import STAGES, StageConfig
from edgecompress.stages.configs import ExportConfig
from edgecompress.targets import TargetProfile, get_target
from edgecompress.validation import check_keys, did_you_mean, parse

TOP_KEYS = ("target", "preprocess", "data", "stages")


@dataclass(frozen=True)
class StageEntry:
    name: str
    config: StageConfig


@dataclass(frozen=True)
class Recipe:
    target: str
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    data: DataConfig = field(default_factory=DataConfig)
    stages: tuple[StageEntry, ...] = ()

    @property
    def profile(self) -> TargetProfile:
        return get_target(self.target)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "preprocess": self.preprocess.model_dump(mode="json"),
            "data": self.data.model_dump(mode="json"),
            "stages": [{"name": s.name, **s.config.model_dump(mode="json")} for s in self.stages],
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: Any, source: str = "recipe") -> Recipe:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with keys {', '.join(TOP_KEYS)}")
        check_keys(raw, TOP_KEYS, source)
        if "target" not in raw:
            raise ConfigError(
                f"{source}: no 'target'; one of the names `edgecompress targets` lists"
            )
        target = get_target(str(raw["target"])).name
        preprocess = parse(PreprocessSpec, raw.get("preprocess") or {}, f"{source}: preprocess")
        data = parse(DataConfig, raw.get("data") or {}, f"{source}: data")
        stages_raw = raw.get("stages")
        if stages_raw is None:
            return default_recipe(target, preprocess, data)
        if not isinstance(stages_raw, list) or not stages_raw:
            raise ConfigError(
                f"{source}: 'stages' must be a non-empty list of stage names or mappings"
            )
        stages = tuple(_parse_stage(s, f"{source}: stages[{i}]") for i, s in enumerate(stages_raw))
        check_order(stages, source, get_target(target).exporters)
        return cls(target, preprocess, data, stages)

    def with_keep(self, keep: float) -> Recipe:
        """The same recipe with every prune stage keeping ``keep`` of the MACs."""
        stages = tuple(
            StageEntry(s.name, s.config.model_copy(update={"keep": keep, "metric": "macs"}))
            if s.name == "prune"
            else s
            for s in self.stages
        )
        return Recipe(self.target, self.preprocess, self.data, stages)

    def with_seed(self, seed: int) -> Recipe:
        """The same recipe with every training step seeded by ``seed`` (each stage's
        recovery/training config and the QAT ladder). The data split and the calibration
        pick stay on ``data.seed``: the test images do not move with it."""
        return Recipe(
            self.target,
            self.preprocess,
            self.data,
            tuple(StageEntry(s.name, _seeded(s.config, seed)) for s in self.stages),
        )

    def with_stage_options(self, name: str, **options: Any) -> Recipe:
        """The same recipe with ``options`` set on every stage called ``name``."""
        stages = tuple(
            StageEntry(s.name, s.config.model_copy(update=options)) if s.name == name else s
            for s in self.stages
        )
        return Recipe(self.target, self.preprocess, self.data, stages)


def _seeded(config: StageConfig, seed: int) -> StageConfig:
    """``config`` with ``seed`` in its own ``seed`` field and in every training config."""
    update: dict[str, Any] = {
        name: value.model_copy(update={"seed": seed})
        for name, value in config
        if isinstance(value, FitConfig)
    }
    if "seed" in type(config).model_fields:
        update["seed"] = seed
    return config.model_copy(update=update)


def check_order(
    stages: tuple[StageEntry, ...], source: str = "recipe", exporters: tuple[str, ...] = ()
) -> None:
    """Fail before anything runs when a stage needs an artifact no earlier stage makes
    (``exporters``: the target's, which an ``export`` stage runs by default), names an
    exporter nobody registered, or rewrites float layers after the model was quantized."""
    from edgecompress.stages.base import maker_of

    made: set[str] = set()
    quantized_at: int | None = None
    for i, entry in enumerate(stages):
        cls = STAGES.get(entry.name)
        where = f"{source}: stages[{i}] ({entry.name})"
        steps = [(where, cls.needs, cls.makes)]
        if isinstance(entry.config, ExportConfig):
            steps = [
                (f"{where}: exporter {spec.name}", spec.needs, (spec.kind,))
                for spec in map(EXPORTERS.get, entry.config.exporters or exporters)
            ]
        for what, needs, makes in steps:
            for need in needs:
                if need not in made:
                    raise ConfigError(
                        f"{what} needs an {need.value} artifact, which no earlier stage "
                        f"makes; add {maker_of(need)} before it"
                    )
            made.update(makes)
        if quantized_at is not None and not cls.takes_quantized:
            raise ConfigError(
                f"{where} rewrites float layers and cannot run on the fake-quantized model "
                f"that stages[{quantized_at}] (quantize) makes; move it before quantize"
            )
        if cls.quantizes and quantized_at is None:
            quantized_at = i


def load_recipe(path: Path) -> Recipe:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such recipe file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return Recipe.from_dict(raw, str(path))


def default_recipe(
    target: str, preprocess: PreprocessSpec | None = None, data: DataConfig | None = None
) -> Recipe:
    """The whole pipeline, with the target profile's defaults:
    evaluate -> prune -> distill -> merge -> quantize (QAT ladder down to the lowest
    precision the target executes) -> the target's exports of that model -> bench.
    Each export proves its artifact against PyTorch (or ONNX Runtime) on test images."""
    profile = get_target(target)
    d = profile.defaults
    options: dict[str, dict[str, Any]] = {
        "prune": {"keep": d.keep, "metric": "macs", "align": True},
        "distill": {"train": {"epochs": d.distill_epochs, "lr": 0.01}},
    }
    names = ["evaluate", "prune", "distill", "merge"]
    if any(p.value.startswith("int") for p in profile.precisions):
        names.append("quantize")
    entries = [(n, options.get(n, {})) for n in names]
    for name in profile.exporters:  # each under its own stage, or `export` naming it
        stage = EXPORTERS.get(name).stage
        entries.append((stage, {"exporters": [name]} if stage == "export" else {}))
    entries.append(("bench", {}))
    stages = tuple(StageEntry(n, STAGES.get(n).Config.model_validate(o)) for n, o in entries)
    check_order(stages, f"target {profile.name} defaults", profile.exporters)
    return Recipe(profile.name, preprocess or PreprocessSpec(), data or DataConfig(), stages)


def _parse_stage(raw: Any, where: str) -> StageEntry:
    if isinstance(raw, str):
        name, options = raw, {}
    elif isinstance(raw, dict) and "name" in raw:
        options = {k: v for k, v in raw.items() if k != "name"}
        name = str(raw["name"])
    else:
        raise ConfigError(f"{where}: expected a stage name or a mapping with 'name', got {raw!r}")
    if name not in STAGES:
        hint = did_you_mean(name, STAGES.names())
        raise ConfigError(
            f"{where}: unknown stage {name!r}{hint}; valid stages: {', '.join(STAGES.names())}"
        )
    return StageEntry(name, parse(STAGES.get(name).Config, options, f"{where} ({name})"))
