"""The rknn-toolkit2 converter environment: found, checked, or created.

rknn-toolkit2 2.5.0 pins torch<=2.4, numpy<=1.26.4, onnx<=1.18 and protobuf<=4.25.4, so
it cannot share an environment with current torch; it gets a virtualenv of its own and
edgecompress talks to it through a subprocess (``rknn_worker.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edgecompress.errors import MissingToolchainError

ENV_VAR = "EDGECOMPRESS_RKNN_PYTHON"
FIX = (
    "run `edgecompress setup rknn` (or `make rknn`) to create it, or point "
    f"--rknn-python / {ENV_VAR} at the python of an environment with rknn-toolkit2"
)
# The three steps that give a working toolkit from the package registry (checked here).
INSTALL_STEPS: tuple[tuple[str, ...], ...] = (
    (
        "numpy<=1.26.4",
        "onnx==1.18.0",
        "onnxruntime>=1.17,<1.21",
        "protobuf<=4.25.4,>=4.21.6",
        "psutil",
        "ruamel.yaml",
        "scipy",
        "tqdm",
        "opencv-python-headless",
        "fast-histogram",
    ),
    ("--no-deps", "rknn-toolkit2==2.5.0"),
    # The toolkit imports torch at start-up; the CPU wheel is enough and pins nothing else.
    (
        "--no-deps",
        "torch==2.13.0",
        "sympy",
        "mpmath",
        "networkx",
        "filelock",
        "jinja2",
        "fsspec",
        "typing_extensions",
        "MarkupSafe",
    ),
)
_checked: set[Path] = set()


def cache_root() -> Path:
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


def default_rknn_env_dir() -> Path:
    return cache_root() / "rknn-venv"


def check_rknn_python(python: Path) -> str | None:
    """None when ``python`` imports rknn-toolkit2, else the reason it does not."""
    if not python.exists():
        return f"{python} does not exist"
    try:
        res = subprocess.run(
            [str(python), "-c", "from rknn.api import RKNN"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} could not be run: {exc}"
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {res.returncode}"
        return f"{python} cannot import rknn-toolkit2: {why}"
    return None


def find_rknn_python(explicit: str | Path | None = None) -> Path:
    """The interpreter to convert with: ``explicit``, then $EDGECOMPRESS_RKNN_PYTHON, then
    the default environment. Raises MissingToolchainError with the fix when none works."""
    candidate = explicit or os.environ.get(ENV_VAR) or default_rknn_env_dir() / "bin" / "python"
    python = Path(candidate).expanduser()
    if python in _checked:
        return python
    problem = check_rknn_python(python)
    if problem:
        raise MissingToolchainError(
            f"the rknn-toolkit2 converter environment is not usable: {problem}. {FIX}"
        )
    _checked.add(python)
    return python


def setup_rknn_env(
    dest: Path | None = None,
    *,
    python: str | None = None,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> Path:
    """Create (or reuse) the environment at ``dest`` and return its interpreter.

    Built in a temporary folder beside ``dest`` and renamed when it works, so a failed or
    interrupted setup never leaves a half environment where a working one is expected.
    """
    dest = Path(dest or default_rknn_env_dir())
    target_python = dest / "bin" / "python"
    if not force and dest.exists() and check_rknn_python(target_python) is None:
        progress(f"rknn-toolkit2 environment already works: {target_python}")
        return target_python
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    base = python or getattr(sys, "_base_executable", None) or sys.executable
    progress(f"creating {dest} with {base}")
    _run([base, "-m", "venv", str(tmp)], "create the virtualenv")
    for i, step in enumerate(INSTALL_STEPS, 1):
        progress(f"installing ({i}/{len(INSTALL_STEPS)}): {' '.join(step)}")
        _run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *step], f"pip step {i}")
    # The interpreter finds its site-packages through pyvenv.cfg beside bin/, so the
    # renamed environment works; only console-script shebangs keep the old path, and
    # nothing here uses them (always `python -m ...`).
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    problem = check_rknn_python(target_python)
    if problem:
        raise MissingToolchainError(f"the new environment at {dest} does not work: {problem}")
    _checked.add(target_python)
    return target_python


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-15:])
        raise MissingToolchainError(
            f"could not {what} for rknn-toolkit2 ({' '.join(cmd[:4])} ...):\n{tail}"
        )
