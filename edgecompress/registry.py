"""Small explicit registries: a stage, exporter, criterion or sensor is registered by
name; a duplicate name is an error. Registering never imports a toolchain."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from edgecompress.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, with a clear error for an unknown name.

    >>> stages: Registry[type] = Registry("stage")
    >>> @stages.register("noop")
    ... class Noop: ...
    >>> stages.get("noop") is Noop
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def remove(self, name: str) -> None:
        """Forget ``name`` (a plug-in or test that registered it is done with it)."""
        self.get(name)
        del self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def load_late(impl: str | Any) -> Any:
    """An implementation named "module:attribute" (imported now), or the object itself."""
    if not isinstance(impl, str):
        return impl
    module, name = impl.split(":")
    return getattr(importlib.import_module(module), name)
