"""This machine: a temporary directory and a subprocess."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from edgecompress.runtime.transports.base import Transport


class LocalTransport(Transport):
    kind = "local"
    url = "local"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def stage(self, local_dir: Path, timeout_s: float) -> str:
        remote = Path(tempfile.mkdtemp(prefix="edgecompress-agent-"))
        shutil.copytree(local_dir, remote, dirs_exist_ok=True)
        return str(remote)

    def command(self, argv: list[str], cwd: str) -> tuple[list[str], str | None]:
        return argv, cwd

    def fetch(self, remote_path: str, local_path: Path, timeout_s: float) -> None:
        shutil.copyfile(remote_path, local_path)

    def cleanup(self, remote_dir: str, timeout_s: float) -> None:
        shutil.rmtree(remote_dir, ignore_errors=True)

    def lost(self, code: int, stderr: str) -> str | None:
        return None  # a local process cannot lose its connection
