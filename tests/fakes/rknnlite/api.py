"""A stand-in for rknn-toolkit-lite2's ``rknnlite.api`` (there is no RK3588 NPU on this
machine). It keeps the real class's surface: the NPU_CORE_* masks with their real
values, ``load_rknn``/``init_runtime``/``inference``/``release`` returning what the real
ones return. An inference holds its core for FAKE_RKNN_MS milliseconds without the GIL,
as a real NPU call does, and appends its core mask to $FAKE_RKNN_LOG. Like librknnrt,
it logs from native code straight to file descriptor 1, without a newline.

Replaying a real model: with $FAKE_RKNN_OUTPUTS (an .npz: ``keys``, the SHA-256 of each
recorded input's bytes, and ``out0``, ``out1``, ... stacked per input, as a real run
gave them, NCHW float32) an inference returns the recorded outputs of its input, and
nothing (what the real call returns on failure) for an input it has no record of.
Faults, counted over the calls of the whole process: $FAKE_RKNN_FAIL_AFTER=n fails every
call after the n-th; $FAKE_RKNN_EXIT_AFTER=n kills the process there (a board gone);
$FAKE_RKNN_LAYOUT=nhwc returns channels-last outputs, =drop_last one output fewer."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import numpy as np

_calls = 0
_calls_lock = threading.Lock()
_replay: dict[str, dict[str, list[np.ndarray]]] = {}


def _recorded(path: str) -> dict[str, list[np.ndarray]]:
    with _calls_lock:
        if path not in _replay:
            with np.load(path) as data:
                keys = [str(k) for k in data["keys"]]
                outs = [data[f"out{i}"] for i in range(len(data.files) - 1)]
            _replay[path] = {k: [o[j : j + 1] for o in outs] for j, k in enumerate(keys)}
        return _replay[path]


def _limit(name: str) -> int:
    return int(os.environ.get(name) or 0) or 10**9


def _count() -> int:
    global _calls
    with _calls_lock:
        _calls += 1
        return _calls


class RKNNLite:
    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xFFFF

    def __init__(self, verbose: bool = False, verbose_file: str | None = None) -> None:
        self.mask: int | None = None
        self.path: str | None = None
        self.lock = threading.Lock()

    def load_rknn(self, path: str) -> int:
        if not os.path.isfile(path):
            print(f"E load_rknn: {path} does not exist!")
            return -1
        self.path = path
        return 0

    def init_runtime(self, core_mask: int = 0) -> int:
        if self.path is None:
            return -1
        self.mask = core_mask
        return 0

    def inference(self, inputs: list[np.ndarray]) -> list[np.ndarray] | None:
        if self.mask is None or not inputs or inputs[0].dtype != np.uint8:
            return None
        n = _count()
        if n > _limit("FAKE_RKNN_EXIT_AFTER"):
            os._exit(137)  # no event, no message: as when the board goes away
        with self.lock:  # one core runs one model at a time
            time.sleep(float(os.environ.get("FAKE_RKNN_MS", "3")) / 1000)
        os.write(1, b"I RKNN: [fake] inference done ")  # as C code does, under Python
        with open(os.environ["FAKE_RKNN_LOG"], "a") as log:
            log.write(f"{self.mask}\n")
        if n > _limit("FAKE_RKNN_FAIL_AFTER"):
            os.write(2, b"E RKNN: [fake] rknn_run failed\n")
            return None
        replay = os.environ.get("FAKE_RKNN_OUTPUTS")
        if not replay:
            return [np.zeros((inputs[0].shape[0], 10), np.float32)]
        key = hashlib.sha256(np.ascontiguousarray(inputs[0]).tobytes()).hexdigest()
        outs = _recorded(replay).get(key)
        if outs is None:
            os.write(2, f"E RKNN: [fake] no recorded output for input {key[:12]}\n".encode())
            return None
        layout = os.environ.get("FAKE_RKNN_LAYOUT", "")
        if layout == "nhwc":
            return [np.ascontiguousarray(o.transpose(0, 2, 3, 1)) for o in outs]
        if layout == "drop_last":
            return [o.copy() for o in outs[:-1]]
        return [o.copy() for o in outs]

    def release(self) -> None:
        self.mask = None
