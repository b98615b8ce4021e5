"""Runs INSIDE the rknn-toolkit2 environment: ``python rknn_worker.py job.json``.

rknn-toolkit2 pins old torch/numpy/onnx, so it cannot be imported next to edgecompress;
this script is the whole of what runs there. It imports only the standard library,
numpy and rknn — never edgecompress.

It converts (config -> load_onnx -> build -> export_rknn, the .rknn written to a
temporary name and renamed when complete), then runs the same RKNN object in the
simulator (init_runtime without a target: the toolkit can only simulate a model it
built itself) on the evaluation inputs and saves the outputs. Result JSON: ``ok``,
``error`` (which step failed), version, timings.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


class StepFailed(Exception):
    pass


def _check(step: str, call, *args, **kwargs) -> None:
    """Run one toolkit call; it fails by returning non-zero or by raising (often a
    ValueError whose message is a whole traceback): either way, name the step."""
    try:
        code = call(*args, **kwargs)
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise StepFailed(
            f"rknn-toolkit2 {step} failed: {lines[-1] if lines else type(exc).__name__}"
        ) from exc
    if code != 0:
        raise StepFailed(f"rknn-toolkit2 {step} failed (return code {code}); see the log")


def _convert(rknn, job: dict, result: dict) -> None:
    _check(
        "config",
        rknn.config,
        mean_values=[job["mean_values"]],
        std_values=[job["std_values"]],
        target_platform=job["platform"],
        quantized_algorithm=job["quantized_algorithm"],
        quantized_method=job["quantized_method"],
        optimization_level=job.get("optimization_level", 3),
    )
    _check("load_onnx", rknn.load_onnx, model=job["onnx"])
    t0 = time.perf_counter()
    if job["quantize"]:
        _check(
            "build (int8 quantization)",
            rknn.build,
            do_quantization=True,
            dataset=job["dataset_txt"],
        )
    else:
        _check("build (fp16)", rknn.build, do_quantization=False)
    out = job["output"]
    tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{os.getpid()}.tmp")
    try:
        _check("export_rknn", rknn.export_rknn, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    result["convert_s"] = time.perf_counter() - t0
    result["size_bytes"] = os.path.getsize(out)


def _simulate(rknn, job: dict, result: dict) -> None:
    import numpy as np

    _check("init_runtime (simulator)", rknn.init_runtime)
    inputs = np.load(job["eval_inputs"])
    t0 = time.perf_counter()
    per_output: list[list] = []
    for i in range(len(inputs)):
        outs = rknn.inference(inputs=[inputs[i : i + 1]], data_format="nhwc")
        if outs is None:
            raise StepFailed(f"rknn-toolkit2 inference failed on evaluation input {i}; see the log")
        if not per_output:
            per_output = [[] for _ in outs]
        for j, o in enumerate(outs):
            per_output[j].append(np.asarray(o, dtype=np.float32))
    result["simulate_s"] = time.perf_counter() - t0
    result["evaluated"] = len(inputs)
    arrays = {f"output_{j}": np.concatenate(o) for j, o in enumerate(per_output)}
    np.savez(job["eval_outputs"], **arrays)  # type: ignore[arg-type]


def main(job_path: str) -> int:
    with open(job_path) as f:
        job = json.load(f)
    result: dict = {"ok": False, "output": job["output"]}
    try:
        from rknn.api import RKNN
    except Exception as exc:
        result["error"] = f"cannot import rknn-toolkit2 in {sys.executable}: {exc}"
        result["import_failed"] = True
        _write(job["result"], result)
        return 1
    try:
        from importlib.metadata import version

        result["toolkit_version"] = version("rknn-toolkit2")
    except Exception:
        result["toolkit_version"] = "unknown"
    rknn = RKNN(verbose=False)
    try:
        _convert(rknn, job, result)
        if job.get("eval_inputs"):
            _simulate(rknn, job, result)
        result["ok"] = True
    except StepFailed as exc:
        result["error"] = str(exc)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    finally:
        rknn.release()
    _write(job["result"], result)
    return 0 if result["ok"] else 1


def _write(path: str, result: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
