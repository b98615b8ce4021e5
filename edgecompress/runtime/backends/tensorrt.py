"""TensorRT engines (Jetson, any NVIDIA GPU), TensorRT 10 API.

Device memory and the stream come from the CUDA runtime library through ctypes, so the
agent needs nothing beyond the ``tensorrt`` wheel JetPack ships. A timed call is
``execute_async_v3`` + stream synchronise on inputs already on the device: GPU time
without host copies (trtexec's ``--noDataTransfers``), which the info says.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import DeviceError, MissingToolchainError, ModelLoadError
from edgecompress.runtime.backends import random_input, register_backend

_H2D = 1  # cudaMemcpyHostToDevice


def _cudart() -> Any:
    names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13"]
    names += ["libcudart.so.12", "/usr/local/cuda/lib64/libcudart.so"]
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        # Without argtypes ctypes passes Python ints as 32-bit C ints: pointers would be
        # truncated. Every call used here gets its real signature.
        ptr, size, out = ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)
        sizes = ctypes.POINTER(ctypes.c_size_t)
        for fn, args in (
            ("cudaMalloc", [out, size]),
            ("cudaFree", [ptr]),
            ("cudaMemcpy", [ptr, ptr, size, ctypes.c_int]),
            ("cudaStreamCreate", [out]),
            ("cudaStreamSynchronize", [ptr]),
            ("cudaStreamDestroy", [ptr]),
            ("cudaMemGetInfo", [sizes, sizes]),
        ):
            getattr(lib, fn).argtypes = args
            getattr(lib, fn).restype = ctypes.c_int
        return lib
    raise MissingToolchainError(
        "the CUDA runtime library (libcudart.so) is not found; on a Jetson it comes with "
        "JetPack (/usr/local/cuda/lib64): add it to LD_LIBRARY_PATH"
    )


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, path: Path, options: dict[str, Any]) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise MissingToolchainError(
                "TensorRT's Python package is not importable on this device; on a Jetson "
                "install JetPack's python3-libnvinfer, elsewhere `pip install tensorrt`"
            ) from exc
        self.trt_version = trt.__version__
        self.cuda = _cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.cuda.cudaFree(None)  # creates the CUDA context, so the baseline below is fair
        self.free0 = self._mem_free()  # before the engine: its weights and scratch count
        engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise ModelLoadError(
                f"{path}: TensorRT {trt.__version__} cannot deserialize it; an engine only "
                "runs on the TensorRT version and GPU it was built for: rebuild it there"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        shapes = {s["name"]: s["shape"] for s in options.get("inputs") or [] if "name" in s}
        self.buffers: list[Any] = []
        self.shapes: dict[str, list[int]] = {}
        self.batch = 0
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = list(engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):  # dynamic: the given shape, else profile opt
                    shape = shapes.get(name) or list(engine.get_tensor_profile_shape(name, 0)[1])
                    self.context.set_input_shape(name, shape)
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = list(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelLoadError(
                    f"{path}: output {name!r} has a data-dependent shape {shape}; the "
                    "benchmark allocates fixed buffers: end the engine before that layer"
                )
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            ptr = self._malloc(int(np.prod(shape)) * dtype.itemsize)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.batch = self.batch or (shape[0] if shape else 1)
                host = np.ascontiguousarray(random_input(shape, dtype.name, i))
                self._check(self.cuda.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, _H2D), "copy")
            self.context.set_tensor_address(name, int(ptr.value or 0))
            self.shapes[name] = shape
        self.stream = ctypes.c_void_p()
        self._check(self.cuda.cudaStreamCreate(ctypes.byref(self.stream)), "stream")

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise DeviceError(f"CUDA {what} failed with cudaError {code}")

    def _malloc(self, nbytes: int) -> ctypes.c_void_p:
        ptr = ctypes.c_void_p()
        size = ctypes.c_size_t(max(nbytes, 1))
        self._check(self.cuda.cudaMalloc(ctypes.byref(ptr), size), "malloc")
        self.buffers.append(ptr)
        return ptr

    def _mem_free(self) -> int:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.cuda.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
        return int(free.value)

    def run(self) -> object:
        if not self.context.execute_async_v3(int(self.stream.value or 0)):
            raise DeviceError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        self._check(self.cuda.cudaStreamSynchronize(self.stream), "synchronize")
        return None

    def info(self) -> dict[str, Any]:
        return {
            "runtime": self.name,
            "runtime_version": self.trt_version,
            "input_shapes": self.shapes,
            "batch": self.batch or 1,
            "device_memory_bytes": max(0, self.free0 - self._mem_free()),
            "timing": "execute_async_v3 + stream sync, inputs resident on the GPU",
        }

    def close(self) -> None:
        for ptr in self.buffers:
            self.cuda.cudaFree(ptr)
        self.buffers.clear()
        if self.stream.value:
            self.cuda.cudaStreamDestroy(self.stream)


@register_backend("tensorrt")
def load(path: Path, options: dict[str, Any]) -> TensorRTBackend:
    return TensorRTBackend(path, options)
