"""The command line. Each command parses its options, builds a config and calls one
library function; no logic lives here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgecompress.errors import EdgeCompressError


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecompress", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="compress, export, verify and benchmark a model for a target")
    b.add_argument(
        "model",
        type=Path,
        help="TorchScript, .pt2, state_dict (+--arch) or pickle (+--trust-pickle)",
    )
    b.add_argument(
        "--target", help="device profile (see `edgecompress targets`); overrides the recipe"
    )
    b.add_argument(
        "--data",
        type=Path,
        required=True,
        help="image folder: DIR/<class>/<image> or DIR/{train,val}/<class>/",
    )
    b.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    b.add_argument("--recipe", type=Path, help="recipe YAML (default: the target's default stages)")
    b.add_argument("--arch", help="module:factory or torchvision:NAME, for a state_dict")
    b.add_argument(
        "--trust-pickle", action="store_true", help="allow loading a pickled nn.Module (runs code)"
    )
    b.add_argument("--resume", action="store_true", help="continue after the last finished stage")
    b.add_argument(
        "--force", action="store_true", help="start over in an output folder that holds a build"
    )
    b.add_argument("--rknn-python", help="interpreter of an rknn-toolkit2 environment")
    b.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime threads for evaluation and bench"
    )
    b.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    b.add_argument("--resize", choices=["stretch", "letterbox", "center_crop"])
    b.add_argument("--mean", type=float, nargs=3, help="per-channel mean in [0, 1] units")
    b.add_argument("--std", type=float, nargs=3, help="per-channel std in [0, 1] units")
    b.add_argument("--bgr", action="store_true", help="the model expects BGR channel order")
    b.add_argument("--calibration-images", type=int)
    b.add_argument("--eval-images", type=int, help="cap on validation images")
    b.add_argument("--quiet", action="store_true")

    sub.add_parser("targets", help="list the device profiles")

    c = sub.add_parser("check", help="exit 1 when a report breaks a budget (for CI)")
    c.add_argument("report", type=Path)
    c.add_argument("--max-accuracy-drop", type=float, help="top-1 points below the reference")
    c.add_argument("--max-latency-ms", type=float, help="p50 of every measured artifact")
    c.add_argument("--max-size-mb", type=float, help="size of every artifact")

    s = sub.add_parser("setup", help="create a toolchain environment")
    s.add_argument("toolchain", choices=["rknn"])
    s.add_argument("--dest", type=Path, help="where to create it (default: the cache)")
    s.add_argument("--force", action="store_true", help="recreate even if it works")

    e = sub.add_parser(
        "example", help="prepare the built-in digits example (images + trained model)"
    )
    e.add_argument("--epochs", type=int, default=15)

    m = sub.add_parser("summary", help="print one table from one or more report.json files")
    m.add_argument("reports", type=Path, nargs="+")

    r = sub.add_parser("bench", help="benchmark an ONNX model on this machine (ONNX Runtime)")
    r.add_argument("artifact", type=Path)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--runs", type=int, default=200)
    r.add_argument("--warmup", type=int, default=20)
    return p


def cmd_build(a: argparse.Namespace) -> int:
    import yaml

    from edgecompress.pipeline import BuildRequest, run_build
    from edgecompress.recipe import Recipe
    from edgecompress.report.markdown import summary_rows, table
    from edgecompress.stages.base import BuildOptions

    raw: dict[str, Any] = {}
    if a.recipe:
        from edgecompress.recipe import load_recipe

        load_recipe(a.recipe)  # validate the file on its own first: errors name it
        raw = yaml.safe_load(a.recipe.read_text()) or {}
    if a.target:
        raw["target"] = a.target
    pre = dict(raw.get("preprocess") or {})
    for key, val in (
        ("input_size", a.input_size),
        ("resize", a.resize),
        ("mean", a.mean),
        ("std", a.std),
    ):
        if val is not None:
            pre[key] = val
    if a.bgr:
        pre["channel_order"] = "BGR"
    raw["preprocess"] = pre
    data = dict(raw.get("data") or {})
    for key, val in (("calibration_images", a.calibration_images), ("eval_images", a.eval_images)):
        if val is not None:
            data[key] = val
    raw["data"] = data
    recipe = Recipe.from_dict(raw, str(a.recipe or "command line"))
    req = BuildRequest(a.model, a.data, a.out, recipe, a.arch, a.trust_pickle, a.resume, a.force)
    log = (lambda _m: None) if a.quiet else (lambda m: print(m, file=sys.stderr))
    report = run_build(req, BuildOptions(a.rknn_python, a.threads, not a.quiet), log)
    print(table(summary_rows(report.data)))
    print(f"report: {a.out / 'report.json'}")
    return 0


def cmd_targets(_a: argparse.Namespace) -> int:
    from edgecompress.targets import TARGETS

    rows = [
        [
            t.name,
            "/".join(p.value for p in t.precisions),
            str(t.channel_alignment),
            "+".join(t.exporters),
            t.runtime,
            f"{t.peak_ops_per_s / 1e12:g} TOPS",
            t.description,
        ]
        for t in TARGETS.values()
    ]
    from edgecompress.report.markdown import table

    print(table(rows, ["target", "precisions", "align", "artifacts", "runtime", "peak", "device"]))
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from edgecompress.report.budget import Budgets, check_budgets
    from edgecompress.report.schema import load_report

    budgets = Budgets(a.max_accuracy_drop, a.max_latency_ms, a.max_size_mb)
    if budgets == Budgets():
        raise EdgeCompressError(
            "check: give at least one budget (--max-accuracy-drop, --max-latency-ms, --max-size-mb)"
        )
    broken = check_budgets(load_report(a.report), budgets)
    for msg in broken:
        print(f"BROKEN {msg}")
    print(f"{a.report}: {'budgets broken' if broken else 'all budgets kept'}")
    return 1 if broken else 0


def cmd_setup(a: argparse.Namespace) -> int:
    from edgecompress.exporters.rknn_env import setup_rknn_env

    python = setup_rknn_env(a.dest, force=a.force)
    print(f"rknn-toolkit2 environment ready: {python}")
    print(f"(used automatically; or pass --rknn-python {python})")
    return 0


def cmd_example(a: argparse.Namespace) -> int:
    from edgecompress.example import ARCH, example_info, prepare_digits_example

    model, data = prepare_digits_example(epochs=a.epochs)
    print(
        json.dumps(
            {
                "model": str(model),
                "data": str(data),
                "arch": ARCH,
                "val_top1": example_info().get("val_top1"),
            },
            indent=2,
        )
    )
    return 0


def cmd_summary(a: argparse.Namespace) -> int:
    from edgecompress.report.markdown import HEADER, summary_rows, table
    from edgecompress.report.schema import load_report

    rows = []
    for path in a.reports:
        data = load_report(path)
        for row in summary_rows(data):
            rows.append([data["target"]["name"], *row])
    print(table(rows, ["target", *HEADER]))
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from edgecompress.runtime.onnxrt import bench_onnx

    if a.artifact.suffix != ".onnx":
        raise EdgeCompressError(
            f"{a.artifact}: only ONNX files can be benchmarked on this machine today"
        )
    print(
        json.dumps(
            bench_onnx(a.artifact, threads=a.threads, runs=a.runs, warmup=a.warmup), indent=2
        )
    )
    return 0


COMMANDS = {
    "build": cmd_build,
    "targets": cmd_targets,
    "check": cmd_check,
    "setup": cmd_setup,
    "example": cmd_example,
    "summary": cmd_summary,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EdgeCompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished stages are kept (rerun with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
