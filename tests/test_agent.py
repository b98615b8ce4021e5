"""The agent as a device runs it: from the copied bundle alone, in an interpreter that
cannot import torch, and in another environment's Python (the rknn-toolkit2 one: older
numpy and ONNX Runtime, no edgecompress installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgecompress.errors import ModelLoadError
from edgecompress.runtime.agent import MARK
from edgecompress.runtime.harness import BenchOptions, bench_artifact, make_bundle

BLOCK_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.path.insert(0, sys.argv[1]); "
    "sys.argv = ['agent', sys.argv[2]]; "
    "runpy.run_module('edgecompress.runtime.agent', run_name='__main__')"
)


def _run(python: str, tmp_path: Path, model: Path) -> list[dict]:
    bundle = tmp_path / "bundle"
    make_bundle(bundle)
    assert not (bundle / "edgecompress" / "runtime" / "harness.py").exists()
    assert not (bundle / "edgecompress" / "runtime" / "transports").exists()
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {"artifact": str(model), "runtime": "onnxruntime", "runs": 20, "warmup": 2,
             "min_time_s": 0.1, "sensors": ["auto"], "options": {"threads": 1}}
        )
    )  # fmt: skip
    res = subprocess.run(
        [python, "-I", "-c", BLOCK_TORCH, str(bundle), str(job)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    events = [json.loads(ln[len(MARK) :]) for ln in res.stdout.splitlines() if ln.startswith(MARK)]
    assert res.returncode == 0, res.stderr + res.stdout
    return events


def test_agent_runs_from_the_bundle_without_torch(tmp_path: Path, tiny_onnx: Path) -> None:
    events = _run(sys.executable, tmp_path, tiny_onnx)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "hello" and kinds[-1] == "result" and "loop_start" in kinds
    hello, result = events[0], events[-1]
    assert hello["agent_file"].startswith(str(tmp_path / "bundle"))
    assert result["torch_imported"] is False and result["calls"] >= 20
    assert result["first_call_ms"] > 0 and result["warmup_ms"] >= result["first_call_ms"]
    assert result["memory"]["peak_rss_bytes"] >= result["memory"]["rss_before_load_bytes"]
    streamed = sum(len(e["ms"]) for e in events if e["event"] == "samples")
    assert streamed == result["calls"], "every timed call reaches the host as it happens"


@pytest.mark.rknn
def test_agent_runs_in_another_environments_python(tmp_path: Path, tiny_onnx: Path) -> None:
    python = os.environ["EDGECOMPRESS_RKNN_PYTHON"]
    events = _run(python, tmp_path, tiny_onnx)
    hello, result = events[0], events[-1]
    import onnxruntime

    assert hello["executable"] != sys.executable
    assert result["runtime_version"] != onnxruntime.__version__  # its own ONNX Runtime
    assert result["latency"]["p50_ms"] > 0


def test_a_corrupt_model_is_reported_from_the_device(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf")
    with pytest.raises(ModelLoadError, match=r"on local: .*broken\.onnx.*cannot load"):
        bench_artifact(bad, "host", "local", BenchOptions(sensors=()))


def test_bundle_runs_on_the_pythons_boards_ship(tmp_path: Path) -> None:
    """JetPack 5 and Ubuntu 20.04 board images ship Python 3.8 (the only Python with
    TensorRT bindings on JetPack 5). No 3.8 interpreter can be installed here, so: no
    syntax or library use newer than 3.8 (vermin), and no module-level generic aliases
    outside TYPE_CHECKING (`X = list[int]` fails at import on 3.8)."""
    import ast

    bundle = tmp_path / "bundle"
    make_bundle(bundle)
    vermin = str(Path(sys.executable).with_name("vermin"))
    res = subprocess.run(
        [vermin, "-t=3.8-", "--violations", "--no-tips", str(bundle)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    generic = {"list", "dict", "tuple", "set", "type", "frozenset", "Callable", "Sequence"}
    for path in bundle.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level, not under an `if`
            value = getattr(node, "value", None)
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(value, ast.Subscript):
                name = getattr(value.value, "id", getattr(value.value, "attr", ""))
                assert name not in generic, f"{path.name}:{node.lineno}: {ast.unparse(node)}"


def test_cut_off_and_foreign_lines_never_break_the_event_stream() -> None:
    from edgecompress.runtime.harness import _parse

    log: list[str] = []
    assert _parse(MARK + '{"event": "samples", "ms": [0.1, 0.2', log) is None  # link lost
    assert _parse("I RKNN: log line without newline" + MARK + '{"event": "idle_end"}\n', log) == {
        "event": "idle_end"
    }
    assert _parse("plain runtime output \ufffd\n", log) is None
    assert len(log) == 3 and log[1] == "I RKNN: log line without newline"


def test_throughput_counts_what_a_call_really_processes(tiny_onnx: Path) -> None:
    """The model's batch is fixed at 1: asking for 8 must not multiply the throughput."""
    opts = BenchOptions(runs=50, warmup=2, min_time_s=0.2, sensors=(), batch=8)
    res = bench_artifact(tiny_onnx, "host", "local", opts)
    assert res["items_per_call"] == 1
    assert res["latency"]["throughput_per_s"] == pytest.approx(res["calls"] / res["loop_s"])
