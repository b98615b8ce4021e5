"""When rknn-toolkit2's native code kills its process (SIGFPE, SIGSEGV, ...) there is no
Python error to report: what is left is the signal, the step the worker said it was in,
and the inputs. This module saves those inputs as a folder that reproduces the crash
without edgecompress (the ONNX, the settings, a script making the same toolkit calls),
to attach to a bug report for rknn-toolkit2.

>>> save_reproducer(Path("out/rknn_crash"), job, status, "SIGFPE", eval_inputs)  # doctest: +SKIP
PosixPath('out/rknn_crash')
"""

from __future__ import annotations

import json
import os
import pprint
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# The worker's toolkit calls in order; a step is named by its first word.
STEPS = ("config", "load_onnx", "build", "export_rknn", "init_runtime", "inference")
BUG_REPORTS = "https://github.com/airockchip/rknn-toolkit2/issues"


def signal_name(returncode: int) -> str:
    """``SIGFPE`` for a process killed by signal 8 (``subprocess`` gives -8)."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def read_status(path: Path) -> dict[str, Any]:
    """The step the worker last entered (it writes the file whole, then renames it)."""
    try:
        status: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        # Died before its first step: not even the import of rknn-toolkit2 had started.
        return {"step": "start-up", "toolkit_version": "unknown"}
    return status


def save_reproducer(
    dest: Path, job: dict[str, Any], status: dict[str, Any], signame: str, eval_inputs: np.ndarray
) -> Path:
    """Write the reproducer for a crash of the worker that ran ``job`` into ``dest`` (or
    ``dest-2``, ... when a previous crash's folder is there) and return the folder. It is
    filled under a temporary name and renamed when complete, so a folder under the final
    name is never half-written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _fill(tmp, job, status, signame, eval_inputs)
        final = _free_name(dest)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _free_name(dest: Path) -> Path:
    n, name = 2, dest
    while name.exists():
        name, n = dest.with_name(f"{dest.name}-{n}"), n + 1
    return name


def _fill(
    folder: Path, job: dict[str, Any], status: dict[str, Any], signame: str, evals: np.ndarray
) -> None:
    onnx_path = Path(job["onnx"])
    for rel in [onnx_path.name, *_external_data(onnx_path)]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path.parent / rel, folder / rel)
    steps = _steps_run(str(status.get("step")), bool(job.get("eval_inputs")))
    dataset = None
    if job["quantize"] and "build" in steps:
        dataset = _copy_calibration(Path(job["dataset_txt"]), folder)
    if "inference" in steps:
        i = int(status.get("input_index", 0))
        np.save(folder / "input.npy", np.ascontiguousarray(evals[i : i + 1]))
    if Path(job["log"]).exists():
        shutil.copyfile(job["log"], folder / "rknn-toolkit2.log")
    settings = {
        "crash": {
            "signal": signame,
            "step": status.get("step"),
            "toolkit_version": status.get("toolkit_version", "unknown"),
        },
        "onnx": onnx_path.name,
        "config": job["config"],
        "load_onnx": _load_args(job, onnx_path.name),
        "build": {"do_quantization": bool(job["quantize"]), "dataset": dataset},
        "evaluation_input": status.get("input_index"),
    }
    (folder / "job.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / "repro.py").write_text(_script(settings, steps))


def _external_data(onnx_path: Path) -> list[str]:
    """Files (relative to the model) holding tensors stored outside the .onnx, if any."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    found: list[str] = []
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = next(e.value for e in init.external_data if e.key == "location")
            if loc not in found:
                found.append(loc)
    return found


def _steps_run(step: str, simulated: bool) -> list[str]:
    """The calls up to the one that crashed; all of them when the step is not a call
    (start-up, import, release)."""
    first = step.split(" ")[0]
    if first in STEPS:
        return list(STEPS[: STEPS.index(first) + 1])
    return list(STEPS if simulated else STEPS[:4])


def _copy_calibration(dataset_txt: Path, folder: Path) -> str:
    """The calibration files under calib/, listed in dataset.txt by relative path (run the
    script from the folder)."""
    (folder / "calib").mkdir()
    lines = []
    for line in dataset_txt.read_text().splitlines():
        if line.strip():
            src = Path(line.strip())
            shutil.copyfile(src, folder / "calib" / src.name)
            lines.append(f"calib/{src.name}\n")
    (folder / "dataset.txt").write_text("".join(lines))
    return "dataset.txt"


def _load_args(job: dict[str, Any], model: str) -> dict[str, Any]:
    if job.get("input_size"):
        return {
            "model": model,
            "inputs": [job["input_name"]],
            "input_size_list": [job["input_size"]],
        }
    return {"model": model}


def _call(fn: str, args: dict[str, Any]) -> str:
    inner = ", ".join(f"{k}={pprint.pformat(v, width=200)}" for k, v in args.items())
    return f'print("{fn}:", rknn.{fn}({inner}))'


def _script(settings: dict[str, Any], steps: list[str]) -> str:
    crash = settings["crash"]
    calls = {
        "config": _call("config", settings["config"]),
        "load_onnx": _call("load_onnx", settings["load_onnx"]),
        "build": _call("build", {k: v for k, v in settings["build"].items() if v is not None}),
        "export_rknn": 'print("export_rknn:", rknn.export_rknn("repro.rknn"))',
        "init_runtime": 'print("init_runtime:", rknn.init_runtime())',
        "inference": 'outs = rknn.inference(inputs=[np.load("input.npy")], data_format="nhwc")\n'
        'print("inference:", None if outs is None else [o.shape for o in outs])',
    }
    body = "\n".join(calls[s] for s in steps)
    return (
        f'"""rknn-toolkit2 {crash["toolkit_version"]} was killed by {crash["signal"]} in '
        f"{crash['step']}.\n\nRun from this folder with the toolkit's interpreter: "
        "python repro.py\nSaved by edgecompress; the settings are also in job.json.\n"
        '"""\n\nimport numpy as np\nfrom rknn.api import RKNN\n\n'
        f"rknn = RKNN(verbose=True)\n{body}\nrknn.release()\n"
    )
