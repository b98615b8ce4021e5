"""How the host reaches a benchmark device: ``local``, ``ssh://[user@]host[:port]``,
``adb://[SERIAL]``. One transport per module; each copies a folder to a fresh directory
on the device, gives the command line that runs a program there, and tells a lost
connection from a program that failed."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from edgecompress.errors import ConfigError
from edgecompress.runtime.transports.base import Transport, safe_name

__all__ = ["Transport", "parse_device", "safe_name"]


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
