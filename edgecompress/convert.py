"""``edgecompress convert``: a model trained elsewhere (any ONNX file, or a torch file)
made into the target's artifacts as it is: no pruning, no training, post-training
quantization only, with the checks and the report a build gives.

1. Dynamic dimensions are fixed from the given shapes (every toolchain here compiles for
   one shape), the graph is simplified by onnxslim and written to ``OUT/model.onnx``.
2. The target's exporters run: RKNN for a Rockchip NPU (INT8 calibrated on the images,
   FP16 without any), an INT8 QDQ ONNX from ONNX Runtime's static PTQ for a CPU target
   (only with images: calibration needs real data).
3. Every artifact is compared with ONNX Runtime on the FP32 ``model.onnx`` (which is itself
   compared with the original file), on real images when there are some, else on seeded
   random inputs; the report says which.
4. The artifacts this machine can run are timed; ``report.json``/``.md``/``.html`` are
   written as a build writes them, before a failed parity check is raised.

>>> report = convert(Path("det.onnx"), "rk3588", Path("out"),
...                  input_shapes={"x": (1, 3, 640, 640)}, data=Path("images"))  # doctest: +SKIP
>>> report.data["parity"]["rknn"]["cosine[0]"]["value"]  # doctest: +SKIP
0.9993
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.calibration.samples import Samples, image_spec, model_samples
from edgecompress.errors import ConfigError, EdgeCompressError, ModelLoadError, ParityError
from edgecompress.exporters.onnx_shapes import (
    fix_input_shapes,
    graph_inputs,
    input_dims,
    save_onnx,
    shapes_text,
    simplify,
)
from edgecompress.io import sha256_file
from edgecompress.report.schema import UNITS, Report, metric
from edgecompress.targets import Precision, TargetProfile, get_target

# What convert writes in its output folder, and so all that --force removes.
WRITES = (
    "model.onnx",
    "model.int8.onnx",
    "model.rknn",
    "model.rknn.log",
    "report.json",
    "report.md",
    "report.html",
)
Outputs = list[np.ndarray]
Feeds = Sequence[dict[str, np.ndarray]]


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert, check and time (the ``convert`` command's flags)."""

    calibration_images: int = 100
    # Real images compared across runtimes: all of a class folder's test split (top-1 is
    # reported on it), 20 of a plain folder (random inputs: 8).
    eval_images: int | None = None
    threads: int = 1
    bench: bool = True
    bench_runs: int = 50
    rknn_python: str | None = None
    # rknn-toolkit2's quantized_algorithm: normal (min/max), mmse, kl_divergence. mmse
    # took PP-OCRv4's simulator cosines from 0.943 to 0.976 (det) and 0.978 to 0.984
    # (rec) here (BENCHMARKS.md), at minutes more conversion time.
    rknn_algorithm: str = "normal"
    arch: str | None = None  # for a state_dict: module:factory or torchvision:NAME
    trust_pickle: bool = False
    force: bool = False
    progress: bool = True
    # model.onnx vs the original, relative to its largest output. An exact rewrite is
    # checked by max abs diff only: cosine is noise on near-zero outputs (a text detector's
    # map of an image without text).
    max_abs_diff: float = 1e-3
    min_cosine_int8: float = 0.99  # INT8 QDQ ONNX vs model.onnx
    min_cosine_rknn: float = 0.98  # RKNN simulator vs model.onnx, per output


@dataclass
class Source:
    """model.onnx and what it came from."""

    shapes: dict[str, tuple[int, ...]]  # input name -> the fixed shape
    format: str  # "onnx" or the torch form load_model found
    run_original: Callable[[Feeds], Outputs]  # the file as given, or the PyTorch model
    original_name: str
    dims: dict[str, list[int | str]]  # input name -> its dims as the file has them
    exporter: str  # what wrote model.onnx


@dataclass
class Job:
    """One conversion: where it writes, what it was told, what it has found so far."""

    report: Report
    out_dir: Path
    profile: TargetProfile
    opts: ConvertOptions
    log: Callable[[str], None]
    spec: PreprocessSpec | None = None
    samples: Samples = field(default_factory=lambda: Samples([], ""))
    reference: Outputs = field(default_factory=list)  # ORT on model.onnx
    original: Outputs = field(default_factory=list)  # the file as given
    failures: list[EdgeCompressError] = field(default_factory=list)


def convert(
    model: Path,
    target: str,
    out_dir: Path,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    data: Path | None = None,
    spec: PreprocessSpec | None = None,
    options: ConvertOptions | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Convert ``model`` for ``target`` into ``out_dir`` and return the report.

    ``input_shapes`` maps input names to the shape to fix them at (the key ``""`` is a
    model's one input). ``spec`` says how ``data`` images become inputs; its
    ``input_size`` is taken from the model when not set explicitly. Raises
    ``ParityError`` (after writing the report) when an artifact does not match.
    """
    model, out_dir = Path(model), Path(out_dir)
    job = Job(Report(), out_dir, get_target(target), options or ConvertOptions(), log or _quiet)
    _prepare_out_dir(out_dir, job.opts.force)
    t0 = time.perf_counter()
    source = _fixed_onnx(model, input_shapes or {}, spec, job)
    job.spec = image_spec(source.shapes, spec)
    counts = (job.opts.calibration_images, job.opts.eval_images)
    job.samples = model_samples(out_dir / "model.onnx", source.shapes, job.spec, data, counts)
    _stage(job, "fix_shapes", t0, {"inputs": {k: list(v) for k, v in source.shapes.items()}})
    job.log(f"convert: {model.name} at {shapes_text(source.shapes)}; inputs: {job.samples.how}")
    _describe(job, model, source)
    job.reference = ort_outputs(out_dir / "model.onnx", job.samples.feeds, job.opts.threads)
    _float_parity(job, source)
    _accuracy(job, "onnxruntime", job.reference, "onnx")
    for export in _exporters(job):
        export(job)
    if job.opts.bench:
        _bench(job)
    _finish(job)
    if job.failures:
        raise job.failures[0]
    return job.report


def _quiet(_message: str) -> None:
    pass


# -- model.onnx at fixed shapes --------------------------------------------------------


def _fixed_onnx(
    model: Path, shapes: Mapping[str, Sequence[int]], spec: PreprocessSpec | None, job: Job
) -> Source:
    import onnx

    try:
        proto = onnx.load(str(model))
    except FileNotFoundError:
        raise ModelLoadError(f"{model}: no such file") from None
    except Exception:  # not ONNX: a torch file, or load_model says what it is
        return _torch_to_onnx(model, shapes, spec, job)
    dims = {i.name: input_dims(i) for i in graph_inputs(proto)}
    fixed = fix_input_shapes(proto, shapes, str(model))
    save_onnx(simplify(proto, model), job.out_dir / "model.onnx")
    import onnxslim

    def run_original(feeds: Feeds) -> Outputs:
        return ort_outputs(model, feeds, job.opts.threads)

    how = f"input shapes fixed, onnxslim {onnxslim.__version__}"
    return Source(fixed, "onnx", run_original, f"ONNX Runtime on {model.name}", dims, how)


def _torch_to_onnx(
    model: Path, shapes: Mapping[str, Sequence[int]], spec: PreprocessSpec | None, job: Job
) -> Source:
    """A torch file, loaded as a build loads it and exported at the given shape."""
    import torch

    from edgecompress.exporters.onnx import export_onnx
    from edgecompress.model_io import load_model

    if len(shapes) > 1:
        raise ConfigError(f"{model}: a torch model takes one input here; give one --input-shape")
    shape = next(iter(shapes.values()), None)
    if shape is None and spec is not None and "input_size" in spec.model_fields_set:
        shape = spec.input_shape(1)
    if shape is None:
        raise ConfigError(
            f"{model}: a torch file does not say its input shape; give it: "
            "--input-shape 1x3x224x224 (or --input-size H W)"
        )
    fixed = tuple(int(s) for s in shape)
    size = (fixed[-2], fixed[-1]) if len(fixed) == 4 else None  # NCHW: what a ViT is built at
    opts = job.opts
    module = load_model(model, opts.arch, trust_pickle=opts.trust_pickle, input_size=size).module
    res = export_onnx(module, torch.zeros(fixed), job.out_dir / "model.onnx")

    def run_torch(feeds: Feeds) -> Outputs:
        calls = []
        with torch.no_grad():
            for feed in feeds:
                out = module(torch.from_numpy(next(iter(feed.values()))))
                outs = out if isinstance(out, list | tuple) else [out]
                calls.append([o.detach().numpy() for o in outs])
        return [np.concatenate(o) for o in zip(*calls, strict=True)]

    how = f"torch.onnx ({res.exporter}, opset {res.opset}), {res.simplifier or 'not simplified'}"
    return Source(
        {"input": fixed}, "torch", run_torch, "PyTorch (the model as given)",
        {"input": list(fixed)}, how,
    )  # fmt: skip


def ort_outputs(path: Path, feeds: Feeds, threads: int = 1) -> Outputs:
    """Each output of ``path`` in ONNX Runtime, concatenated over the calls ``feeds``."""
    from edgecompress.exporters.onnx import ort_session

    sess = ort_session(path, threads)
    per_call = [sess.run(None, feed) for feed in feeds]
    return [np.concatenate([np.asarray(c[i]) for c in per_call]) for i in range(len(per_call[0]))]


# -- parity and exporters --------------------------------------------------------------


def _float_parity(job: Job, source: Source) -> None:
    """model.onnx against the original (the file as given, or the PyTorch model)."""
    original = source.run_original(job.samples.feeds)
    job.original = original
    _accuracy(job, "original", original, None)
    scale = max(1.0, max(float(np.abs(o).max()) for o in original))
    how = f"ONNX Runtime on model.onnx vs {source.original_name}, {job.samples.how}"
    _parity(job, "onnx", original, job.reference, how, (job.opts.max_abs_diff * scale, -1.0))


def _parity(
    job: Job,
    name: str,
    reference: Outputs,
    candidate: Outputs,
    how: str,
    limits: tuple[float | None, float],
) -> None:
    """Per-output cosine and max abs diff in the report; a failed check (NaN/constant
    outputs, or past ``limits`` = (max abs diff, min cosine)) is kept for after the
    report is written."""
    from edgecompress.evaluate import cosine
    from edgecompress.exporters.onnx import check_parity, parity_metrics

    if len(reference) != len(candidate):
        job.failures.append(ParityError(f"{name}: {len(candidate)} outputs, not {len(reference)}"))
        return
    pairs = [(r, np.asarray(c).reshape(r.shape)) for r, c in zip(reference, candidate, strict=True)]
    entries: dict[str, Any] = {}
    for i, (r, c) in enumerate(pairs):
        entries[f"cosine[{i}]"] = metric(cosine(r, c), "", how)
        entries[f"max_abs_diff[{i}]"] = metric(
            float(np.abs(r.astype(np.float64) - c).max()), "", how
        )
    job.report.add_parity(name, entries)
    metrics = parity_metrics([r for r, _ in pairs], [c for _, c in pairs])
    max_abs_diff, min_cosine = limits
    remedy = "Look for ops the runtimes handle differently (resize modes, custom layers); " + (
        "the float graph should match exactly: report it with the model"
        if name == "onnx"
        else f"only if the gap is expected, lower --min-cosine (now {min_cosine})"
    )
    try:  # NaN/inf or input-independent outputs fail here too, with their own message
        check_parity(
            name,
            metrics,
            max_abs_diff=max_abs_diff,
            min_cosine=min_cosine,
            inputs=f"the same inputs ({how})",
            remedy=remedy,
        )
    except EdgeCompressError as exc:
        job.failures.append(exc)


def _accuracy(job: Job, runtime: str, outputs: Outputs, artifact: str | None) -> None:
    """Top-1 of ``outputs`` on the labelled test split (a class folder as --data, one
    class per model output): the original as a model row, each artifact by name."""
    from edgecompress.evaluate import classification_metrics

    labels, classes = job.samples.labels, job.samples.outputs
    if labels is None or len(outputs) != 1:
        return
    logits = np.asarray(outputs[0]).reshape(len(labels), -1)
    if logits.shape[1] != classes:
        if artifact is None:
            n = f"{logits.shape[1]} outputs and --data {classes} class folders"
            _note(job, f"no top-1: the model has {n} (one per output, in order, is scored)")
        return
    metrics = classification_metrics(logits, labels, job.original[0] if job.original else None)
    how = f"{runtime} on {job.samples.how}"
    if artifact is None:
        entry = {k: metric(v, UNITS.get(k, ""), how) for k, v in metrics.items()}
        job.report.data.setdefault("models", []).append({"label": "original", **entry})
        return
    job.report.add_accuracy(runtime, metrics, how, artifact=artifact)


def _artifact(job: Job, name: str, path: Path, precision: str, exporter: str, **info: Any) -> None:
    job.report.add_artifact(
        name,
        {
            "path": path.name,
            "size_bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "exporter": exporter,
            "precision": precision,
            "stage": "convert",
            "source": "model.onnx",
            "deployed": True,
            **info,
        },
    )


def _to_int8_onnx(job: Job) -> None:
    """INT8 QDQ ONNX by ONNX Runtime's static PTQ, calibrated on the images."""
    if job.spec is None or not job.samples.calib:
        _note(job, "no INT8 ONNX: static quantization needs calibration images (--data)")
        return
    from edgecompress.quantize.onnx_qdq import quantize_qdq

    t0, out, weights = (
        time.perf_counter(),
        job.out_dir / "model.int8.onnx",
        job.profile.int8_weights,
    )
    job.log(f"convert: INT8 QDQ ONNX from {len(job.samples.calib)} calibration images")
    calib = np.stack([job.spec.normalize(img) for img in job.samples.calib])
    quantize_qdq(job.out_dir / "model.onnx", out, calib, weights=weights)
    _artifact(job, "onnx_int8", out, "int8", "onnxruntime.quantization (static, QDQ)",
              calibration_images=len(calib), weights=weights)  # fmt: skip
    _stage(job, "quantize_qdq", t0, {"calibration_images": len(calib)})
    how = f"ONNX Runtime: model.int8.onnx vs model.onnx, {job.samples.how}"
    outputs = ort_outputs(out, job.samples.feeds, job.opts.threads)
    _parity(job, "onnx_int8", job.reference, outputs, how, (None, job.opts.min_cosine_int8))
    _accuracy(job, "onnxruntime-int8", outputs, "onnx_int8")


def _to_rknn(job: Job) -> None:
    """RKNN by rknn-toolkit2: INT8 calibrated on the images, or FP16 without any."""
    from edgecompress.exporters.rknn import convert_rknn

    samples, platform, opts = job.samples, job.profile.rknn_platform, job.opts
    if job.spec is None or samples.prepared is None:
        fixed = job.report.data["model"]["fixed_inputs"]
        raise ConfigError(
            "RKNN export takes a model with one image input (1 x 3 x H x W); this one has "
            + shapes_text(fixed)
        )
    assert platform is not None
    quantize = bool(samples.calib)
    if not quantize:
        _note(job, "no --data: model.rknn is FP16 (INT8 needs calibration images)")
    t0 = time.perf_counter()
    res = convert_rknn(
        job.out_dir / "model.onnx", job.out_dir / "model.rknn", job.spec, platform,
        samples.calib, samples.prepared, quantize=quantize, algorithm=opts.rknn_algorithm,
        rknn_python=opts.rknn_python, progress=opts.progress,
    )  # fmt: skip
    precision = "int8" if quantize else "fp16"
    _artifact(job, "rknn", res.path, precision, f"rknn-toolkit2 {res.toolkit_version}",
              platform=platform, calibration_images=len(samples.calib),
              algorithm=opts.rknn_algorithm if quantize else None,
              seconds={"convert": res.convert_s, "simulate": res.simulate_s})  # fmt: skip
    _stage(job, "export_rknn", t0, {"precision": precision})
    job.log(f"convert: model.rknn ({precision}) in {res.convert_s:.1f} s")
    how = (
        f"RKNN simulator (rknn-toolkit2 {res.toolkit_version}, {precision}) vs ONNX "
        f"Runtime on model.onnx, {samples.how}"
    )
    _parity(job, "rknn", job.reference, res.outputs, how, (None, opts.min_cosine_rknn))
    _accuracy(job, "rknn-simulator", res.outputs, "rknn")


# Exporter name (a target profile's ``exporters``) -> the step that makes it; "onnx" is
# model.onnx itself, and a CPU target (runtime onnxruntime) also gets the INT8 QDQ ONNX.
EXPORTERS: dict[str, Callable[[Job], None]] = {"rknn": _to_rknn}


def _exporters(job: Job) -> list[Callable[[Job], None]]:
    profile = job.profile
    steps: list[Callable[[Job], None]] = []
    if profile.runtime == "onnxruntime" and Precision.int8 in profile.precisions:
        steps.append(_to_int8_onnx)
    for name in profile.exporters:
        if name in EXPORTERS:
            steps.append(EXPORTERS[name])
        elif name != "onnx":
            _note(job, f"convert does not build {name} artifacts: model.onnx is its input")
    return steps


# -- bench and report ------------------------------------------------------------------


def _bench(job: Job) -> None:
    """Every artifact this machine runs, timed as build's bench stage times it; the rest
    get the analytic energy estimate from model.onnx."""
    from edgecompress.report.latency import latency_entry
    from edgecompress.runtime.backends import backend_for
    from edgecompress.runtime.harness import BenchOptions, bench_artifact
    from edgecompress.stages.bench import estimate_only

    opts = job.opts
    bench = BenchOptions(
        runs=opts.bench_runs, warmup=5, min_time_s=0.5, threads=opts.threads, sensors=()
    )
    t0, target = time.perf_counter(), job.profile.name
    for name, info in list(job.report.data["artifacts"].items()):
        path = job.out_dir / info["path"]
        if backend_for(path) != "onnxruntime":
            graph = replace(bench, onnx=job.out_dir / "model.onnx", precision=info["precision"])
            entry = {
                "artifact": name,
                "measured": False,
                "reason": f"needs a {target} device: edgecompress bench {path.name} --device URL",
                "energy": estimate_only(path, target, graph),
            }
            job.report.add_latency(f"{name}@{target}", entry)
            continue
        job.log(f"convert: timing {path.name} on this machine")
        res = bench_artifact(path, "host", "local", bench, progress=opts.progress)
        job.report.add_latency(f"{name}@host", latency_entry(name, res))
    _stage(job, "bench", t0, {})


def _describe(job: Job, model: Path, source: Source) -> None:
    job.report.set(
        "model",
        {
            "source": str(model),
            "format": source.format,
            "inputs": source.dims,
            "fixed_inputs": {k: list(v) for k, v in source.shapes.items()},
        },
    )
    job.report.set("target", job.profile.model_dump(mode="json"))
    job.report.set("preprocess", job.spec.model_dump(mode="json") if job.spec else None)
    job.report.set("data", job.samples.data_summary)
    job.report.set("convert", {"inputs": job.samples.how, "notes": []})
    onnx_path = job.out_dir / "model.onnx"
    _artifact(job, "onnx", onnx_path, "fp32", source.exporter, source=model.name)


def _note(job: Job, text: str) -> None:
    job.report.data["convert"]["notes"].append(text)


def _stage(job: Job, name: str, t0: float, metrics: dict[str, Any]) -> None:
    seconds = time.perf_counter() - t0
    job.report.add_stage({"name": name, "status": "done", "seconds": seconds, "metrics": metrics})


def _finish(job: Job) -> None:
    from edgecompress.report.summary import summarize

    lat = job.report.data["latency"]
    fp32, int8 = lat.get("onnx@host", {}), lat.get("onnx_int8@host", {})
    if fp32.get("measured") and int8.get("measured") and int8["p50_ms"] > fp32["p50_ms"]:
        _note(
            job,
            f"model.int8.onnx runs {int8['p50_ms'] / fp32['p50_ms']:.2f}x slower than "
            f"model.onnx on this machine ({int8['p50_ms']:.3f} vs {fp32['p50_ms']:.3f} ms p50, "
            "same run): here the float model is the faster one",
        )
    summary = summarize(job.report.data)
    summary["notes"] += job.report.data["convert"]["notes"]
    job.report.set("summary", summary)
    job.report.save(job.out_dir)


def _prepare_out_dir(out_dir: Path, force: bool) -> None:
    written = [out_dir / n for n in WRITES if (out_dir / n).exists()]
    if written and not force:
        raise ConfigError(
            f"{out_dir} holds a conversion already ({written[0].name}); pass --force to "
            "replace it (only the files convert writes are removed) or choose another -o"
        )
    for path in written:
        path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
