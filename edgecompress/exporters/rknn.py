"""ONNX -> RKNN through rknn-toolkit2 in its own interpreter, then the RKNN simulator on
the evaluation inputs. The main environment only writes inputs and reads outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.calibration.preprocess import Layout, PreprocessSpec
from edgecompress.errors import EdgeCompressError, MissingToolchainError, UnsupportedOpError
from edgecompress.exporters.rknn_env import FIX, find_rknn_python

WORKER = Path(__file__).with_name("rknn_worker.py")


@dataclass(frozen=True)
class RknnResult:
    path: Path
    size_bytes: int
    outputs: list[np.ndarray]  # simulator outputs per model output, stacked over inputs
    toolkit_version: str
    convert_s: float
    simulate_s: float
    log_path: Path


def convert_rknn(
    onnx_path: Path,
    output: Path,
    spec: PreprocessSpec,
    platform: str,
    calib_images: Sequence[np.ndarray],
    eval_inputs: np.ndarray,
    *,
    quantize: bool = True,
    algorithm: str = "normal",
    method: str = "channel",
    rknn_python: str | Path | None = None,
    work_dir: Path | None = None,
    timeout_s: float = 1800,
) -> RknnResult:
    """Convert ``onnx_path`` to ``output`` (.rknn) and run it in the simulator.

    ``calib_images`` and ``eval_inputs`` are uint8 H x W x 3 in the model's channel order
    (``spec.prepare``): the NPU applies mean/std itself, so the toolkit is given the
    spec's values in pixel units and sees exactly what PyTorch saw after normalising.
    """
    python = find_rknn_python(rknn_python)
    onnx_path, output = Path(onnx_path).resolve(), Path(output).resolve()
    if not calib_images and quantize:
        raise EdgeCompressError("RKNN int8 conversion needs calibration images; none were given")
    parent = Path(work_dir) if work_dir else None
    if parent:
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rknn-", dir=parent))
    try:
        _write_job(
            work,
            onnx_path,
            output,
            spec,
            platform,
            calib_images,
            eval_inputs,
            quantize,
            algorithm,
            method,
        )
        log_path = output.with_suffix(".rknn.log")
        start = time.perf_counter()
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(
                    [str(python), "-I", str(WORKER), str(work / "job.json")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                    cwd=work,
                )
                # -I: the worker sits beside exporters/onnx.py, which would shadow `import onnx`.
            except subprocess.TimeoutExpired:
                raise EdgeCompressError(
                    f"RKNN conversion of {onnx_path} took over {timeout_s:.0f} s; see {log_path}"
                ) from None
        result = _read_result(work / "result.json", proc.returncode, onnx_path, log_path, python)
        outputs = _load_outputs(work / "outputs.npz") if len(eval_inputs) else []
        return RknnResult(
            output,
            int(result["size_bytes"]),
            outputs,
            str(result.get("toolkit_version")),
            float(result.get("convert_s", time.perf_counter() - start)),
            float(result.get("simulate_s", 0.0)),
            log_path,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_job(
    work: Path,
    onnx_path: Path,
    output: Path,
    spec: PreprocessSpec,
    platform: str,
    calib: Sequence[np.ndarray],
    eval_inputs: np.ndarray,
    quantize: bool,
    algorithm: str,
    method: str,
) -> dict:
    calib_dir = work / "calib"
    calib_dir.mkdir()
    lines = []
    for i, img in enumerate(calib):
        path = calib_dir / f"{i:05d}.npy"
        # The toolkit reads .npy calibration data in the ONNX input's own layout.
        data = img[None].transpose(0, 3, 1, 2) if spec.layout is Layout.nchw else img[None]
        np.save(path, np.ascontiguousarray(data, dtype=np.uint8))
        lines.append(str(path))
    (work / "dataset.txt").write_text("\n".join(lines) + "\n")
    np.save(work / "eval.npy", np.ascontiguousarray(eval_inputs, dtype=np.uint8))
    job = {
        "onnx": str(onnx_path),
        "output": str(output),
        "platform": platform,
        "mean_values": spec.mean_255,
        "std_values": spec.std_255,
        "quantize": quantize,
        "quantized_algorithm": algorithm,
        "quantized_method": method,
        "dataset_txt": str(work / "dataset.txt"),
        "eval_inputs": str(work / "eval.npy") if len(eval_inputs) else None,
        "eval_outputs": str(work / "outputs.npz"),
        "result": str(work / "result.json"),
    }
    (work / "job.json").write_text(json.dumps(job, indent=2))
    return job


def _read_result(path: Path, code: int, onnx_path: Path, log_path: Path, python: Path) -> dict:
    if not path.exists():
        raise EdgeCompressError(
            f"the RKNN worker ({python}) exited with {code} without a result; see {log_path}"
        )
    result = json.loads(path.read_text())
    if result.get("ok"):
        return result
    if result.get("import_failed"):
        raise MissingToolchainError(f"{result['error']}. {FIX}")
    message = f"RKNN conversion of {onnx_path} failed: {result.get('error')}"
    unsupported = _unsupported_op(log_path)
    if unsupported:
        raise UnsupportedOpError(
            f"{message}. rknn-toolkit2 reports: {unsupported}. "
            "Replace that operator in the model or run it on the CPU"
        )
    raise EdgeCompressError(f"{message}. Full log: {log_path}")


def _unsupported_op(log_path: Path) -> str | None:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        low = line.lower()
        if "not support" in low or "unsupported" in low:
            return line.strip()[:300]
    return None


def _load_outputs(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"output_{i}"] for i in range(len(data.files))]


def cosine_per_output(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> list[float]:
    from edgecompress.evaluate import cosine

    return [cosine(x, y) for x, y in zip(a, b, strict=True)]


def _cleanup_stale(output: Path) -> None:  # pragma: no cover - defensive
    for stale in output.parent.glob(f".{output.name}.*.tmp"):
        os.remove(stale)
