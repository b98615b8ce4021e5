"""A stand-in for rknn-toolkit-lite2's ``rknnlite.api`` (there is no RK3588 NPU on this
machine). It keeps the real class's surface: the NPU_CORE_* masks with their real
values, ``load_rknn``/``init_runtime``/``inference``/``release`` returning what the real
ones return. An inference holds its core for FAKE_RKNN_MS milliseconds without the GIL,
as a real NPU call does, and appends its core mask to $FAKE_RKNN_LOG. Like librknnrt,
it logs from native code straight to file descriptor 1, without a newline."""

from __future__ import annotations

import os
import threading
import time

import numpy as np


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
        with self.lock:  # one core runs one model at a time
            time.sleep(float(os.environ.get("FAKE_RKNN_MS", "3")) / 1000)
        os.write(1, b"I RKNN: [fake] inference done ")  # as C code does, under Python
        with open(os.environ["FAKE_RKNN_LOG"], "a") as log:
            log.write(f"{self.mask}\n")
        return [np.zeros((inputs[0].shape[0], 10), np.float32)]

    def release(self) -> None:
        self.mask = None
