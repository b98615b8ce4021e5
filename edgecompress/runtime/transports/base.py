"""What every transport is: a device the host can copy files to and run commands on
(the package's modules implement it; nothing here imports them)."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path

from edgecompress.errors import ConfigError

# Host names, users and serials are passed to ssh/adb as arguments: nothing that could be
# read as an option or reach a shell gets through.
_SAFE = re.compile(r"^[A-Za-z0-9_.%:\[\]][A-Za-z0-9_.%:\[\]-]*$")


class Transport(ABC):
    """A device the host can copy files to and run commands on."""

    kind: str
    url: str
    python: str  # the device's interpreter

    @abstractmethod
    def stage(self, local_dir: Path, timeout_s: float) -> str:
        """Copy ``local_dir``'s contents into a new directory on the device; its path."""

    @abstractmethod
    def command(self, argv: list[str], cwd: str) -> tuple[list[str], str | None]:
        """The local argv (and local cwd) that runs ``argv`` on the device in ``cwd``."""

    @abstractmethod
    def fetch(self, remote_path: str, local_path: Path, timeout_s: float) -> None:
        """Copy the device's file ``remote_path`` (one :meth:`stage` made or a program
        wrote there) to ``local_path`` on this machine."""

    @abstractmethod
    def cleanup(self, remote_dir: str, timeout_s: float) -> None:
        """Remove what :meth:`stage` made (best effort)."""

    @abstractmethod
    def lost(self, code: int, stderr: str) -> str | None:
        """Why the connection was lost, when ``code``/``stderr`` say so; else None."""


def safe_name(value: str, what: str, url: str) -> str:
    if not _SAFE.match(value):
        raise ConfigError(f"device {url!r}: {what} {value!r} has characters ssh/adb would misread")
    return value
