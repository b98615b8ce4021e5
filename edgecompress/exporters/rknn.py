"""ONNX -> RKNN through rknn-toolkit2 in its own interpreter, then the RKNN simulator on
the evaluation inputs. The main environment only writes inputs and reads outputs.

>>> res = convert_rknn(Path("m.onnx"), Path("m.rknn"), spec, "rk3588",
...                    calib_images, eval_inputs)  # doctest: +SKIP
>>> cosine_per_output(onnxruntime_outputs, res.outputs)  # doctest: +SKIP
[0.9991]
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.errors import (
    ConfigError,
    DataError,
    EdgeCompressError,
    MissingToolchainError,
    ModelLoadError,
    UnsupportedOpError,
)
from edgecompress.exporters.rknn_crash import (
    BUG_REPORTS,
    read_status,
    save_reproducer,
    signal_name,
)
from edgecompress.exporters.rknn_env import FIX, find_rknn_python
from edgecompress.exporters.rknn_graph import for_rknn
from edgecompress.io import temp_path_for
from edgecompress.progress import elapsed

WORKER = Path(__file__).with_name("rknn_worker.py")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the toolkit colours its log even in a file
ALGORITHMS = ("normal", "mmse", "kl_divergence")
METHODS = ("channel", "layer")


class RknnError(EdgeCompressError):
    """rknn-toolkit2 could not convert or simulate a model."""


class RknnCrashError(RknnError):
    """The toolkit's process was killed by a signal (its native code crashed): which
    signal, in which step, and the folder that reproduces it for a bug report."""

    def __init__(
        self, message: str, *, signal: str, step: str, toolkit_version: str, reproducer: Path
    ) -> None:
        super().__init__(message)
        self.signal = signal
        self.step = step
        self.toolkit_version = toolkit_version
        self.reproducer = reproducer


@dataclass(frozen=True)
class RknnResult:
    path: Path
    size_bytes: int
    outputs: list[np.ndarray]  # simulator outputs per model output, stacked over inputs
    toolkit_version: str
    convert_s: float
    simulate_s: float
    log_path: Path
    warnings: tuple[str, ...] = ()
    rewrites: tuple[str, ...] = ()  # what rknn_graph changed in the graph the toolkit got


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
    progress: bool = True,
    crash_dir: Path | None = None,
) -> RknnResult:
    """Convert ``onnx_path`` to ``output`` (.rknn) and run it in the RKNN simulator.

    ``calib_images`` (H x W x 3) and ``eval_inputs`` (N x H x W x 3) are uint8 in the
    model's channel order, from ``spec.prepare``: the NPU applies mean/std itself, so the
    toolkit gets the spec's values in pixel units and computes what PyTorch computed after
    ``spec.normalize``. The toolkit's log is kept beside ``output`` (``<output>.log``).
    The conversion gives no steps to count: while it runs, the time elapsed is shown on
    stderr unless ``progress`` is false. When the toolkit's process is killed by a signal,
    what reproduces it is saved in ``crash_dir`` (default ``<output>.crash``) and
    ``RknnCrashError`` names the signal and the step.
    """
    python = find_rknn_python(rknn_python)
    onnx_path, output = Path(onnx_path).absolute(), Path(output).absolute()
    _check_options(algorithm, method)
    input_name, fixed_shape = _onnx_input(onnx_path, spec)
    calib = _check_images(spec, calib_images, eval_inputs, quantize)
    output.parent.mkdir(parents=True, exist_ok=True)
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rknn-", dir=work_dir))
    log_path = output.with_name(output.name + ".log")
    tmp_rknn = temp_path_for(output)
    given = work / f"{onnx_path.stem}.for_rknn.onnx"
    job = {
        "onnx": str(onnx_path),
        "output": str(output),
        "output_tmp": str(tmp_rknn),
        "platform": platform,
        "config": {
            "mean_values": [spec.mean_255],
            "std_values": [spec.std_255],
            "target_platform": platform,
            "quantized_dtype": "w8a8",
            "quantized_algorithm": algorithm,
            "quantized_method": method,
            "optimization_level": 3,
        },
        "quantize": quantize,
        "input_name": input_name,
        "input_size": fixed_shape,  # None when the ONNX input shape is static
        "log": str(log_path),
        "status": str(work / "status.json"),
        "result": str(work / "result.json"),
    }
    try:
        rewrites = for_rknn(onnx_path, given)
        job["onnx"] = str(given if rewrites else onnx_path)
        job.update(_write_inputs(work, calib, eval_inputs))
        (work / "job.json").write_text(json.dumps(job, indent=2))
        with elapsed(f"rknn: converting {onnx_path.name} for {platform}", progress):
            code = _run_worker(python, work / "job.json", log_path, timeout_s, onnx_path)
        if code < 0 and not (work / "result.json").exists():
            crash = crash_dir or output.with_name(output.name + ".crash")
            raise _crashed(job, code, crash, eval_inputs, python)
        result = _read_result(work / "result.json", code, onnx_path, log_path, python)
        outputs = _load_outputs(work / "outputs.npz") if len(eval_inputs) else []
    finally:
        tmp_rknn.unlink(missing_ok=True)  # a worker killed by the timeout leaves it
        shutil.rmtree(work, ignore_errors=True)
    return RknnResult(
        path=output,
        size_bytes=int(result["size_bytes"]),
        outputs=outputs,
        toolkit_version=str(result.get("toolkit_version", "unknown")),
        convert_s=float(result["convert_s"]),
        simulate_s=float(result.get("simulate_s", 0.0)),
        log_path=log_path,
        warnings=tuple(result.get("warnings", ())),
        rewrites=tuple(rewrites),
    )


def _check_options(algorithm: str, method: str) -> None:
    if algorithm not in ALGORITHMS or method not in METHODS:
        raise ConfigError(
            f"RKNN quantization: algorithm must be one of {ALGORITHMS} (got {algorithm!r}), "
            f"method one of {METHODS} (got {method!r})"
        )


def _onnx_input(onnx_path: Path, spec: PreprocessSpec) -> tuple[str, list[int] | None]:
    """The model's one input name, and the static shape to give the toolkit when the
    ONNX input has a dynamic dimension (RKNN compiles for one fixed shape)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(
            f"{onnx_path}: not a readable ONNX model ({type(exc).__name__}: {exc}); "
            "export it again (edgecompress export) before converting to RKNN"
        ) from exc
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise ConfigError(
            f"{onnx_path}: RKNN export takes a model with one image input, this one has "
            f"{len(inputs)} ({', '.join(i.name for i in inputs)})"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    expected = [1, spec.channels, *spec.input_size]  # RKNN reads NCHW ONNX inputs
    if len(shape) != 4 or any(
        s is not None and s != e for s, e in zip(shape, expected, strict=False)
    ):
        raise ConfigError(
            f"{onnx_path}: input {inputs[0].name!r} has shape {shape}, RKNN export expects "
            f"{expected} (batch 1, NCHW, the preprocessing spec's input size {spec.input_size})"
        )
    return inputs[0].name, (None if None not in shape else expected)


def _check_images(
    spec: PreprocessSpec,
    calib_images: Sequence[np.ndarray],
    eval_inputs: np.ndarray,
    quantize: bool,
) -> list[np.ndarray]:
    h, w, c = *spec.input_size, spec.channels
    if quantize and not calib_images:
        raise DataError("RKNN int8 conversion needs calibration images; none were given")
    for i, img in enumerate(calib_images):
        if img.shape != (h, w, c) or img.dtype != np.uint8:
            raise DataError(
                f"calibration image {i} is {img.dtype} {img.shape}; RKNN calibration takes "
                f"uint8 {(h, w, c)} from PreprocessSpec.prepare (mean/std applied by the NPU)"
            )
    if eval_inputs.dtype != np.uint8 or eval_inputs.shape[1:] != (h, w, c):
        raise DataError(
            f"evaluation inputs are {eval_inputs.dtype} {eval_inputs.shape}; the RKNN "
            f"simulator takes uint8 N x {h} x {w} x {c} from PreprocessSpec.prepare"
        )
    return list(calib_images)


def _write_inputs(work: Path, calib: list[np.ndarray], eval_inputs: np.ndarray) -> dict:
    """Calibration .npy files listed in dataset.txt, and the evaluation array."""
    calib_dir = work / "calib"
    calib_dir.mkdir()
    lines = []
    for i, img in enumerate(calib):
        path = calib_dir / f"{i:05d}.npy"
        # rknn-toolkit2 2.5 reads .npy calibration data in the ONNX input's layout with the
        # batch dimension, 1 x 3 x H x W (it rejects H x W x 3 and 1 x H x W x 3), and then
        # applies mean/std to it as to images: checked with an identity model.
        np.save(path, np.ascontiguousarray(img.transpose(2, 0, 1)[None]))
        lines.append(str(path))
    (work / "dataset.txt").write_text("".join(f"{line}\n" for line in lines))
    np.save(work / "eval.npy", np.ascontiguousarray(eval_inputs))
    return {
        "dataset_txt": str(work / "dataset.txt"),
        "eval_inputs": str(work / "eval.npy") if len(eval_inputs) else None,
        "eval_outputs": str(work / "outputs.npz"),
    }


def _run_worker(python: Path, job: Path, log_path: Path, timeout_s: float, onnx: Path) -> int:
    with open(log_path, "w") as log:
        try:
            # -I: isolated, so the worker's folder (which holds exporters/onnx.py) does
            # not shadow `import onnx`, and the main environment's PYTHONPATH is ignored.
            proc = subprocess.run(
                [str(python), "-I", str(WORKER), str(job)],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                cwd=job.parent,
            )
        except subprocess.TimeoutExpired:
            raise RknnError(
                f"RKNN conversion of {onnx} took over {timeout_s:.0f} s and was stopped; "
                f"see {log_path}, or raise the timeout for big models"
            ) from None
    return proc.returncode


def _crashed(
    job: dict, code: int, crash_dir: Path, eval_inputs: np.ndarray, python: Path
) -> RknnCrashError:
    """The error for a worker killed by a signal, after saving what reproduces it."""
    signame = signal_name(code)
    status = read_status(Path(job["status"]))
    step, version = str(status["step"]), str(status.get("toolkit_version", "unknown"))
    folder = save_reproducer(crash_dir, job, status, signame, eval_inputs)
    if job["quantize"]:
        advice = "try another quantized_algorithm or quantized_method, or quantize=False (FP16)"
    else:
        advice = (
            "if the model is INT8 QDQ, convert its float model instead with the toolkit's "
            "own calibration (quantize=True); or try another rknn-toolkit2 version"
        )
    cause = (
        "SIGKILL is most often the kernel's out-of-memory killer: check the memory free"
        if signame == "SIGKILL"
        else "The toolkit's native code crashed, so it gave no error message"
    )
    message = (
        f"rknn-toolkit2 {version} crashed: its process ({python}) was killed by {signame} "
        f"(signal {-code}) in step {step} while converting {job['onnx']} for "
        f"{job['platform']}. {cause}. The ONNX model, the settings and repro.py (the same "
        f"toolkit calls, without edgecompress) are saved in {folder}: attach this folder to "
        f"a bug report for rknn-toolkit2 ({BUG_REPORTS}), with the toolkit's log "
        f"(rknn-toolkit2.log there). What you can do now: {advice}"
    )
    return RknnCrashError(
        message, signal=signame, step=step, toolkit_version=version, reproducer=folder
    )


def _read_result(path: Path, code: int, onnx_path: Path, log_path: Path, python: Path) -> dict:
    if not path.exists():
        raise RknnError(
            f"the RKNN worker ({python}) exited with {code} without a result "
            f"while converting {onnx_path}; see {log_path}"
        )
    result = json.loads(path.read_text())
    if result.get("ok"):
        return result
    if result.get("import_failed"):
        raise MissingToolchainError(f"{result['error']}. {FIX}")
    error = str(result.get("error"))
    message = f"RKNN conversion of {onnx_path} failed: {error} (full log: {log_path})"
    op = _unsupported_op(error, log_path)
    if op:
        raise UnsupportedOpError(
            f"{message}. The NPU cannot run {op}: replace it in the model, or end the "
            "model before it and run the rest on the CPU"
        )
    step = result.get("step")
    if step == "load_onnx":
        raise ModelLoadError(message)
    if step == "config":
        raise ConfigError(message)
    raise RknnError(message)


# "Remove NonZero('y') manually and try again!": the toolkit's words for an op it cannot
# compile (data-dependent shapes); "... not support ..." for the rest.
_REMOVE = re.compile(r"Remove (\w+\('[^']*'\)) manually")


def _unsupported_op(error: str, log_path: Path) -> str | None:
    """The operator the toolkit refused, from its error or the error lines of its log."""
    try:
        log = log_path.read_text(errors="replace")
    except OSError:
        log = ""
    errors = [error] + [
        line[2:]
        for line in (_ANSI.sub("", raw).strip() for raw in log.splitlines())
        if line.startswith("E ")
    ]
    for text in errors:
        found = _REMOVE.search(text)
        if found:
            return found.group(1)
        low = text.lower()
        # Not a dynamic input shape: that is the model's input, not an operator.
        if ("not support" in low or "unsupported" in low) and "input shape" not in low:
            return text.strip()[:300]
    return None


def _load_outputs(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"output_{i}"] for i in range(len(data.files))]


def cosine_per_output(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> list[float]:
    """Cosine similarity of each output pair, flattened (1.0 for two zero arrays)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} outputs against {len(b)}")
    sims = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        x64, y64 = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
        if x64.size != y64.size:
            raise ValueError(f"output {i}: {x64.size} values against {y64.size}")
        nx, ny = float(np.linalg.norm(x64)), float(np.linalg.norm(y64))
        sims.append(1.0 if nx == ny == 0 else float(x64 @ y64) / max(nx * ny, 1e-300))
    return sims
