"""The worked example in docs/API.md runs as written (a user's own training script that
prunes, distills and quantizes a torchvision model through the public API), and the
public API imports without torch where it must."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).parent.parent / "docs" / "API.md"


def test_the_worked_example_in_the_api_doc_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/API.md should hold one worked example"
    ns: dict = {"__name__": "api_doc"}
    exec(compile(blocks[0], str(DOC), "exec"), ns)
    plan, original, quantized = ns["plan"], ns["original"], ns["quantized"]
    assert plan.macs[1] <= 0.55 * plan.macs[0], "half the MACs were pruned"
    assert original["top1"] > 80, "the user's training worked"
    assert quantized["top1"] >= original["top1"] - 5.0, (original, quantized)
    art = ns["artifacts"][0]
    assert art.precision == "int8" and art.path.exists() and ns["latency"] > 0


def _run_blocked(code: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    guard = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    return subprocess.run(
        [sys.executable, "-c", guard + code], capture_output=True, text=True, timeout=120
    )


def test_recipes_and_choices_parse_with_torch_blocked() -> None:
    code = (
        "import edgecompress as ec\n"
        "from edgecompress.recipe import Recipe, default_recipe\n"
        "from edgecompress.choices import CRITERIA, LOSSES\n"
        "r = default_recipe('rk3588')\n"
        "Recipe.from_dict({'target': 'host', 'stages': [{'name': 'prune', 'criterion': 'taylor'},"
        " {'name': 'distill', 'train': {'losses': [{'name': 'kd'}]}}, 'quantize']})\n"
        "assert ec.FitConfig(epochs=2).epochs == 2\n"
        "print('ok')\n"
    )
    res = _run_blocked(code, ("torch", "torchvision", "torch_pruning", "onnxruntime"))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_runtime_imports_with_only_numpy() -> None:
    code = (
        "import edgecompress.runtime.api, edgecompress.runtime.agent, "
        "edgecompress.runtime.harness, edgecompress.runtime.detect_stream, "
        "edgecompress.runtime.stream_bench\nprint('ok')\n"
    )
    blocked = ("torch", "torchvision", "pydantic", "onnx", "yaml", "cv2", "tqdm")
    res = _run_blocked(code, blocked)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_a_misspelt_choice_suggests_the_right_one() -> None:
    import pytest

    from edgecompress.errors import ConfigError
    from edgecompress.recipe import Recipe

    with pytest.raises(ConfigError, match="did you mean 'taylor'"):
        Recipe.from_dict({"target": "host", "stages": [{"name": "prune", "criterion": "taylr"}]})
    with pytest.raises(ConfigError, match="did you mean 'kd'"):
        Recipe.from_dict(
            {
                "target": "host",
                "stages": [{"name": "distill", "train": {"losses": [{"name": "kdd"}]}}],
            }
        )


def test_cli_stages_and_benchmarks_import_nothing_private() -> None:
    """They go through the public API: no ``from edgecompress.x import _name``."""
    import ast

    root = Path(__file__).parent.parent
    files = [root / "edgecompress" / "cli.py", *(root / "edgecompress" / "stages").glob("*.py")]
    files += list((root / "benchmarks").glob("*.py"))
    private = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgecompress"):
                private += [
                    f"{path.name}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and a.name != "__version__"
                ]
    assert not private, private


def test_the_agent_bundle_holds_only_what_the_agent_runs(tmp_path: Path) -> None:
    from edgecompress.runtime.harness import make_bundle

    make_bundle(tmp_path)
    shipped = {p.relative_to(tmp_path / "edgecompress").as_posix() for p in tmp_path.rglob("*.py")}
    assert "runtime/agent.py" in shipped and "runtime/backends/onnx.py" in shipped
    host_only = {"runtime/harness.py", "runtime/api.py", "runtime/energy_model.py"}
    assert not shipped & host_only
    assert not [p for p in shipped if p.startswith("runtime/transports/")]
