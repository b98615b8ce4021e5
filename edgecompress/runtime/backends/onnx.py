"""ONNX Runtime: the host, a phone's CPU, any board with an ``onnxruntime`` wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecompress.runtime.backends import register_backend
from edgecompress.runtime.onnxrt import open_session, random_inputs


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, options: dict[str, Any]) -> None:
        import onnxruntime as ort

        self.threads = int(options.get("threads") or 1)
        providers = options.get("providers")
        self.session = open_session(path, self.threads, providers)
        self.feeds = random_inputs(self.session, int(options.get("batch", 1)), 0, path)
        self.version = ort.__version__

    def run(self) -> object:
        return self.session.run(None, self.feeds)

    def info(self) -> dict[str, Any]:
        return {
            "runtime": self.name,
            "runtime_version": self.version,
            "threads": self.threads,
            "providers": self.session.get_providers(),
            "input_shapes": {k: list(v.shape) for k, v in self.feeds.items()},
            "batch": next(iter(self.feeds.values())).shape[0] if self.feeds else 1,
        }

    def close(self) -> None:
        del self.session


@register_backend("onnxruntime")
def load(path: Path, options: dict[str, Any]) -> OnnxBackend:
    return OnnxBackend(path, options)
