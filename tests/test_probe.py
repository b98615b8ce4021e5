"""`edgecompress probe`: the target profile a build uses is read from timings of this
machine, not a table; the choices follow the numbers they were read from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecompress.cli import main
from edgecompress.errors import ConfigError
from edgecompress.probe import cached, probe, resolve_target
from edgecompress.probe.api import local_identity
from edgecompress.probe.measure import channel_alignment, int8_min_in_channels, weight_form
from edgecompress.targets import get_target, u8s8_saturates


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> object:
    """One real probe of this machine (about 10 s), into a folder of its own."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGECOMPRESS_PROFILES", str(tmp_path_factory.mktemp("profiles")))
    yield probe("host", rounds=3, log=lambda _m: None)
    mp.undo()


def test_the_probe_chooses_from_what_it_timed_on_this_machine(measured: object) -> None:
    m = measured
    ev = m.evidence  # type: ignore[attr-defined]
    choices = m.choices  # type: ignore[attr-defined]
    # Saturation is measured (int8 and uint8 storage of the same values run through the
    # same graph): on x86 it must agree with the instruction set (no VNNI: it saturates).
    assert ev["s8_exact"] is (not u8s8_saturates())
    if not ev["s8_exact"]:
        assert choices["int8_weights"] != "s8"  # never an inexact form
    forms = {f: ev["block_ms"][f"int8_{f}"] for f in ("s8", "u8", "s7")}
    assert choices["int8_weights"] == weight_form(forms, ev["s8_exact"])
    # The alignment is the one its own sweep gives, of the precision that won.
    sweep = ev["alignment"][ev["alignment_from"]]["ms_by_width"]
    assert (
        choices["channel_alignment"] == channel_alignment({int(w): t for w, t in sweep.items()})[0]
    )
    assert ev["alignment_from"] == ("int8" if choices["int8_speedup"] > 1 else "fp32")
    assert len(sweep) == 41 and all(t > 0 for t in sweep.values())
    stem = {p: {int(c): t for c, t in v.items()} for p, v in ev["stem_ms_by_in_channels"].items()}
    assert choices["int8_min_in_channels"] == int8_min_in_channels(stem["fp32"], stem["int8"])


def test_a_build_here_uses_the_measured_profile_and_says_where_it_came_from(
    measured: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = measured
    monkeypatch.setenv("EDGECOMPRESS_PROFILES", str(Path(m.path).parent.parent))  # type: ignore[attr-defined]
    found = cached("host", local_identity(1))
    assert found is not None and (found.choices, found.path) == (m.choices, m.path)  # type: ignore[attr-defined]
    host = resolve_target(get_target("host"))
    assert host.channel_alignment == m.choices["channel_alignment"]  # type: ignore[attr-defined]
    assert host.int8_weights == m.choices["int8_weights"]  # type: ignore[attr-defined]
    assert host.measured and host.measured["path"] == m.path  # type: ignore[attr-defined]
    assert "measured by `edgecompress probe`" in host.source
    # Another thread count is another machine as far as kernels go: not this profile.
    assert cached("host", local_identity(2)) is None


def test_without_a_measurement_the_static_profile_is_used_and_auto_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECOMPRESS_PROFILES", str(tmp_path))  # no probe made there
    host = resolve_target(get_target("host"))
    assert host.measured is None and host.channel_alignment == get_target("host").channel_alignment
    assert host.int8_weights == ("s7" if u8s8_saturates() else "s8")
    assert resolve_target(get_target("android-arm64")).int8_weights == "s8"  # a phone's Arm


def test_probe_cli_prints_the_choices_with_their_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGECOMPRESS_PROFILES", str(tmp_path))
    assert main(["probe", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert Path(data["path"]).is_file() and Path(data["path"]).parent == tmp_path / "host"
    assert set(data["choices"]) == {
        "channel_alignment",
        "int8_weights",
        "int8_speedup",
        "level",
        "int8_min_in_channels",
    }


@pytest.mark.parametrize(
    ("target", "device", "says"),
    [
        ("rk3588", "local", "files run on rknn"),
        ("jetson-orin", "local", "files run on tensorrt"),
        ("android-arm64", "local", "--device ssh://user@board or adb://SERIAL"),
    ],
)
def test_a_target_the_probe_cannot_time_here_is_refused_with_what_to_do(
    target: str, device: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=says.replace(".", r"\.")):
        probe(target, device, log=lambda _m: None)


def _steps(block: int, widths: range = range(24, 65)) -> dict[int, float]:
    """A runtime whose convolutions pad channels to ``block`` (cost ~ padded width^2),
    widths that are no multiple of 4 taking a slow path, as ONNX Runtime's NCHWc does."""
    padded = {w: -(-w // block) * block for w in widths}
    return {w: padded[w] ** 2 * (1.0 if w % 4 == 0 else 1.3) for w in widths}


@pytest.mark.parametrize("block", [8, 16])
def test_alignment_is_the_block_the_timings_step_at(block: int) -> None:
    assert channel_alignment(_steps(block))[0] == block


def test_a_runtime_that_rewards_no_rounding_gets_alignment_1() -> None:
    assert channel_alignment({w: float(w * w) for w in range(24, 65)})[0] == 1


@pytest.mark.parametrize(
    ("ms", "exact", "form"),
    [
        ({"s8": 0.70, "u8": 1.02, "s7": 0.71}, False, "s7"),  # AVX2: s8 saturates
        ({"s8": 0.50, "u8": 0.90, "s7": 0.51}, True, "s8"),  # VNNI: 8 bits, exact and fast
        ({"s8": 0.70, "u8": 0.72, "s7": 0.71}, False, "u8"),  # u8 as fast: keep 8 bits
        ({"s8": 0.70, "u8": 0.70, "s7": 0.50}, True, "s7"),  # 7 bits much faster
    ],
)
def test_weight_storage_is_the_fastest_exact_form(ms: dict, exact: bool, form: str) -> None:
    assert weight_form(ms, exact) == form


def test_int8_starts_at_the_input_channels_from_which_it_wins() -> None:
    fp32 = {1: 0.021, 3: 0.033, 4: 0.039, 8: 0.053, 16: 0.091}
    assert int8_min_in_channels(fp32, {1: 0.05, 3: 0.054, 4: 0.042, 8: 0.05, 16: 0.07}) == 8
    assert int8_min_in_channels(fp32, {c: t / 2 for c, t in fp32.items()}) == 1
    assert int8_min_in_channels(fp32, {c: t * 2 for c, t in fp32.items()}) == 17  # never
