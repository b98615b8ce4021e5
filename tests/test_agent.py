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
