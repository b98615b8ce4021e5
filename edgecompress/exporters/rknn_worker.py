"""Runs INSIDE the rknn-toolkit2 environment: ``python -I rknn_worker.py job.json``.

rknn-toolkit2 pins old torch/numpy/onnx, so it cannot be imported next to edgecompress;
this script is the whole of what runs there. It imports only the standard library,
numpy and rknn — never edgecompress.

Steps: config -> load_onnx -> build -> export_rknn (to ``output_tmp``) -> init_runtime
(no target: the simulator) -> inference on every evaluation input -> rename the .rknn to
``output``. Converting and simulating share one RKNN object because the simulator only
runs a model built in the same object (load_rknn + simulator is not supported). The .rknn
is renamed into place only after it has run, so a failure leaves no artifact. Before each
toolkit call the step's name goes to the ``status`` file (written whole, then renamed):
when the toolkit's native code kills the process with a signal (SIGFPE, SIGSEGV), the
parent still knows which call it was in.

Job JSON: onnx, output, output_tmp, config (``rknn.config``'s arguments), quantize,
dataset_txt, eval_inputs (.npy, uint8 N x H x W x 3 in the model's channel order),
eval_outputs (.npz written: ``output_<i>`` stacked over N), input_name/input_size (set
only to fix a dynamic input shape), log (the file stdout goes to), status (JSON written
before each step: ``step``, ``toolkit_version``, ``input_index`` during inference), result
(JSON written: ``ok``, ``step`` and ``error`` on failure, toolkit version, size, timings,
warnings).

Tests only: ``EDGECOMPRESS_TEST_RKNN_CRASH=<step>`` (e.g. ``build``) makes the worker kill
itself with SIGFPE as that step starts, because no small model reliably crashes the real
converter.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import traceback
from typing import Any


class StepFailed(Exception):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"rknn-toolkit2 {step} failed: {message}")
        self.step = step


class Status:
    """The step the worker is in, in a file the parent reads if the process dies."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.info: dict[str, Any] = {"step": "import", "toolkit_version": "unknown"}

    def enter(self, step: str, **extra: Any) -> str:
        """Record that ``step`` starts now; returns its name (for ``_call``)."""
        self.info = {"step": step, "toolkit_version": self.info["toolkit_version"], **extra}
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.info, f)
            os.replace(tmp, self.path)  # a half-written status must not be read
        sys.stdout.flush()  # the log up to here survives a signal
        _injected_crash(step)
        return step


CRASH_HOOK = "EDGECOMPRESS_TEST_RKNN_CRASH"


def _injected_crash(step: str) -> None:
    """Tests only: die as the native converter does when a step matches the hook."""
    wanted = os.environ.get(CRASH_HOOK)
    if wanted and (step == wanted or step.startswith(wanted + " ")):
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for a test
        os.kill(os.getpid(), signal.SIGFPE)


def _call(step: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """One toolkit call (``step`` from ``Status.enter``). It fails by returning non-zero
    (or None for inference) or by raising a ValueError whose message is a whole
    traceback: either way, name the step and keep the toolkit's own reason."""
    try:
        ret = fn(*args, **kwargs)
    except Exception as exc:
        raise StepFailed(step, _reason(exc)) from exc
    if ret is None or (isinstance(ret, int) and ret != 0):
        raise StepFailed(step, f"returned {ret!r} (the toolkit's reason is in the log)")
    return ret


_EXC_LINE = re.compile(r"^\w*(Error|Exception): ")


def _reason(exc: Exception) -> str:
    """The toolkit's own message out of the traceback text it raises: the last
    ``SomeError: ...`` line and the lines continuing it, on one line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    starts = [i for i, ln in enumerate(lines) if _EXC_LINE.match(ln)]
    if not starts:
        return lines[-1] if len(lines) > 3 else " ".join(lines)
    return " ".join([_EXC_LINE.sub("", lines[starts[-1]]), *lines[starts[-1] + 1 :]])


def _convert(rknn: Any, job: dict, result: dict, status: Status) -> None:
    _call(status.enter("config"), rknn.config, **job["config"])
    t0 = time.perf_counter()
    load = status.enter("load_onnx")
    if job.get("input_size"):  # the ONNX input has a dynamic dimension: fix it
        _call(
            load,
            rknn.load_onnx,
            model=job["onnx"],
            inputs=[job["input_name"]],
            input_size_list=[job["input_size"]],
        )
    else:
        _call(load, rknn.load_onnx, model=job["onnx"])
    t1 = time.perf_counter()
    # Named by the call's argument: without calibration the build is FP16 for a float
    # model and takes the ranges over for a QDQ one.
    build = status.enter(f"build (do_quantization={bool(job['quantize'])})")
    if job["quantize"]:
        _call(build, rknn.build, do_quantization=True, dataset=job["dataset_txt"])
    else:
        _call(build, rknn.build, do_quantization=False)
    t2 = time.perf_counter()
    _call(status.enter("export_rknn"), rknn.export_rknn, job["output_tmp"])
    t3 = time.perf_counter()
    result["seconds"] = {"load": t1 - t0, "build": t2 - t1, "export": t3 - t2}
    result["convert_s"] = t3 - t0


def _simulate(rknn: Any, job: dict, result: dict, status: Status) -> None:
    import numpy as np

    t0 = time.perf_counter()
    _call(status.enter("init_runtime (simulator)"), rknn.init_runtime)
    inputs = np.load(job["eval_inputs"])
    t1 = time.perf_counter()
    per_output: list[list[Any]] = []
    for i in range(len(inputs)):
        # One image per call: the model has batch 1. nhwc uint8, as the camera gives it;
        # the toolkit applies mean/std itself. Outputs come back in the ONNX layout.
        outs = _call(
            status.enter(f"inference (evaluation input {i})", input_index=i),
            rknn.inference,
            inputs=[inputs[i : i + 1]],
            data_format="nhwc",
        )
        if not per_output:
            per_output = [[] for _ in outs]
        for j, o in enumerate(outs):
            per_output[j].append(np.asarray(o, dtype=np.float32))
    t2 = time.perf_counter()
    result["seconds"].update({"init_runtime": t1 - t0, "inference": t2 - t1})
    result["simulate_s"] = t2 - t0
    result["evaluated"] = len(inputs)
    arrays = {f"output_{j}": np.concatenate(o) for j, o in enumerate(per_output)}
    np.savez(job["eval_outputs"], **arrays)  # type: ignore[arg-type]  # numpy 2 stubs


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _warnings(log: str | None, limit: int = 20) -> list[str]:
    """The toolkit's own warning lines from the log, without colours and banners."""
    if not log or not os.path.exists(log):
        return []
    sys.stdout.flush()
    sys.stderr.flush()
    found: list[str] = []
    with open(log, errors="replace") as f:
        for raw in f:
            line = _ANSI.sub("", raw).strip()
            noise = "=====" in line or "temperate env" in line  # banners, env juggling
            if line.startswith("W ") and not noise and line[2:] not in found:
                found.append(line[2:])
    return found[:limit]


def run(job: dict) -> dict:
    result: dict = {"ok": False, "output": job["output"], "step": "import"}
    status = Status(job.get("status"))
    status.enter("import")
    try:
        from rknn.api import RKNN
    except Exception as exc:
        result["error"] = f"cannot import rknn-toolkit2 in {sys.executable}: {exc}"
        result["import_failed"] = True
        return result
    try:
        from importlib.metadata import version

        result["toolkit_version"] = version("rknn-toolkit2")
    except Exception:
        result["toolkit_version"] = "unknown"
    status.info["toolkit_version"] = result["toolkit_version"]
    status.enter("RKNN()")
    rknn = RKNN(verbose=False)
    try:
        _convert(rknn, job, result, status)
        if job.get("eval_inputs"):
            _simulate(rknn, job, result, status)
        result["size_bytes"] = os.path.getsize(job["output_tmp"])
        result.update(ok=True, step=None)
    except StepFailed as exc:
        result.update(step=exc.step, error=str(exc))
    except Exception as exc:
        result.update(step="worker", error=f"{type(exc).__name__}: {exc}")
        result["traceback"] = traceback.format_exc()
    finally:
        status.enter("release")
        rknn.release()
    # Renamed only now: a crash in any step, release included, leaves no artifact.
    if result["ok"]:
        os.replace(job["output_tmp"], job["output"])
    elif os.path.exists(job["output_tmp"]):
        os.remove(job["output_tmp"])
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python rknn_worker.py job.json", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        job = json.load(f)
    result = run(job)
    result["warnings"] = _warnings(job.get("log"))
    tmp = job["result"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, job["result"])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
