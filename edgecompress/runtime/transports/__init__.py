"""How the host reaches a benchmark device: ``local``, ``ssh://[user@]host[:port]``,
``adb://[SERIAL]``. One transport per module; each copies a folder to a fresh directory
on the device, gives the command line that runs a program there, and tells a lost
connection from a program that failed."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import unquote, urlsplit

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
    def cleanup(self, remote_dir: str, timeout_s: float) -> None:
        """Remove what :meth:`stage` made (best effort)."""

    @abstractmethod
    def lost(self, code: int, stderr: str) -> str | None:
        """Why the connection was lost, when ``code``/``stderr`` say so; else None."""


def safe_name(value: str, what: str, url: str) -> str:
    if not _SAFE.match(value):
        raise ConfigError(f"device {url!r}: {what} {value!r} has characters ssh/adb would misread")
    return value


def parse_device(
    url: str, *, python: str | None = None, ssh_options: tuple[str, ...] = ()
) -> Transport:
    """``local`` | ``ssh://[user@]host[:port]`` | ``adb://[SERIAL]`` -> its transport."""
    if url in ("local", "local://"):
        from edgecompress.runtime.transports.local import LocalTransport

        return LocalTransport(python=python)
    parts = urlsplit(url)
    if parts.scheme == "ssh":
        from edgecompress.runtime.transports.ssh import SshTransport

        if not parts.hostname:
            raise ConfigError(f"device {url!r}: no host; write ssh://user@host[:port]")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"device {url!r}: the port is not a number") from None
        user = unquote(parts.username) if parts.username else None
        return SshTransport(
            url,
            host=safe_name(parts.hostname, "host", url),
            user=safe_name(user, "user", url) if user else None,
            port=port,
            python=python or "python3",
            options=ssh_options,
        )
    if parts.scheme == "adb":
        from edgecompress.runtime.transports.adb import AdbTransport

        serial = parts.netloc or None
        return AdbTransport(
            url,
            serial=safe_name(serial, "serial", url) if serial else None,
            python=python or "python3",
        )
    raise ConfigError(
        f"device {url!r}: write local, ssh://user@host[:port] or adb://SERIAL (adb:// for the "
        "only device attached)"
    )
