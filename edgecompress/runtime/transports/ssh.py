"""A board over the system's OpenSSH client.

Batch mode (never prompts), connect and keep-alive timeouts, host keys checked against
known_hosts (an unknown host is an error with the fix, never accepted silently). Every
remote command is one string built with ``shlex.quote``, so a path or argument cannot
reach the remote shell as code. Files go over the same connection as a tar stream
(``tar -x`` on the device), which needs neither scp nor sftp there.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from edgecompress.errors import ConfigError, DeviceError
from edgecompress.runtime.transports.base import Transport

SSH_LOST = 255  # what ssh exits with when it, not the remote command, failed


class SshTransport(Transport):
    kind = "ssh"

    def __init__(
        self,
        url: str,
        *,
        host: str,
        user: str | None,
        port: int | None,
        python: str,
        options: tuple[str, ...] = (),
        connect_timeout_s: int = 10,
    ) -> None:
        if shutil.which("ssh") is None:
            raise ConfigError(f"{url}: no ssh client on this machine (apt install openssh-client)")
        for opt in options:
            if "=" not in opt or opt.startswith("-"):
                raise ConfigError(f"ssh option {opt!r}: write KEY=VALUE (IdentityFile=~/.ssh/k)")
        self.url, self.host, self.user, self.port, self.python = url, host, user, port, python
        self.options = options
        self.connect_timeout_s = connect_timeout_s

    def _ssh(self, remote_command: str) -> list[str]:
        argv = ["ssh", "-T"]
        for opt in self.options:  # first: ssh keeps the first value it reads for a key
            argv += ["-o", opt]
        argv += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
        argv += ["-o", f"ConnectTimeout={self.connect_timeout_s}"]
        argv += ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        argv += ["-o", "LogLevel=ERROR"]
        if self.port:
            argv += ["-p", str(self.port)]
        dest = f"{self.user}@{self.host}" if self.user else self.host
        return [*argv, "--", dest, remote_command]

    def _check(self, res: subprocess.CompletedProcess[bytes], what: str) -> str:
        if res.returncode != 0:
            err = res.stderr.decode(errors="replace").strip()
            raise DeviceError(f"{self.url}: could not {what}: {self._explain(res.returncode, err)}")
        return res.stdout.decode(errors="replace")

    def stage(self, local_dir: Path, timeout_s: float) -> str:
        try:
            res = subprocess.run(
                self._ssh("mktemp -d /tmp/edgecompress.XXXXXX"),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.url}: no answer within {timeout_s:.0f} s") from None
        remote = self._check(res, "make a working directory").strip()
        if not remote.startswith("/tmp/edgecompress.") or "\n" in remote:
            raise DeviceError(f"{self.url}: mktemp answered {remote!r}, not a directory path")
        with tempfile.TemporaryFile() as archive:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                for path in sorted(local_dir.iterdir()):
                    tar.add(path, arcname=path.name)
            archive.seek(0)
            try:
                res = subprocess.run(
                    self._ssh(f"tar -xf - -C {shlex.quote(remote)}"),
                    stdin=archive,
                    capture_output=True,
                    timeout=timeout_s,
                )
            except subprocess.TimeoutExpired:
                raise DeviceError(
                    f"{self.url}: copying files took over {timeout_s:.0f} s"
                ) from None
        self._check(res, "copy files")
        return remote

    def command(self, argv: list[str], cwd: str) -> tuple[list[str], str | None]:
        return self._ssh(f"cd {shlex.quote(cwd)} && exec {shlex.join(argv)}"), None

    def fetch(self, remote_path: str, local_path: Path, timeout_s: float) -> None:
        with local_path.open("wb") as out:
            try:
                res = subprocess.run(
                    self._ssh(f"cat {shlex.quote(remote_path)}"),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.PIPE,
                    timeout=timeout_s,
                )
            except subprocess.TimeoutExpired:
                raise DeviceError(
                    f"{self.url}: copying {remote_path} back took over {timeout_s:.0f} s"
                ) from None
        if res.returncode != 0:
            err = res.stderr.decode(errors="replace").strip()
            why = self._explain(res.returncode, err)
            raise DeviceError(f"{self.url}: could not copy {remote_path} back: {why}")

    def cleanup(self, remote_dir: str, timeout_s: float) -> None:
        if remote_dir.startswith("/tmp/edgecompress."):
            subprocess.run(
                self._ssh(f"rm -rf {shlex.quote(remote_dir)}"),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
            )

    def lost(self, code: int, stderr: str) -> str | None:
        return self._explain(code, stderr.strip()) if code == SSH_LOST else None

    def _explain(self, code: int, err: str) -> str:
        last = err.splitlines()[-1] if err else f"exit status {code}"
        if "Host key verification failed" in err or "No host key is known" in err:
            port = f"-p {self.port} " if self.port else ""
            return (
                f"{last} (the host key is not in known_hosts: check its fingerprint, then "
                f"`ssh-keyscan {port}{self.host} >> ~/.ssh/known_hosts`)"
            )
        if "Permission denied" in err:
            return (
                f"{last} (key authentication failed: batch mode never asks for a password; add "
                "your key to the device's authorized_keys or pass --ssh-option IdentityFile=...)"
            )
        return last
