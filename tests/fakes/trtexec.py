"""A stand-in for NVIDIA's trtexec on a board without a GPU here: it reads the ONNX file
with the real `onnx` package, refuses what TensorRT refuses for explicit quantization
(Q/DQ with a non-zero zero point, uint8 activations), writes an engine file and prints
trtexec's own log format (TensorRT 10.3 on a Jetson AGX Orin, as in its `=== Performance
summary ===`). FAKE_TRTEXEC_FAIL=OP: fail parsing as trtexec does on an op it lacks."""

from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np
import onnx
from onnx import numpy_helper

STAMP = time.strftime("[%m/%d/%Y-%H:%M:%S]")


def log(kind: str, text: str) -> None:
    print(f"{STAMP} [{kind}] {text}")


def fail(argv: list[str], lines: list[str]) -> None:
    for line in lines:
        log("E", line)
    print(f"&&&& FAILED TensorRT.trtexec [TensorRT v100300] # trtexec {' '.join(argv)}")
    sys.exit(1)


def main(argv: list[str]) -> None:
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    flags = {a[2:] for a in argv if a.startswith("--") and "=" not in a}
    print(f"&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec {' '.join(argv)}")
    log("I", "=== Device Information ===")
    log("I", "Selected Device: Orin")
    log("I", "Compute Capability: 8.7")
    log("I", "TensorRT version: 10.3.0")
    model = onnx.load(opts["onnx"])
    log("I", "Start parsing network model.")
    bad = os.environ.get("FAKE_TRTEXEC_FAIL")
    for i, node in enumerate(model.graph.node):
        if node.op_type == bad:
            fail(
                argv,
                [
                    f"[TRT] ModelImporter.cpp:951: While parsing node number {i} "
                    f'[{node.op_type} -> "{node.output[0]}"]:',
                    f"[TRT] ModelImporter.cpp:954: ERROR: No importer registered for op: "
                    f"{node.op_type}",
                    "Failed to parse onnx file",
                    "Parsing model failed",
                    "Engine set up failed",
                ],
            )
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None and (zp.dtype != np.int8 or np.any(zp != 0)):
                fail(
                    argv,
                    [
                        f"[TRT] {node.name}: TensorRT only supports symmetric INT8 "
                        "quantization (zero point 0, int8)",
                        "Engine set up failed",
                    ],
                )
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node) and "int8" not in flags:
        log("W", "[TRT] Q/DQ layers found: explicit quantization needs --int8")
    with open(opts["onnx"], "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(opts["saveEngine"], "wb") as out:
        out.write(b"ftrt" + digest.encode() + b"".join(sorted(x.encode() for x in flags)))
    log("I", "Engine built in 2.7151 sec.")
    log("I", "=== Performance summary ===")
    log("I", "Throughput: 2893.37 qps")
    log(
        "I",
        "Latency: min = 0.327148 ms, max = 0.532227 ms, mean = 0.341064 ms, median = "
        "0.339844 ms, percentile(90%) = 0.348633 ms, percentile(95%) = 0.352539 ms, "
        "percentile(99%) = 0.375977 ms",
    )
    log(
        "I",
        "GPU Compute Time: min = 0.303101 ms, max = 0.500732 ms, mean = 0.313721 ms, median "
        "= 0.312256 ms, percentile(90%) = 0.320312 ms, percentile(95%) = 0.323242 ms, "
        "percentile(99%) = 0.345215 ms",
    )
    log("I", "Total Host Walltime: 3.00065 s")
    print(f"&&&& PASSED TensorRT.trtexec [TensorRT v100300] # trtexec {' '.join(argv)}")


if __name__ == "__main__":
    main(sys.argv[1:])
