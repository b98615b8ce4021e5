"""A phone (or an Android board) over the system's ``adb``.

Files go with ``adb push`` into a fresh ``/data/local/tmp`` directory (the one place the
shell user may write and execute); commands run with ``adb shell`` as one quoted string.
``python`` must be an interpreter the shell user can run, e.g. a standalone CPython
pushed to /data/local/tmp (an app's private Python, such as Termux's, is not reachable).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from edgecompress.errors import ConfigError, DeviceError
from edgecompress.runtime.transports.base import Transport

# What adb prints when the device went away (adb 1.0.41, platform-tools 35).
_LOST = (
    "device offline",
    "error: device '",  # error: device 'SERIAL' not found
    "error: device not found",
    "no devices/emulators found",
    "error: closed",
    "unauthorized",
)


class AdbTransport(Transport):
    kind = "adb"

    def __init__(self, url: str, *, serial: str | None, python: str, adb: str = "adb") -> None:
        self.adb = shutil.which(adb)
        if self.adb is None:
            raise ConfigError(
                f"{url}: adb is not installed or not on PATH (Android SDK platform-tools)"
            )
        self.url, self.serial, self.python = url, serial, python

    def _adb(self, *args: str) -> list[str]:
        assert self.adb is not None
        return [self.adb, *(["-s", self.serial] if self.serial else []), *args]

    def _run(self, args: list[str], what: str, timeout_s: float) -> str:
        try:
            res = subprocess.run(
                args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.url}: {what} took over {timeout_s:.0f} s") from None
        if res.returncode != 0:
            err = (res.stderr or res.stdout).strip()
            why = self.lost(res.returncode, err) or err or f"exit status {res.returncode}"
            raise DeviceError(f"{self.url}: could not {what}: {why}")
        return res.stdout

    def stage(self, local_dir: Path, timeout_s: float) -> str:
        out = self._run(
            self._adb("shell", "mktemp -d /data/local/tmp/edgecompress.XXXXXX"),
            "make a working directory",
            timeout_s,
        )
        remote = out.strip()
        if not remote.startswith("/data/local/tmp/edgecompress.") or "\n" in remote:
            raise DeviceError(f"{self.url}: mktemp answered {remote!r}, not a directory path")
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            dest = f"{remote}/{path.relative_to(local_dir).as_posix()}"
            self._run(self._adb("push", str(path), dest), f"push {path.name}", timeout_s)
        return remote

    def command(self, argv: list[str], cwd: str) -> tuple[list[str], str | None]:
        return self._adb("shell", f"cd {shlex.quote(cwd)} && {shlex.join(argv)}"), None

    def fetch(self, remote_path: str, local_path: Path, timeout_s: float) -> None:
        self._run(self._adb("pull", remote_path, str(local_path)), f"pull {remote_path}", timeout_s)

    def cleanup(self, remote_dir: str, timeout_s: float) -> None:
        if remote_dir.startswith("/data/local/tmp/edgecompress."):
            subprocess.run(
                self._adb("shell", f"rm -rf {shlex.quote(remote_dir)}"),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
            )

    def lost(self, code: int, stderr: str) -> str | None:
        if code == 255 and not stderr.strip():
            # adb's status when the device vanished under a running shell (cable, reboot)
            return "adb exited with status 255: the connection to the device was lost"
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        for line in reversed(lines):
            if any(s in line for s in _LOST):
                return line.strip()
        return None
