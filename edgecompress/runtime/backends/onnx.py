"""ONNX Runtime: the host, a phone's CPU, any board with an ``onnxruntime`` wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecompress.runtime.backends import register_backend
from edgecompress.runtime.onnxrt import items_per_call, open_session, random_inputs


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, options: dict[str, Any]) -> None:
        import onnxruntime as ort

        self.threads = int(options.get("threads") or 1)
        providers = options.get("providers")
        self.level = str(options.get("level") or "all")
        self.session = open_session(path, self.threads, providers, level=self.level)
        # Named shapes fix dynamic dimensions; ``inputs`` are for runtimes that cannot
        # read their own (an .rknn file), so they are not used here.
        shapes = {s.get("name") or "": s["shape"] for s in options.get("input_shapes") or []}
        self.batch = int(options.get("batch", 1))
        self.feeds = random_inputs(self.session, self.batch, 0, path, shapes)
        self.version = ort.__version__

    def run(self) -> object:
        return self.session.run(None, self.feeds)

    def info(self) -> dict[str, Any]:
        return {
            "runtime": self.name,
            "runtime_version": self.version,
            "threads": self.threads,
            "graph_optimization": self.level,
            "providers": self.session.get_providers(),
            "input_shapes": {k: list(v.shape) for k, v in self.feeds.items()},
            "batch": items_per_call(self.feeds, self.batch),
        }

    def close(self) -> None:
        del self.session


@register_backend("onnxruntime")
def load(path: Path, options: dict[str, Any]) -> OnnxBackend:
    return OnnxBackend(path, options)
