"""Benchmarks over ssh, for real: an OpenSSH server on 127.0.0.1 that the test starts
(its own host key, config and authorized key), the system's ssh client, the agent run
by a Python on the far side of the connection."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from edgecompress.errors import ConfigError, DeviceError
from edgecompress.runtime.harness import BenchOptions, DeviceDisconnected, bench_artifact

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class Sshd:
    port: int
    pid: int
    options: tuple[str, ...]
    user: str

    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not Path(SSHD).exists():
        if os.environ.get("EDGECOMPRESS_REQUIRE_SSHD") == "1":
            pytest.fail(f"{SSHD} is missing: apt-get install openssh-server (.ci/run does)")
        pytest.skip("no OpenSSH server here (apt-get install openssh-server); CI installs it")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
        )
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    with open(d / "sshd.log", "w") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=log)
    host_key = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    deadline = time.monotonic() + 60  # generous: a loaded machine starts sshd slowly
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
    options = (
        f"IdentityFile={d / 'client_key'}",
        f"UserKnownHostsFile={d / 'known_hosts'}",
        "IdentitiesOnly=yes",
    )
    import pwd

    yield Sshd(port, proc.pid, options, pwd.getpwuid(os.getuid()).pw_name)
    proc.terminate()
    proc.wait(10)


def _opts(sshd: Sshd, **kw: object) -> BenchOptions:
    # The far side's interpreter: this one, run from the staged folder (the bundle's
    # `edgecompress` shadows the installed one because `-m` puts the cwd first).
    base = BenchOptions(
        runs=50,
        warmup=5,
        min_time_s=0.3,
        sensors=(),
        python=os.environ.get("EDGECOMPRESS_SSH_PYTHON", __import__("sys").executable),
        ssh_options=sshd.options,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_bench_over_ssh_runs_the_agent_on_the_far_side(sshd: Sshd, tiny_onnx: Path) -> None:
    res = bench_artifact(tiny_onnx, "host", sshd.url(), _opts(sshd))
    assert res["complete"] is True
    assert res["calls"] >= 50 and res["latency"]["p50_ms"] > 0
    assert res["runtime"] == "onnxruntime"
    agent = res["device_info"]["agent_file"]
    assert agent.startswith("/tmp/edgecompress."), agent  # the staged copy, not this checkout
    assert not Path(agent).exists(), "the device's working folder is removed afterwards"
    assert res["torch_imported"] is False
    assert res["memory"]["peak_rss_bytes"] > 0


def test_file_names_never_reach_the_remote_shell(
    sshd: Sshd, tiny_onnx: Path, tmp_path: Path
) -> None:
    odd = tmp_path / "it's a $(touch PWNED) `touch PWNED2`; model.onnx"
    shutil.copy(tiny_onnx, odd)
    res = bench_artifact(odd, "host", sshd.url(), _opts(sshd, runs=5, min_time_s=0))
    assert res["complete"] and res["calls"] >= 5
    home = Path.home()
    assert not (home / "PWNED").exists() and not (home / "PWNED2").exists()


def test_unknown_host_key_is_refused_with_the_fix(
    sshd: Sshd, tiny_onnx: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").write_text("")
    opts = _opts(sshd)
    opts = replace(
        opts, ssh_options=(opts.ssh_options[0], f"UserKnownHostsFile={tmp_path / 'empty'}")
    )
    with pytest.raises(DeviceError, match="ssh-keyscan"):
        bench_artifact(tiny_onnx, "host", sshd.url(), opts)


def test_unreachable_host_is_a_device_error(tiny_onnx: Path) -> None:
    port = _free_port()  # nothing listens there
    opts = BenchOptions(sensors=(), timeout_s=20)
    with pytest.raises(DeviceError, match=f"127.0.0.1:{port}"):
        bench_artifact(tiny_onnx, "host", f"ssh://nobody@127.0.0.1:{port}", opts)


@pytest.mark.parametrize(
    "url", ["ssh://-oProxyCommand=touch@x", "ssh://user@host;reboot", "ssh://u@h:port", "ftp://h"]
)
def test_device_urls_that_could_inject_are_rejected(url: str, tiny_onnx: Path) -> None:
    with pytest.raises(ConfigError):
        bench_artifact(tiny_onnx, "host", url, BenchOptions(sensors=()))


def test_disconnect_mid_run_keeps_what_was_measured(sshd: Sshd, tiny_onnx: Path) -> None:
    """Kill the server-side processes of the live connection while the loop runs."""
    seen = threading.Event()

    def on_event(event: dict) -> None:
        if event["event"] == "samples" and not seen.is_set():
            seen.set()
            children = subprocess.run(
                ["pgrep", "-P", str(sshd.pid)], capture_output=True, text=True
            ).stdout.split()
            for pid in children:  # the per-connection sshd processes
                os.kill(int(pid), 9)

    opts = _opts(sshd, runs=10**9, min_time_s=60, timeout_s=120)
    t0 = time.monotonic()
    with pytest.raises(DeviceDisconnected) as err:
        bench_artifact(tiny_onnx, "host", sshd.url(), opts, on_event=on_event)
    # The loop would run 60 s; ending well before that means the loss was noticed.
    assert time.monotonic() - t0 < 45, "noticed the lost connection, did not wait it out"
    assert seen.is_set()
    partial = err.value.partial
    assert partial["complete"] is False
    assert partial["calls_received"] > 0 and partial["latency"]["p50_ms"] > 0
    assert partial["artifact"] == str(tiny_onnx)
    assert "lost the device" in str(err.value)


def test_probe_over_ssh_measures_the_device_and_a_build_naming_it_reads_it(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe runs torch-free through the agent on the far side, like bench; a build
    that names the device (``--device``) takes that device's measured profile."""
    from edgecompress.probe import probe, resolve_target
    from edgecompress.targets import get_target

    monkeypatch.setenv("EDGECOMPRESS_PROFILES", str(tmp_path))
    opts = _opts(sshd)
    kw = {"python": opts.python, "ssh_options": sshd.options}
    measured = probe("android-arm64", sshd.url(), rounds=2, log=lambda _m: None, **kw)
    assert Path(measured.path).parent == tmp_path / "android-arm64"
    assert measured.evidence["s8_exact"] is not None  # the device compared the two storages
    phone = resolve_target(get_target("android-arm64"), device=sshd.url(), **kw)
    assert phone.measured and phone.measured["key"] == measured.key
    assert phone.int8_weights == measured.choices["int8_weights"]
    # Not named, or unreachable: the static profile, and the build goes on.
    assert resolve_target(get_target("android-arm64")).measured is None
    down = resolve_target(get_target("android-arm64"), device="ssh://nobody@127.0.0.1:1",
                          log=lambda _m: None, **kw)  # fmt: skip
    assert down.measured is None and down.int8_weights == "s8"


def test_a_file_made_on_the_device_comes_back_byte_for_byte(sshd: Sshd, tmp_path: Path) -> None:
    """What export_tensorrt does with the engine trtexec wrote on the board."""
    from edgecompress.runtime.transports import parse_device

    transport = parse_device(sshd.url(), ssh_options=sshd.options)
    job = tmp_path / "job"
    job.mkdir()
    blob = os.urandom(300_000) + b"\x00\n\r\xff"
    (job / "model.engine").write_bytes(blob)
    remote = transport.stage(job, timeout_s=30)
    try:
        transport.fetch(f"{remote}/model.engine", tmp_path / "back.engine", timeout_s=30)
        assert (tmp_path / "back.engine").read_bytes() == blob
        with pytest.raises(DeviceError, match=r"missing\.engine"):
            transport.fetch(f"{remote}/missing.engine", tmp_path / "no.engine", timeout_s=30)
    finally:
        transport.cleanup(remote, timeout_s=30)
