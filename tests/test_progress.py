"""Progress: a tqdm bar with ETA on a terminal, plain periodic lines in CI logs."""

from __future__ import annotations

import io
import re
import sys
import time

import pytest

from edgecompress.progress import elapsed, progress
from edgecompress.runtime.harness import ProgressLines


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_with_eta_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with progress(range(4), total=4, desc="prune: bisecting", interval_s=0) as bar:
        seen = []
        for i in bar:
            seen.append(i)
            bar.set_postfix_str(f"try {i}")
    assert seen == [0, 1, 2, 3]
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines) and "\x1b" not in "".join(lines)  # no bar redraws
    assert re.fullmatch(
        r"prune: bisecting: 2/4 \(50%\), \d+ s elapsed, ETA \d+ s \(try 1\)", lines[1]
    )
    assert lines[-1].startswith("prune: bisecting: finished 4 in ")
    assert len(lines) == 5


def test_plain_lines_are_periodic_and_a_short_loop_prints_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for _ in progress(range(100), total=100, desc="quick"):  # default: a line per 10 s
        pass
    with progress(range(3), total=3, desc="off", enabled=False, interval_s=0) as bar:
        list(bar)
    assert capsys.readouterr().err == ""


def test_a_bar_with_eta_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with progress(range(5), total=5, desc="prune: bisecting") as bar:
        for _ in bar:
            time.sleep(0.06)  # past tqdm's 0.1 s redraw interval
    out = term.getvalue()
    assert "\r" in out and "prune: bisecting" in out
    assert re.search(r"\d+/5 \[\d\d:\d\d<\d\d:\d\d", out)  # count, elapsed < ETA: tqdm's bar


def test_a_short_bisection_shows_a_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from edgecompress.measure import count_macs
    from edgecompress.prune.engine import PruneSettings, prune_to_budget
    from edgecompress.testing.models import tiny_cnn

    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    x = torch.randn(1, 3, 32, 32)
    macs = lambda m: count_macs(m, x)[0]  # noqa: E731
    _, _, frac = prune_to_budget(tiny_cnn().eval(), x, 0.6, macs, PruneSettings(), iters=4)
    assert frac < 1
    assert "prune: bisecting to keep 0.600" in term.getvalue()
    assert re.search(r"ratio [\d.]+ keeps [\d.]+", term.getvalue())
    term.truncate(0)
    prune_to_budget(tiny_cnn().eval(), x, 0.6, macs, PruneSettings(), iters=2, progress=False)
    assert term.getvalue() == ""


def test_elapsed_lines_while_a_step_without_counts_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with elapsed("rknn: converting m.onnx for rk3588", interval_s=0.05):
        time.sleep(0.3)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(
        re.fullmatch(r"rknn: converting m\.onnx for rk3588 \(\d+ s elapsed\)", line)
        for line in lines
    )
    with elapsed("quiet", enabled=False, interval_s=0.01):
        time.sleep(0.05)
    assert capsys.readouterr().err == ""


def test_bench_progress_lines_count_timed_runs_and_pass_events_on(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ProgressLines, "interval_s", 0.0)
    seen: list[str] = []
    lines = ProgressLines("bench: m.onnx on local", lambda e: seen.append(e["event"]))
    for event in (
        {"event": "loop_start"},
        {"event": "samples", "ms": [0.1] * 300},
        {"event": "samples", "ms": [0.1] * 200},
        {"event": "loop_end"},
    ):
        lines(event)
    assert seen == ["loop_start", "samples", "samples", "loop_end"]
    err = capsys.readouterr().err.splitlines()
    assert [re.sub(r"\d+ s elapsed", "T", line) for line in err] == [
        "bench: m.onnx on local: 300 timed runs, T",
        "bench: m.onnx on local: 500 timed runs, T",
    ]


def test_a_bisection_in_a_log_ends_with_the_try_it_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its closing line said the last try ("ratio 0.900 keeps 0.919") for a result that
    kept 0.51: it names the fraction of the try it returns."""
    import functools

    import torch

    from edgecompress.measure import count_macs
    from edgecompress.prune import engine
    from edgecompress.testing.models import tiny_cnn

    monkeypatch.setattr(engine, "show", functools.partial(progress, interval_s=0))
    x = torch.randn(1, 3, 32, 32)
    macs = lambda m: count_macs(m, x)[0]  # noqa: E731
    _, _, frac = engine.prune_to_budget(tiny_cnn().eval(), x, 0.6, macs, engine.PruneSettings(),
                                        iters=4, tol=0.0)  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("prune: bisecting to keep 0.600: finished")
    assert last.endswith(f"(chose a try that keeps {frac:.3f})")
