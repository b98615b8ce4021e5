"""Checking user-written mappings (recipes, budget files) against pydantic models, the
same way everywhere: an unknown key at any depth names its path, the valid keys and the
closest one ("did you mean"); a bad value names its path, the problem and what was given.
Torch-free."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from edgecompress.errors import ConfigError


def did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(raw: dict[str, Any], valid: Iterable[str], where: str) -> None:
    valid = list(valid)
    for key in raw:
        if key not in valid:
            hint = did_you_mean(str(key), valid)
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")


def parse(model: type[BaseModel], raw: Any, where: str) -> Any:
    """``model`` validated from ``raw``; a ConfigError naming the key path otherwise."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    check_keys(raw, model.model_fields, where)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"{where}: {'; '.join(_problem(model, e) for e in exc.errors())}"
        ) from None


def _problem(model: type[BaseModel], error: Any) -> str:
    path = [str(p) for p in error["loc"]]
    if error["type"] == "extra_forbidden":
        valid = _fields_at(model, error["loc"][:-1])
        key = path[-1]
        return (
            f"unknown key {'.'.join(path)!r}{did_you_mean(key, valid)}; valid keys there: "
            f"{', '.join(valid)}"
        )
    return f"{'.'.join(path)}: {error['msg']} (got {error.get('input')!r})"


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the nested model a location points into (list indices skipped)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
    return list(getattr(model, "model_fields", {}))


def _model_of(annotation: Any) -> Any:
    """The BaseModel inside ``X``, ``X | None`` or ``tuple[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
