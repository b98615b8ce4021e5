"""The command line. Each command parses its options, builds a config and calls one
library function; no logic lives here."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

from edgecompress.errors import EdgeCompressError, Stopped


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
    b.add_argument("--recipe", type=Path, help="recipe YAML (default: the target's whole pipeline)")
    b.add_argument(
        "--stages",
        help="comma-separated stage names with their default options, e.g. "
        "evaluate,export_onnx,bench (overrides the recipe's stages)",
    )
    b.add_argument(
        "--keep", type=float, help="fraction of the MACs pruning keeps (e.g. 0.5); 0 < keep < 1"
    )
    b.add_argument(
        "--speedup",
        type=float,
        help="goal: p50 latency of the deployed artifact this many times below the original's "
        "(ONNX Runtime on this machine); prunes more until met",
    )
    b.add_argument(
        "--max-accuracy-drop",
        type=float,
        help="goal: test top-1 points the deployed artifact may lose; backs off (prunes less, "
        "recovers longer) until met, and exits 1 if no attempt meets every goal",
    )
    b.add_argument(
        "--seed",
        type=int,
        help="seed every training step (recovery, distillation, QAT); the data split and "
        "calibration pick stay on data.seed",
    )
    b.add_argument("--attempts", type=int, default=3, help="most builds tried to meet the goals")
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
    for flag in ("mean", "std"):
        b.add_argument(
            f"--{flag}",
            type=float,
            nargs="+",
            metavar=flag.upper(),
            help=f"per-channel {flag} in [0, 1] units: R G B, or one value for a greyscale "
            "model (images are read as grey when its first layer takes one channel)",
        )
    b.add_argument("--bgr", action="store_true", help="the model expects BGR channel order")
    b.add_argument("--calibration-images", type=int)
    b.add_argument("--eval-images", type=int, help="cap on validation images")
    b.add_argument(
        "--classes",
        metavar="FILE_OR_COMMA_LIST",
        help="the class each model output is, in output order: a text file with one name per "
        "line or name0,name1,...; each class folder is scored as the output of its name "
        "(default: output i is the i-th class folder in sorted order)",
    )
    b.add_argument(
        "--device",
        action="append",
        default=[],
        help="also benchmark every artifact there: ssh://user@host[:port] or adb://SERIAL "
        "(repeatable); unreachable devices are reported, not fatal",
    )
    b.add_argument("--device-python", help="the devices' interpreter (default python3)")
    b.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument(
        "--probe",
        action="store_true",
        help="measure this machine first (`edgecompress probe`) if it has no measured profile; "
        "without it a cached measurement is used where one exists, else the static profile",
    )
    b.add_argument("--quiet", action="store_true")

    sub.add_parser("targets", help="list the device profiles")

    pr = sub.add_parser(
        "probe",
        help="measure a machine (channel alignment, INT8 weight storage, graph optimisation) "
        "and cache it as the target's profile for builds there",
    )
    pr.add_argument("--target", default="host", help="an ONNX Runtime CPU target (host, ...)")
    pr.add_argument(
        "--device", default="local", help="local (this machine), ssh://user@host or adb://SERIAL"
    )
    pr.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads, as in bench")
    pr.add_argument("--device-python", help="the device's interpreter (default python3)")
    pr.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE")
    pr.add_argument("--json", action="store_true", help="print the measured profile as JSON")

    c = sub.add_parser(
        "check",
        help="gate a report on a budget (for CI): exit 0 all kept, 1 one broken, 2 bad input",
    )
    c.add_argument("report", type=Path)
    c.add_argument("--budget", type=Path, help="budget YAML (limits per target)")
    c.add_argument(
        "--baseline", type=Path, help="the previous release's report.json (relative budgets)"
    )
    c.add_argument("--junit", type=Path, help="write JUnit XML here: one test case per budget")
    c.add_argument("--max-accuracy-drop", type=float, help="top-1 points below the reference")
    c.add_argument("--max-latency-ms", type=float, help="p50 of every measured artifact")
    c.add_argument("--max-size-mb", type=float, help="size of every artifact")

    cmp = sub.add_parser(
        "compare", help="what got better and worse between two releases' report.json"
    )
    cmp.add_argument("old", type=Path, help="the previous release's report.json")
    cmp.add_argument("new", type=Path, help="this release's report.json")
    cmp.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit 1 when something got worse beyond the measured noise",
    )

    s = sub.add_parser("setup", help="create a toolchain environment")
    s.add_argument("toolchain", choices=["rknn"])
    s.add_argument("--dest", type=Path, help="where to create it (default: the cache)")
    s.add_argument("--force", action="store_true", help="recreate even if it works")

    e = sub.add_parser(
        "example",
        help="prepare the built-in digits example (images + trained model), or write "
        "Fashion-MNIST as an image folder",
    )
    e.add_argument(
        "--dataset",
        choices=["digits", "fashion-mnist"],
        default="digits",
        help="digits: images + trained model (default); fashion-mnist: the benchmark's "
        "train/val/test image folder, from Debian's dataset-fashion-mnist package",
    )
    e.add_argument("--epochs", type=int, help="digits only: training epochs (default 15)")
    e.add_argument(
        "--source",
        type=Path,
        help="fashion-mnist only: folder with the idx files, or the root of an extracted "
        "package (default /usr/share/datasets/fashion-mnist)",
    )

    m = sub.add_parser("summary", help="print one table from one or more report.json files")
    m.add_argument("reports", type=Path, nargs="+")

    _bench_parser(sub)
    _convert_parser(sub)
    _energy_parser(sub)
    _detect_parser(sub)
    return p


def _model_input_size(model: Path, quiet: bool) -> tuple[int, int]:
    """The input size a build without --input-size (or a recipe's) uses: the one the model
    file records; 224x224 for a state_dict or pickle, whose architecture is code (the
    size torchvision's models are made for); else an error naming --input-size."""
    from edgecompress.model_io import recorded_input_size

    size, fmt = recorded_input_size(model)
    if size is not None:
        if not quiet:
            print(f"input size {size[0]}x{size[1]}, read from {model.name}", file=sys.stderr)
        return size
    if fmt in ("onnx", "torchscript", "pt2"):
        why = {"onnx": "its input's height and width are symbolic",
               "torchscript": "a TorchScript file does not keep the shape it was traced at",
               "pt2": "its example input is not one image batch"}[fmt]  # fmt: skip
        raise EdgeCompressError(
            f"{model}: which input size to build at? {why}: pass --input-size H W (the size "
            "the model was trained at), or set preprocess.input_size in the recipe"
        )
    return (224, 224)


def cmd_build(a: argparse.Namespace) -> int:
    import yaml

    from edgecompress.api import build
    from edgecompress.goals import goal_lines
    from edgecompress.recipe import Recipe
    from edgecompress.report.markdown import table
    from edgecompress.report.summary import summary_table
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
    if "input_size" not in pre:
        pre["input_size"] = _model_input_size(a.model, a.quiet)
    raw["preprocess"] = pre
    data = dict(raw.get("data") or {})
    for key, val in (("calibration_images", a.calibration_images), ("eval_images", a.eval_images)):
        if val is not None:
            data[key] = val
    if a.classes is not None:
        from edgecompress.calibration.bundle import read_classes

        data["classes"] = read_classes(a.classes)
    raw["data"] = data
    if a.stages:
        raw["stages"] = [n.strip() for n in a.stages.split(",") if n.strip()]
    recipe = Recipe.from_dict(raw, str(a.recipe or "command line"))
    if a.keep is not None:
        if not 0 < a.keep < 1:
            raise EdgeCompressError(
                f"--keep {a.keep}: give the fraction of MACs to keep, 0 < k < 1"
            )
        if not any(s.name == "prune" for s in recipe.stages):
            raise EdgeCompressError("--keep: the recipe has no prune stage to apply it to")
        recipe = recipe.with_keep(a.keep)
    if a.seed is not None:
        recipe = recipe.with_seed(a.seed)
    log = (lambda _m: None) if a.quiet else (lambda m: print(m, file=sys.stderr))
    options = BuildOptions(
        a.rknn_python,
        a.threads,
        not a.quiet,
        devices=tuple(a.device),
        device_python=a.device_python,
        ssh_options=tuple(a.ssh_option),
        probe=a.probe,
    )
    report = build(
        a.model, a.data, recipe=recipe, out=a.out, arch=a.arch, trust_pickle=a.trust_pickle,
        force=a.force, resume=a.resume, speedup=a.speedup, max_accuracy_drop=a.max_accuracy_drop,
        attempts=a.attempts, options=options, log=log,
    )  # fmt: skip
    met = (report.data.get("goals") or {}).get("met", True)
    header, rows = summary_table(report.data)
    print(table(rows, header))
    for note in report.data.get("summary", {}).get("notes", []):
        print(f"note: {note}")
    for line in goal_lines(report.data):
        print(line)
    print(f"report: {a.out / 'report.json'}")
    return 0 if met else 1


def cmd_probe(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from edgecompress.probe import probe
    from edgecompress.probe.measure import describe

    measured = probe(
        a.target,
        a.device,
        threads=a.threads,
        python=a.device_python,
        ssh_options=tuple(a.ssh_option),
        log=lambda m: print(m, file=sys.stderr),
    )
    if a.json:
        print(json.dumps(asdict(measured), indent=2))
        return 0
    who = measured.identity
    print(f"{a.target} on {a.device}: {who['cpu']} ({', '.join(who['isa']) or 'no ISA flags'}); "
          f"{who['runtime']}, {who['threads']} thread(s); {measured.seconds:.0f} s")  # fmt: skip
    for line in describe(measured.choices, measured.evidence):
        print(line)
    print(f"profile: {measured.path}")
    return 0


def cmd_targets(_a: argparse.Namespace) -> int:
    from edgecompress.report.markdown import table
    from edgecompress.targets import TARGETS

    rows = [
        [
            t.name,
            "/".join(p.value for p in t.precisions),
            str(t.channel_alignment),
            "+".join(t.exporters),
            t.runtime,
            f"{t.peak_ops_per_s / 1e12:g} TOPS",
            f"keep {t.defaults.keep:g} MACs, {t.defaults.distill_epochs} recovery epochs, "
            f"QAT {'->'.join(str(b) for b in t.defaults.ladder)} bits",
            t.description,
        ]
        for t in TARGETS.values()
    ]
    header = ["target", "precisions", "align", "artifacts", "runtime", "peak"]
    print(table(rows, [*header, "default build", "device"]))
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from edgecompress.report.budget import check_report, results_table
    from edgecompress.report.budget_config import load_budget, parse_limits
    from edgecompress.report.schema import load_report

    report = load_report(a.report)
    baseline = load_report(a.baseline) if a.baseline else None
    target = str((report.get("target") or {}).get("name", "?"))
    flags = {
        k: v
        for k, v in (
            ("max_accuracy_drop", a.max_accuracy_drop),
            ("max_latency_ms", a.max_latency_ms),
            ("max_size_mb", a.max_size_mb),
        )
        if v is not None
    }
    if a.budget is None and not flags:
        raise EdgeCompressError(
            "check: give a budget: --budget budget.yaml, or --max-accuracy-drop, "
            "--max-latency-ms, --max-size-mb"
        )
    budget = load_budget(a.budget) if a.budget else None
    inline = parse_limits(flags, "check flags")  # they override the file
    limits = budget.for_target(target, inline) if budget else inline
    found = check_report(report, limits, baseline, keep_going=True)
    results, errors = [r for r in found if not r.error], [r for r in found if r.error]
    print(results_table(results))
    broken = [r for r in results if r.kept is False]
    for r in broken:
        print(f"BROKEN {r.message}")
    if a.junit:
        from edgecompress.report.junit import write_junit

        model = budget.model if budget and budget.model else target
        props = {"report": str(a.report), "target": target, "budget": str(a.budget or "flags")}
        if a.baseline:
            props["baseline"] = str(a.baseline)
        write_junit(a.junit, results + errors, f"edgecompress budget: {model} on {target}", props)
    if errors:  # after the JUnit file: CI shows which budget had nothing to check
        raise EdgeCompressError("; ".join(r.reason for r in errors))
    kept = sum(r.kept is True for r in results)
    print(
        f"{a.report}: {'budgets broken' if broken else 'all budgets kept'} "
        f"({kept} kept, {len(broken)} broken, {len(results) - kept - len(broken)} skipped)"
    )
    return 1 if broken else 0


def cmd_compare(a: argparse.Namespace) -> int:
    from edgecompress.report.compare import changes_table, compare_reports
    from edgecompress.report.schema import load_report

    changes = compare_reports(load_report(a.old), load_report(a.new))
    print(changes_table(changes))
    counts = {v: sum(c.verdict == v for c in changes) for v in ("worse", "better", "noise")}
    print(", ".join(f"{n} {v}" for v, n in counts.items()) + f" ({a.old} -> {a.new})")
    return 1 if a.fail_on_regression and counts["worse"] else 0


def cmd_setup(a: argparse.Namespace) -> int:
    from edgecompress.exporters.rknn_env import setup_rknn_env

    python = setup_rknn_env(a.dest, force=a.force)
    print(f"rknn-toolkit2 environment ready: {python}")
    print(f"(used automatically; or pass --rknn-python {python})")
    return 0


def cmd_example(a: argparse.Namespace) -> int:
    from edgecompress.errors import ConfigError

    if a.dataset == "fashion-mnist":
        if a.epochs is not None:
            raise ConfigError(
                "--epochs applies to the digits example only; --dataset fashion-mnist writes "
                "the image folder and trains nothing (make bench trains its models)"
            )
        from edgecompress.calibration.fashion_mnist import (
            ensure_fashion_mnist_folder,
            marker_info,
        )

        data = ensure_fashion_mnist_folder(a.source)
        info = marker_info(data) or {}
        print(json.dumps({"data": str(data), "splits": info.get("splits")}, indent=2))
        return 0
    if a.source is not None:
        raise ConfigError("--source applies to --dataset fashion-mnist only")
    from edgecompress.example import ARCH, example_info, prepare_digits_example

    model, data = prepare_digits_example(epochs=15 if a.epochs is None else a.epochs)
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
    from edgecompress.report.markdown import table
    from edgecompress.report.schema import load_report
    from edgecompress.report.summary import summarize, summary_table

    header: list[str] = []
    rows, notes = [], []
    for path in a.reports:
        data = load_report(path)
        header, body = summary_table(data)
        rows += [[data["target"]["name"], *row] for row in body]
        found = (data.get("summary") or summarize(data))["notes"]
        notes += [f"note ({data['target']['name']}): {n}" for n in found]
    print(table(rows, ["target", *header]))
    for note in notes:
        print(note)
    return 0


def _bench_parser(sub: Any) -> None:
    r = sub.add_parser(
        "bench",
        help="latency, memory and energy of an ONNX, RKNN or TensorRT file on a device",
    )
    r.add_argument("artifact", type=Path, help=".onnx, .rknn, .engine/.plan (any producer)")
    r.add_argument("--target", help="profile for the energy estimate (default: by suffix)")
    r.add_argument(
        "--device",
        action="append",
        default=[],
        help="local (default), ssh://user@host[:port] or adb://SERIAL; repeatable",
    )
    r.add_argument("--runs", type=int, default=200, help="at least this many timed calls")
    r.add_argument("--warmup", type=int, default=20)
    r.add_argument("--min-time", type=float, default=1.0, help="and at least this many seconds")
    r.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    r.add_argument("--batch", type=int, default=1, help="first dimension of dynamic inputs")
    r.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="[NAME=]1x3x640x640",
        help="ONNX: the shape of a dynamic input (NAME= needed when it has several); RKNN, "
        "which cannot tell: the input's shape (uint8 NHWC, e.g. 1x224x224x3); repeatable",
    )
    r.add_argument("--input-dtype", default="uint8")
    r.add_argument("--core-mask", default="auto", help="RKNN NPU cores: auto, 0, 1, 2, 0_1, 0_1_2")
    r.add_argument(
        "--npu-cores",
        "--contexts",
        dest="npu_cores",
        type=int,
        default=1,
        help="RKNN: one runtime (NPU context) per core, driven in parallel",
    )
    r.add_argument(
        "--sensor",
        action="append",
        default=[],
        help="power sensor on the device: auto (default), none, rapl, hwmon, iio, battery, "
        "tegrastats, command:PROGRAM, csv:FILE; repeatable",
    )
    r.add_argument(
        "--host-sensor", action="append", default=[], help="a meter read on this machine"
    )
    r.add_argument("--idle-s", type=float, default=1.0, help="idle window for the baseline")
    r.add_argument("--python", help="the device's interpreter (default python3; local: this one)")
    r.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--timeout", type=float, default=600.0, help="seconds per device")
    r.add_argument("--onnx", type=Path, help="the ONNX graph behind an RKNN/TensorRT file")
    r.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="for the estimate")
    r.add_argument("--json", type=Path, help="write the results here (partial ones too)")
    st = r.add_argument_group(
        "detection stream",
        "--stream DIR runs a YOLOv8-style detector .rknn on real images instead of timing "
        "one call: read + letterbox -> --contexts NPU contexts -> NumPy post-processing, "
        "frames in flight; reports frames/s and per-stage latency",
    )
    st.add_argument("--stream", type=Path, metavar="IMAGES", help="folder of images (jpg, png)")
    st.add_argument("--frames", type=int, default=200, help="frames to run (images cycled)")
    st.add_argument(
        "--in-flight", type=int, default=0, help="most frames in flight (0: two per context)"
    )
    st.add_argument("--conf", type=float, default=0.25, help="score threshold")
    st.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    st.add_argument("--max-det", type=int, default=300, help="detections per frame at most")
    st.add_argument("--strides", help="the head's strides to check, e.g. 8,16,32")
    st.add_argument("--reg-max", type=int, help="the head's DFL bins to check (16 for YOLOv8)")
    st.add_argument("--detections", action="store_true", help="each frame's boxes in --json")


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise EdgeCompressError(f"--input-shape {text!r}: write positive sizes like 1x224x224x3")
    return dims


def _named_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME=1x3x640x640`` -> (NAME, shape); without ``NAME=`` the name is ""."""
    name, _, dims = text.rpartition("=")
    try:
        return name.strip(), _shape(dims)
    except EdgeCompressError:
        raise EdgeCompressError(
            f"--input-shape {text!r}: write NAME=1x3x640x640 (positive sizes; NAME= may be "
            "left out for a model with one input)"
        ) from None


def cmd_bench(a: argparse.Namespace) -> int:
    from edgecompress.io import atomic_write_json
    from edgecompress.runtime.harness import (
        BenchOptions,
        RunStopped,
        bench_artifact,
    )
    from edgecompress.targets import target_for_file

    sensors = tuple(a.sensor or ["auto"])
    shapes = tuple(_named_shape(s) for s in a.input_shape)
    opts = BenchOptions(
        runs=a.runs,
        warmup=a.warmup,
        min_time_s=a.min_time,
        threads=a.threads,
        batch=a.batch,
        inputs=tuple(shape for _, shape in shapes),
        input_shapes=shapes,
        input_dtype=a.input_dtype,
        core_mask=a.core_mask,
        parallel=a.npu_cores,
        sensors=() if sensors == ("none",) else sensors,
        host_sensors=tuple(a.host_sensor),
        idle_s=a.idle_s,
        python=a.python,
        ssh_options=tuple(a.ssh_option),
        timeout_s=a.timeout,
        onnx=a.onnx,
        precision=a.precision,
    )
    target = a.target or target_for_file(a.artifact)
    run = functools.partial(bench_artifact, a.artifact, target, opts=opts)
    if a.stream is not None:
        run = _stream_runner(a, target, opts)
    results: list[dict[str, Any]] = []
    failed = 0
    for device in a.device or ["local"]:
        try:
            results.append(run(device))
        except RunStopped as exc:
            print(f"error: {exc}", file=sys.stderr)
            results.append(exc.partial)
            failed += 1
        except EdgeCompressError as exc:
            if len(a.device) <= 1:
                raise
            print(f"error: {device}: {exc}", file=sys.stderr)
            failed += 1
    print(_stream_table(results) if a.stream is not None else _bench_table(results))
    if a.json:
        atomic_write_json(a.json, results[0] if len(results) == 1 else results)
        print(f"results: {a.json}")
    return 2 if failed else 0


def _stream_runner(a: argparse.Namespace, target: str, opts: Any) -> functools.partial[Any]:
    from edgecompress.runtime.stream_bench import StreamOptions, bench_stream

    if [v for v in a.sensor if v != "none"] or a.host_sensor:
        raise EdgeCompressError("--stream measures no energy: leave out --sensor/--host-sensor")

    try:
        strides = tuple(int(v) for v in a.strides.split(",")) if a.strides else ()
    except ValueError:
        raise EdgeCompressError(f"--strides {a.strides!r}: write them like 8,16,32") from None
    stream = StreamOptions(
        a.stream, a.frames, a.in_flight, a.conf, a.iou, a.max_det, strides=strides,
        reg_max=a.reg_max, detections=a.detections,
    )  # fmt: skip
    return functools.partial(bench_stream, a.artifact, target, opts=opts, stream=stream)


def _stream_table(results: list[dict[str, Any]]) -> str:
    from edgecompress.report.markdown import table

    header = ["device", "contexts", "frames", "frames/s", "NPU busy"]
    stages = ("pre", "npu", "post", "e2e")
    header += [f"{s} p50/p90 ms" for s in stages]
    rows = []
    for r in results:
        st = r.get("stream") or {}
        fps, busy, ms = st.get("frames_per_s"), st.get("npu_busy"), st.get("stages") or {}
        rows.append(
            [
                r.get("device", "?") + ("" if r.get("complete") else " (partial)"),
                str(st.get("contexts", "-")),
                str(st.get("frames", 0)),
                f"{fps:.1f}" if fps else "-",
                f"{busy:.0%}" if busy is not None else "-",
                *(
                    f"{ms[s]['p50_ms']:.2f}/{ms[s]['p90_ms']:.2f}" if s in ms else "-"
                    for s in stages
                ),
            ]
        )
    return table(rows, header)


def _bench_table(results: list[dict[str, Any]]) -> str:
    from edgecompress.report.markdown import table

    rows = []
    for r in results:
        lat, mem, energy = r.get("latency") or {}, r.get("memory") or {}, r.get("energy") or {}
        joules = energy.get("energy_per_inference_j")
        peak = mem.get("peak_rss_bytes")
        rows.append(
            [
                r.get("device", "?") + ("" if r.get("complete") else " (partial)"),
                str(r.get("runtime", "?")),
                f"{lat['p50_ms']:.3f}" if lat else "-",
                f"{lat['p99_ms']:.3f}" if lat else "-",
                f"{lat['throughput_per_s']:.1f}" if lat else "-",
                f"{peak / 2**20:.1f}" if peak else "-",
                f"{joules * 1e3:.4f} ({energy.get('kind')})" if joules is not None else "-",
            ]
        )
    header = ["device", "runtime", "p50 ms", "p99 ms", "items/s", "peak RSS MiB", "mJ/inference"]
    return table(rows, header)


def _convert_parser(sub: Any) -> None:
    v = sub.add_parser(
        "convert",
        help="a model as it is (any ONNX, or a torch file) to the target's artifacts: fixed "
        "shapes, PTQ only, parity against ONNX Runtime, the build's report",
    )
    v.add_argument("model", type=Path, help=".onnx (any producer) or a torch file")
    v.add_argument("--target", required=True, help="device profile (see `edgecompress targets`)")
    v.add_argument("-o", "--out", type=Path, default=Path("out"), help="output folder (out)")
    v.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="[NAME=]1x3x640x640",
        help="fix a dynamic input at this shape (NAME= needed when the model has several "
        "inputs); repeatable",
    )
    v.add_argument(
        "--data",
        type=Path,
        help="images: calibration for INT8 and the parity inputs (a folder of images, or "
        "DIR/<class>/<image>); without it: FP16 RKNN / no INT8 ONNX, random parity inputs",
    )
    v.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    v.add_argument("--resize", choices=["stretch", "letterbox", "center_crop"])
    v.add_argument("--mean", type=float, nargs=3, help="per-channel mean in [0, 1] units")
    v.add_argument("--std", type=float, nargs=3, help="per-channel std in [0, 1] units")
    v.add_argument("--bgr", action="store_true", help="the model expects BGR channel order")
    v.add_argument("--calibration-images", type=int, default=100)
    v.add_argument(
        "--eval-images",
        type=int,
        help="images compared across runtimes (default: all of a class folder's test split, "
        "where top-1 is scored; 20 of a plain folder)",
    )
    v.add_argument(
        "--min-cosine", type=float, help="fail an INT8/RKNN artifact below this (0.99 / 0.98)"
    )
    v.add_argument("--arch", help="module:factory or torchvision:NAME, for a state_dict")
    v.add_argument("--trust-pickle", action="store_true", help="allow a pickled nn.Module")
    v.add_argument("--rknn-python", help="interpreter of an rknn-toolkit2 environment")
    v.add_argument(
        "--rknn-algorithm",
        choices=["normal", "mmse", "kl_divergence"],
        default="normal",
        help="RKNN INT8 calibration (mmse: slower, often closer to float)",
    )
    v.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    v.add_argument("--no-bench", action="store_true", help="skip timing the artifacts")
    v.add_argument("--force", action="store_true", help="replace a conversion in --out")
    v.add_argument("--quiet", action="store_true")


def cmd_convert(a: argparse.Namespace) -> int:
    from edgecompress.calibration.preprocess import PreprocessSpec
    from edgecompress.convert import ConvertOptions, convert
    from edgecompress.report.markdown import table
    from edgecompress.report.summary import summary_table

    flags = {
        k: v
        for k, v in (
            ("input_size", a.input_size),
            ("resize", a.resize),
            ("mean", a.mean),
            ("std", a.std),
            ("channel_order", "BGR" if a.bgr else None),
        )
        if v is not None
    }
    try:
        spec = PreprocessSpec(**flags) if flags else None
    except ValueError as exc:
        raise EdgeCompressError(f"preprocessing flags: {exc}") from None
    names = ("min_cosine_int8", "min_cosine_rknn")  # the converted artifacts' thresholds
    cosine = {} if a.min_cosine is None else dict.fromkeys(names, a.min_cosine)
    options = ConvertOptions(
        calibration_images=a.calibration_images,
        eval_images=a.eval_images,
        threads=a.threads,
        bench=not a.no_bench,
        rknn_python=a.rknn_python,
        rknn_algorithm=a.rknn_algorithm,
        arch=a.arch,
        trust_pickle=a.trust_pickle,
        force=a.force,
        progress=not a.quiet,
        **cosine,
    )
    log = (lambda _m: None) if a.quiet else (lambda m: print(m, file=sys.stderr))
    shapes = dict(_named_shape(s) for s in a.input_shape)
    report = convert(
        a.model, a.target, a.out, input_shapes=shapes, data=a.data, spec=spec,
        options=options, log=log,
    )  # fmt: skip
    header, rows = summary_table(report.data)
    print(table(rows, header))
    for note in report.data.get("summary", {}).get("notes", []):
        print(f"note: {note}")
    print(f"report: {a.out / 'report.json'}")
    return 0


def _energy_parser(sub: Any) -> None:
    en = sub.add_parser("energy", help="energy per inference without a sensor: estimate, fit")
    esub = en.add_subparsers(dest="energy_command", required=True)
    est = esub.add_parser("estimate", help="analytic (or fitted) energy of an ONNX graph")
    est.add_argument("model", type=Path)
    est.add_argument("--target", required=True)
    est.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    est.add_argument("--coefficients", type=Path, help="a fit file (default: the target's fit)")
    fit = esub.add_parser("fit", help="fit a target's coefficients to measured bench results")
    fit.add_argument("results", type=Path, nargs="+", help="`bench --json` files with energy")
    fit.add_argument("--target", required=True)
    fit.add_argument("-o", "--out", type=Path, help="default: the cache, used by later estimates")


def cmd_energy(a: argparse.Namespace) -> int:
    from edgecompress.runtime import energy_model as em

    if a.energy_command == "estimate":
        print(
            json.dumps(em.estimate_energy(a.model, a.target, a.precision, a.coefficients), indent=2)
        )
        return 0
    result = em.fit_from_files(a.target, a.results)
    path = em.save_fit(result, a.out)
    print(json.dumps(result, indent=2))
    print(f"coefficients: {path}")
    return 0


def _detect_parser(sub: Any) -> None:
    d = sub.add_parser(
        "detect",
        help="a YOLO-style detector pruned, distilled (FGD), INT8-QAT'd and converted for "
        "the host and the RKNN simulator; without MODEL, the built-in example",
    )
    d.add_argument(
        "model",
        nargs="?",
        type=Path,
        help="an Ultralytics YOLOv8 detection checkpoint (needs the optional `ultralytics` "
        "package) or a torch.save'd edgecompress YoloDetector; default: the example "
        "detector, trained once on the Fashion-MNIST detection example and cached",
    )
    d.add_argument(
        "--data",
        type=Path,
        help="COCO (annotations/instances_<split>.json) or YOLO txt folder with train and "
        "test splits (val is carved from train when missing); default: the example's",
    )
    d.add_argument("--size", type=int, help="input side (default 160 for the example, else 640)")
    d.add_argument("-o", "--out", type=Path, default=Path("out/detect"))
    d.add_argument("--force", action="store_true", help="replace an earlier report in --out")
    d.add_argument("--keep", type=float, default=0.6, help="MAC budget (default 0.6)")
    d.add_argument(
        "--allocation",
        choices=("global", "latency"),
        default="global",
        help="how the MAC budget is spread: one L1 ranking over all layers (global, the "
        "default), or each layer's share from timing it pruned on this host (latency)",
    )
    d.add_argument("--recover-epochs", type=int, default=60, help="after pruning (default 60)")
    d.add_argument("--qat-epochs", type=int, default=3, help="INT8 QAT epochs (default 3)")
    d.add_argument(
        "--no-distill", action="store_true", help="recover by fine-tuning, without the teacher"
    )
    d.add_argument("--no-rknn", action="store_true", help="skip the RKNN simulator")
    d.add_argument("--platform", default="rk3588", help="the RKNN platform (default rk3588)")


def cmd_detect(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from edgecompress.calibration.fashion_mnist import default_cache
    from edgecompress.detect.example import SIZES, ensure_fashion_detect
    from edgecompress.detect.pipeline import (
        DetectBuildConfig,
        build_detector,
        example_detector,
        load_detector,
        read_detection_data,
    )
    from edgecompress.errors import ConfigError

    if (a.out / "report.json").exists() and not a.force:
        raise ConfigError(f"{a.out / 'report.json'} exists; give --force to replace it")
    if not 0 < a.keep < 1 or a.recover_epochs < 1 or a.qat_epochs < 1:
        raise ConfigError("--keep must be in (0, 1); --recover-epochs and --qat-epochs >= 1")
    if a.model is None and a.data is not None:
        raise ConfigError("--data needs a MODEL trained on it (without MODEL: the example)")
    sets = read_detection_data(a.data or ensure_fashion_detect())
    if a.model is None:
        model, _ = example_detector(sets, default_cache(), SIZES)
    else:
        model = load_detector(a.model)
    classes = len(sets["train"].class_names)
    if model.num_classes != classes:
        raise ConfigError(
            f"{a.model}: the detector predicts {model.num_classes} classes, the data set has "
            f"{classes} ({', '.join(sets['train'].class_names[:5])}...); train or fine-tune "
            "it on these classes first"
        )
    size = a.size or (160 if a.model is None else 640)
    base = DetectBuildConfig()
    cfg = replace(
        base,
        size=size,
        keep=a.keep,
        allocation=a.allocation,
        recover=replace(base.recover, epochs=a.recover_epochs, size=size),
        qat_epochs=a.qat_epochs,
        distill=not a.no_distill,
        rknn=not a.no_rknn,
        platform=a.platform,
    )
    report = build_detector(model, sets, a.out, cfg)
    print((a.out / "report.md").read_text())
    print(json.dumps({"report": str(a.out / "report.json"), **report["summary"]}, indent=2))
    return 0


COMMANDS = {
    "build": cmd_build,
    "targets": cmd_targets,
    "probe": cmd_probe,
    "check": cmd_check,
    "compare": cmd_compare,
    "setup": cmd_setup,
    "example": cmd_example,
    "summary": cmd_summary,
    "bench": cmd_bench,
    "convert": cmd_convert,
    "energy": cmd_energy,
    "detect": cmd_detect,
}


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EdgeCompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("interrupted; finished stages are kept (rerun with --resume)", file=sys.stderr)
        return 143 if isinstance(exc, Stopped) else 130


if __name__ == "__main__":
    sys.exit(main())
