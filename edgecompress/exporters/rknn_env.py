"""The rknn-toolkit2 converter environment: found, checked, or created.

rknn-toolkit2 2.5.0 pins torch<=2.4, numpy<=1.26.4, onnx<=1.18 and protobuf<=4.25.4, so
it cannot share an environment with current torch; it gets a virtualenv of its own and
edgecompress talks to it through a subprocess (``rknn_worker.py``).

>>> python = find_rknn_python()  # doctest: +SKIP
>>> setup_rknn_env()  # what `edgecompress setup rknn` runs  # doctest: +SKIP
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
    "run `edgecompress setup rknn` (or `make rknn`) to create it, or pass "
    f"--rknn-python PATH / set {ENV_VAR} to the python of an environment with rknn-toolkit2"
)
# The three steps that give a working toolkit from the package registry (checked here):
# the toolkit's own requirements would pull torch<=2.4 and more, so it goes in --no-deps
# on top of the pins it needs.
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
    # The toolkit imports torch at start-up; the CPU wheel is enough.
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
# -I (isolated): no user site-packages, no PYTHON* variables, no cwd on sys.path, so a
# stray onnx.py or a PYTHONPATH meant for the main environment cannot shadow the toolkit.
_CHECK = ("-I", "-c", "import rknn.api; from rknn.api import RKNN")
_CHECK_TIMEOUT_S = 300  # the first import after installing compiles bytecode: seconds, not ms
_checked: set[Path] = set()


def cache_root() -> Path:
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


def default_rknn_env_dir() -> Path:
    """``$EDGECOMPRESS_CACHE/rknn-venv`` (``~/.cache/edgecompress/rknn-venv`` by default)."""
    return cache_root() / "rknn-venv"


def check_rknn_python(python: Path) -> str | None:
    """None when ``python`` imports rknn-toolkit2, else what went wrong (one line)."""
    if not python.exists():
        return f"{python} does not exist"
    try:
        res = subprocess.run(
            [str(python), *_CHECK], capture_output=True, text=True, timeout=_CHECK_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} could not be run: {exc}"
    if res.returncode != 0:
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {res.returncode}"
        return f"{python} cannot import rknn-toolkit2: {why}"
    return None


def find_rknn_python(explicit: str | Path | None = None) -> Path:
    """The interpreter to convert with: ``explicit``, then $EDGECOMPRESS_RKNN_PYTHON, then
    the default environment. A working one is remembered for the rest of the process;
    a broken one raises MissingToolchainError saying how to make one."""
    candidate = explicit or os.environ.get(ENV_VAR) or default_rknn_env_dir() / "bin" / "python"
    # No resolve(): a venv's bin/python is a symlink to the base interpreter, which does not
    # have the toolkit; the venv is found through the link's own location.
    python = Path(candidate).expanduser().absolute()
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
    python: str | None = None,
    progress: Callable[[str], None] = print,
    *,
    force: bool = False,
) -> Path:
    """Create the converter environment at ``dest`` and return its interpreter.

    A working environment already at ``dest`` is kept (unless ``force``). A new one is
    built and checked in a temporary folder beside ``dest`` and renamed into place, so a
    failed or interrupted setup never leaves a half environment where a working one is
    expected. ``python`` is the base interpreter (default: the one running this).
    """
    dest = Path(dest or default_rknn_env_dir()).expanduser().absolute()
    target = dest / "bin" / "python"
    if not force and dest.exists() and check_rknn_python(target) is None:
        progress(f"rknn-toolkit2 environment already works: {target}")
        _checked.add(target)
        return target
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(tmp, python, progress)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        # The interpreter finds its site-packages through pyvenv.cfg beside bin/, so the
        # renamed environment works; only console-script shebangs keep the temporary
        # path, and nothing here uses them (always `python -m ...`). Checked, not assumed:
        problem = check_rknn_python(target)
        if problem:
            shutil.rmtree(dest)
            if old.exists():
                os.replace(old, dest)
            raise MissingToolchainError(f"the environment does not work once moved: {problem}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    _checked.add(target)
    return target


def _build(venv: Path, base: str | None, progress: Callable[[str], None]) -> None:
    """venv + the three pip steps + the import check, all inside ``venv``."""
    base = base or getattr(sys, "_base_executable", None) or sys.executable
    progress(f"creating a virtualenv with {base} in {venv}")
    _run([base, "-m", "venv", str(venv)], "create the virtualenv")
    py = venv / "bin" / "python"
    for i, step in enumerate(INSTALL_STEPS, 1):
        progress(f"pip install ({i}/{len(INSTALL_STEPS)}): {' '.join(step)}")
        _run([str(py), "-m", "pip", "install", "--quiet", *step], f"pip install step {i}")
    problem = check_rknn_python(py)
    if problem:
        raise MissingToolchainError(f"the new rknn-toolkit2 environment does not work: {problem}")


def _run(cmd: list[str], what: str) -> None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise MissingToolchainError(f"could not {what} for rknn-toolkit2: {exc}") from exc
    if res.returncode != 0:
        out = (res.stderr.strip() + "\n" + res.stdout.strip()).strip()
        tail = "\n".join(out.splitlines()[-20:])
        raise MissingToolchainError(
            f"could not {what} for rknn-toolkit2 (`{' '.join(cmd)}` exited with "
            f"{res.returncode}):\n{tail}"
        )
