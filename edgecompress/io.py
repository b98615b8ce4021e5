"""Atomic writes: every artifact is written to a temporary name and renamed when
complete, so a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """``$EDGECOMPRESS_CACHE``, else ``~/.cache/edgecompress``: trained examples, the
    rknn-toolkit2 environment, measured target profiles, fitted energy tables."""
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def temp_path_for(path: Path) -> Path:
    """A sibling temporary name for a tool that writes the file itself."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def external_data_path(out: Path) -> Path:
    """Where an ONNX file at ``out`` keeps its weights when they are stored outside it."""
    return out.with_name(out.name + ".data")


def onnx_size_bytes(out: Path) -> int:
    """Bytes on disk of the model at ``out``, its external data file included."""
    data = external_data_path(out)
    return out.stat().st_size + (data.stat().st_size if data.exists() else 0)
