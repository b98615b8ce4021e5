"""rknn-toolkit-lite2 on a Rockchip board's NPU (``from rknnlite.api import RKNNLite``).

The RK3588 NPU has three cores. ``core_mask`` pins one runtime to cores ("0", "1", "2",
"0_1", "0_1_2", "auto"); ``parallel = k`` loads k runtimes, one per core, which the agent
drives from k threads: the multi-threaded pipeline that gives a 3-core NPU its throughput
(on random inputs, or on real frames with :meth:`RknnLiteBackend.contexts` and
:mod:`edgecompress.runtime.detect_stream`).
Inputs are what the NPU takes: uint8 N x H x W x 3 unless the job says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError, DeviceError, MissingToolchainError
from edgecompress.runtime.backends import random_input, register_backend

CORE_MASKS = {
    "auto": "NPU_CORE_AUTO",
    "0": "NPU_CORE_0",
    "1": "NPU_CORE_1",
    "2": "NPU_CORE_2",
    "0_1": "NPU_CORE_0_1",
    "0_1_2": "NPU_CORE_0_1_2",
    "all": "NPU_CORE_ALL",
}
_SINGLE = ("0", "1", "2")


class RknnLiteBackend:
    name = "rknnlite"

    def __init__(self, path: Path, options: dict[str, Any]) -> None:
        try:
            from rknnlite.api import RKNNLite
        except ImportError as exc:
            raise MissingToolchainError(
                "rknn-toolkit-lite2 is not installed on this device; install the "
                "rknn_toolkit_lite2 wheel for the board's Python (and librknnrt.so in /usr/lib)"
            ) from exc
        self._cls = RKNNLite
        self.parallel = int(options.get("parallel") or 1)
        mask = str(options.get("core_mask") or "auto")
        if mask not in CORE_MASKS:
            raise ConfigError(f"core_mask {mask!r}: choose one of {', '.join(CORE_MASKS)}")
        if not 1 <= self.parallel <= len(_SINGLE):
            raise ConfigError(f"parallel must be 1..{len(_SINGLE)} (one runtime per NPU core)")
        self.masks = [mask] if self.parallel == 1 else list(_SINGLE[: self.parallel])
        specs = options.get("inputs") or []
        if not specs:
            raise ConfigError(
                f"{path}: an .rknn file does not say its input shape to rknn-toolkit-lite2; "
                "give it (--input-shape 1x224x224x3, uint8 NHWC for image models)"
            )
        self.inputs = [
            random_input(s["shape"], s.get("dtype", "uint8"), i) for i, s in enumerate(specs)
        ]
        self.runtimes = [self._load(path, m) for m in self.masks]

    def _load(self, path: Path, mask: str) -> Any:
        rt = self._cls(verbose=False)
        if rt.load_rknn(str(path)) != 0:
            raise DeviceError(f"{path}: rknn-toolkit-lite2 cannot load it (load_rknn failed)")
        code = rt.init_runtime(core_mask=getattr(self._cls, CORE_MASKS[mask]))
        if code != 0:
            rt.release()
            raise DeviceError(
                f"{path}: init_runtime(core_mask={CORE_MASKS[mask]}) failed ({code}); the model "
                "may be built for another platform, or librknnrt.so is older than the toolkit"
            )
        return rt

    def _infer(self, rt: Any, inputs: list[Any] | None = None) -> Any:
        out = rt.inference(inputs=self.inputs if inputs is None else inputs)
        if out is None:
            raise DeviceError("rknn-toolkit-lite2 inference returned nothing (see its log)")
        return out

    def run(self) -> object:
        return self._infer(self.runtimes[0])

    def workers(self) -> list[Any]:
        """One callable per loaded runtime, for the agent's threaded pipeline."""
        return [lambda rt=rt: self._infer(rt) for rt in self.runtimes]

    def contexts(self) -> list[Any]:
        """One callable per loaded runtime taking the input list (real frames, for the
        detection stream) and returning the outputs; each called from one thread."""
        return [lambda inputs, rt=rt: self._infer(rt, inputs) for rt in self.runtimes]

    def info(self) -> dict[str, Any]:
        return {
            "runtime": self.name,
            "runtime_version": str(getattr(self._cls, "__version__", "unknown")),
            "core_masks": [CORE_MASKS[m] for m in self.masks],
            "parallel": self.parallel,
            "input_shapes": [list(x.shape) for x in self.inputs],
            "batch": int(self.inputs[0].shape[0]),
        }

    def close(self) -> None:
        for rt in self.runtimes:
            rt.release()


@register_backend("rknnlite")
def load(path: Path, options: dict[str, Any]) -> RknnLiteBackend:
    return RknnLiteBackend(path, options)
