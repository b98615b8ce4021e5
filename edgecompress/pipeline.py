"""Runs a recipe: load, then each stage in order, with a checkpoint after each under
``out/stages/NN_name/`` so that ``--resume`` continues after the last finished stage.
Assembles ``report.json`` / ``report.md``."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from edgecompress import memory
from edgecompress.artifacts import Artifact
from edgecompress.calibration.bundle import DataBundle
from edgecompress.calibration.preprocess import Layout, PreprocessSpec
from edgecompress.editable import make_editable, needs_conversion
from edgecompress.errors import ConfigError, DataError, EdgeCompressError, Stopped
from edgecompress.io import atomic_write_json, atomic_write_text, sha256_file
from edgecompress.model_io import LoadedModel, load_checkpoint, load_model, save_checkpoint
from edgecompress.probe.api import resolve_target
from edgecompress.recipe import Recipe
from edgecompress.report.schema import Report
from edgecompress.report.summary import summarize
from edgecompress.stages import STAGES, BuildContext
from edgecompress.stages.base import BuildOptions, record_model
from edgecompress.targets import TargetProfile

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildRequest:
    model: Path | nn.Module  # a model file, or a module built in the caller's script
    data: Path
    out_dir: Path
    recipe: Recipe
    arch: str | None = None
    trust_pickle: bool = False
    resume: bool = False
    force: bool = False


STAGE_FOLDER = re.compile(r"\d{2}_[a-z][a-z0-9_]*")


def _stage_dir(out_dir: Path, index: int, name: str) -> Path:
    return out_dir / "stages" / f"{index:02d}_{name}"


def _model_digest(model: Path | nn.Module) -> str:
    if isinstance(model, nn.Module):
        h = hashlib.sha256()
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
    return sha256_file(model)


def _load(req: BuildRequest, spec: PreprocessSpec) -> LoadedModel:
    if isinstance(req.model, nn.Module):
        return LoadedModel(req.model.eval(), "module", Path("<in-memory module>"), req.arch)
    return load_model(
        req.model,
        req.arch,
        trust_pickle=req.trust_pickle,
        example=_zeros_input(spec),
        input_size=spec.input_size,
    )


def _fingerprint(req: BuildRequest, profile: TargetProfile) -> str:
    """What every checkpoint depends on: the recipe's target, preprocessing and data, the
    target profile it ran with (a measured one chooses widths and weight bits), the model
    file and the data folder. A stage's also covers the stages up to it
    (:func:`_stage_print`): a resume may change what comes after the last finished one."""
    h = hashlib.sha256()
    inputs = {k: v for k, v in req.recipe.to_dict().items() if k != "stages"}
    h.update(json.dumps(inputs, sort_keys=True).encode())
    h.update(profile.model_dump_json().encode())
    h.update(_model_digest(req.model).encode())
    h.update(f"{req.arch}|{req.data.resolve()}".encode())
    return h.hexdigest()


def _stage_print(req: BuildRequest, inputs: str, index: int) -> str:
    stages = req.recipe.to_dict()["stages"][:index]
    return hashlib.sha256((inputs + json.dumps(stages, sort_keys=True)).encode()).hexdigest()


@dataclass
class Start:
    """What a build starts from: the model as loaded (editable where a stage changes
    it), its data, and the target profile it runs with."""

    req: BuildRequest  # as asked, with what the model says it takes (grey input)
    loaded: LoadedModel
    data: DataBundle
    profile: TargetProfile


def start(req: BuildRequest, options: BuildOptions, log: Log = print) -> Start:
    """Load and check the model and data, and resolve the target (measured where this
    machine or the named device was probed: ``edgecompress probe``)."""
    _check_out_dir(req)
    req = _read_channels(req, None, log)  # before loading: an ONNX is fixed to its shape
    loaded = _load(req, req.recipe.preprocess)
    req = _read_channels(req, loaded.module, log)
    spec = req.recipe.preprocess
    data = DataBundle(req.data, spec, req.recipe.data)
    _check_classes(loaded, data)
    changes = any(STAGES.get(s.name).changes_model for s in req.recipe.stages)
    if changes or needs_conversion(loaded.module):
        # Before any training: a graph that cannot be made editable fails here. A
        # TorchScript or exported program is converted even for export alone: counting
        # its MACs and timing its states need the layers a ScriptModule hides from hooks.
        loaded.module = make_editable(
            loaded.module, torch.from_numpy(data.test_inputs[:1].copy()), source=str(req.model)
        )
    _check_before_training(req, loaded)
    profile = resolve_target(
        req.recipe.profile,
        device=options.devices[0] if options.devices else None,
        probe_missing=options.probe,
        threads=options.threads,
        python=options.device_python,
        ssh_options=options.ssh_options,
        log=log,
    )
    example = torch.from_numpy(data.test_inputs[:1].copy())
    _check_exports(req, loaded.module, example, profile, options, log)
    return Start(req, loaded, data, profile)


def run_build(
    req: BuildRequest,
    options: BuildOptions | None = None,
    log: Log = print,
    begun: Start | None = None,
) -> Report:
    """Run every stage of ``req.recipe`` and return the report (also written to out_dir);
    ``begun``: what :func:`start` gave for this request, where the caller has it."""
    options = options or BuildOptions()
    begun = begun or start(req, options, log)
    req = replace(req, recipe=replace(req.recipe, preprocess=begun.req.recipe.preprocess))
    loaded, data, profile = begun.loaded, begun.data, begun.profile
    _prepare_out_dir(req)
    fingerprint = _fingerprint(req, profile)
    atomic_write_text(req.out_dir / "recipe.yaml", req.recipe.to_yaml())
    report = Report()
    ctx = BuildContext(req.out_dir, profile, req.recipe.preprocess, data, report, options)
    ctx.original = loaded.module
    ctx.resume = req.resume
    # The stages work on a copy: the module as given stays the reference and the teacher.
    model: nn.Module = copy.deepcopy(loaded.module)
    done = _completed_stages(req, fingerprint, log) if req.resume else 0
    changed = False  # has a stage changed the model yet?
    if done:
        model = _restore(req, ctx, done, loaded) or model
        changed = len(ctx.snapshots) > 1
        log(f"resuming after stage {done} ({req.recipe.stages[done - 1].name})")
    else:
        _describe(report, ctx.target, req, loaded, data)
        record_model(ctx, loaded.module, "original")
        ctx.snapshots.append(("original", loaded.module))  # never changed: no copy
    for index, entry in enumerate(req.recipe.stages, start=1):
        if index <= done:
            continue
        stage_spec = STAGES.get(entry.name)
        stage = stage_spec.load()(entry.config)
        log(f"[{index}/{len(req.recipe.stages)}] {entry.name}")
        before = None
        if stage_spec.changes_model and stage_spec.sets_teacher:
            if not changed:  # the model is still the original's copy: the original it is
                before = loaded.module
            elif stage.keeps_input():
                before = model
            else:
                before = copy.deepcopy(model)
        ctx.stage_dir = _stage_dir(req.out_dir, index, entry.name)
        ctx.stage_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            with _stop_on_sigterm():
                model = stage.run(model, ctx)
        except (EdgeCompressError, KeyboardInterrupt) as exc:
            seconds = time.perf_counter() - t0
            stopped = isinstance(exc, KeyboardInterrupt)
            why = (
                f"stopped by {getattr(exc, 'signal_name', 'Ctrl-C (SIGINT)')} after "
                f"{seconds:.0f} s; the stages before it are kept: rerun with --resume"
                if stopped
                else str(exc)
            )
            status = "interrupted" if stopped else "failed"
            report.add_stage(
                {"name": entry.name, "status": status, "error": why, "seconds": seconds}
            )
            report.save(req.out_dir)
            raise
        if before is not None:
            ctx.teacher = before
        report.add_stage(
            {"name": entry.name, "status": "done", "seconds": time.perf_counter() - t0}
        )
        if stage_spec.changes_model:
            record_model(ctx, model, ctx.stage_dir.name)
            changed = True
        _checkpoint(req, ctx, index, entry.name, model, stage_spec.changes_model, fingerprint)
        if stage_spec.changes_model:
            ctx.snapshots.append((ctx.stage_dir.name, ctx.stage_dir / "model.pt"))
        memory.release()  # what the stage freed (a training's copies) leaves the process
    report.data["data"] = data.summary()  # decode failures are known only after loading
    report.data["summary"] = summarize(report.data)
    report.save(req.out_dir)
    return report


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops a stage as Ctrl-C does (see :class:`Stopped`); outside the main
    thread, where no handler can be set, the signal keeps its own handling."""

    def stop(signum: int, _frame: Any) -> None:
        raise Stopped(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_classes(loaded: LoadedModel, data: DataBundle) -> None:
    """The labels must index the model's outputs: the sorted class folders, one per output,
    or ``data.classes`` naming every output. A 10-output model on a 1-class folder would
    otherwise report 0% as if it were a result."""
    with torch.no_grad():
        outputs = loaded.module(torch.from_numpy(data.test_inputs[:1].copy()))  # in eval mode
    n_out = outputs.shape[-1] if outputs.ndim == 2 else None
    if n_out is None or n_out == len(data.folder.outputs):
        return
    if data.cfg.classes is not None:
        raise DataError(
            f"{loaded.source}: the model has {n_out} outputs but the classes list (data.classes "
            f"in the recipe, --classes) names {len(data.cfg.classes)}; give one class name "
            "per model output, in output order"
        )
    classes = data.folder.classes
    raise DataError(
        f"{loaded.source}: the model has {n_out} outputs but {data.root} has "
        f"{len(classes)} class folder(s) ({', '.join(classes[:10])}"
        f"{', ...' if len(classes) > 10 else ''}); output i is scored as the i-th class "
        "folder in sorted order. Say which class each output is with data.classes in the "
        "recipe or --classes FILE_OR_COMMA_LIST (one name per output, in output order; "
        "outputs without a folder are allowed), or give the folder one subfolder per output"
    )


def _zeros_input(spec: PreprocessSpec) -> torch.Tensor:
    return torch.zeros(spec.input_shape(1))


def _read_channels(req: BuildRequest, module: nn.Module | None, log: Log) -> BuildRequest:
    """A greyscale model (one input channel, as its file records or its first layer
    takes) gets grey input, unless the recipe set ``preprocess.channels`` itself."""
    from edgecompress.model_io import input_channels, recorded_input

    spec = req.recipe.preprocess
    if "channels" in spec.model_fields_set or spec.channels == 1:
        return req
    if module is not None:
        found = input_channels(module, spec.input_size)
    elif isinstance(req.model, Path):
        shape = recorded_input(req.model)[0]
        found = (shape[1] if spec.layout is Layout.nchw else shape[3]) if len(shape) == 4 else None
    else:
        found = None
    if found != 1:
        return req
    try:
        grey = spec.with_channels(1)
    except ValidationError as exc:
        raise ConfigError(
            f"{req.model}: the model takes one (grey) input channel; preprocess: "
            f"{exc.errors()[0]['msg'].removeprefix('Value error, ')}"
        ) from None
    log(f"{Path(str(req.model)).name}: one input channel, so images are read as grey "
        f"(mean {grey.mean[0]:g}, std {grey.std[0]:g})")  # fmt: skip
    return replace(req, recipe=replace(req.recipe, preprocess=grey))


def _check_before_training(req: BuildRequest, loaded: LoadedModel) -> None:
    """What a later stage would find wrong with the model, found before the first epoch:
    merge needs a model torch.fx traces (pruning keeps its forward as it is)."""
    from edgecompress.errors import UnsupportedOpError
    from edgecompress.merge.engine import traced_graph

    names = [s.name for s in req.recipe.stages]
    if "merge" in names:
        try:
            traced_graph(loaded.module)
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(
                f"stage {names.index('merge') + 1} (merge): {exc}. Found before any training: "
                "leave merge out of the recipe (or --stages) to build without it"
            ) from None


# Larger models are not export-checked before training: their export takes minutes and
# a second copy of their graph in memory (ViT-H/14: 632M parameters, 16 GB at export).
PRECHECK_MAX_PARAMS = 50_000_000


def _check_exports(
    req: BuildRequest,
    module: nn.Module,
    example: torch.Tensor,
    profile: TargetProfile,
    options: BuildOptions,
    log: Log,
) -> None:
    """A recipe that trains and then exports: its exporters are tried on the model as
    given before the first epoch (:func:`~edgecompress.exporters.api.try_exports`), so an
    op they refuse stops the build in seconds, not after training. Pruning and QAT change
    no op types; what they rewrite is proven at export."""
    from edgecompress.exporters.api import try_exports

    stages = req.recipe.stages
    trains = [i for i, s in enumerate(stages) if STAGES.get(s.name).changes_model]
    exporters: list[str] = []
    for s in stages[trains[0] :] if trains else []:
        if s.name == "export":
            exporters += getattr(s.config, "exporters", None) or list(profile.exporters)
        elif s.name.startswith("export_"):
            exporters.append(s.name.removeprefix("export_"))
    if not exporters:
        return
    params = sum(p.numel() for p in module.parameters())
    if params > PRECHECK_MAX_PARAMS:
        log(f"exports not tried before training: {params / 1e6:.0f}M parameters (a try would "
            "take minutes); an op the exporters refuse is found after training")  # fmt: skip
        return
    onnx_cfg = next((s.config for s in stages if s.name == "export_onnx"), None)
    try_exports(
        module, example, profile, req.recipe.preprocess, exporters,
        opset=getattr(onnx_cfg, "opset", None), exporter=getattr(onnx_cfg, "exporter", "auto"),
        simplify=getattr(onnx_cfg, "simplify", True), rknn_python=options.rknn_python,
    )  # fmt: skip


def _check_out_dir(req: BuildRequest) -> None:
    """Before anything loads: a folder holding files this tool did not write (no build of
    its own there) is refused without ``--force``, since a build would replace a
    ``model.onnx`` or ``report.json`` of the user's. ``--force`` writes beside them."""
    out = req.out_dir
    if req.force or req.resume or not out.is_dir():
        return
    if (out / "stages").is_dir() or (out / "attempts").is_dir():
        return  # a build's folder: _prepare_out_dir asks for --resume or --force
    found = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise ConfigError(
            f"{out} holds files this tool did not write ({shown}); a build writes "
            "model.onnx, report.json and more there. Choose a new or empty folder with -o, "
            "or pass --force to build there anyway (files named like the build's outputs "
            "are then replaced; nothing else is touched)"
        )


def _prepare_out_dir(req: BuildRequest) -> None:
    stages = req.out_dir / "stages"
    if stages.exists() and any(stages.glob("*/done.json")) and not req.resume:
        if not req.force:
            raise ConfigError(
                f"{req.out_dir} holds a build already; pass --resume to continue it or "
                "--force to start over (its checkpoints are then deleted)"
            )
        for folder in stages.iterdir():  # only the stage folders this tool wrote
            if folder.is_dir() and STAGE_FOLDER.fullmatch(folder.name):
                shutil.rmtree(folder)
        for path in _previous_artifacts(req.out_dir):  # a deployed file must be this build's
            path.unlink()
    stages.mkdir(parents=True, exist_ok=True)


def _previous_artifacts(out_dir: Path) -> list[Path]:
    """The files the previous build's report.json lists directly in ``out_dir`` (its
    deployed files): a new build may deploy another form (``model.onnx`` instead of
    ``model.int8.onnx``), and a stale file beside the new one would be taken for it.
    Only files the report names are touched; an unreadable report names none."""
    try:
        report = json.loads((out_dir / "report.json").read_text())
        paths = [Path(a["path"]) for a in (report.get("artifacts") or {}).values()]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []
    top = [out_dir / p.name for p in paths if not p.is_absolute() and p.parent == Path(".")]
    return [p for p in top if p.is_file()]


def _describe(
    report: Report, profile: TargetProfile, req: BuildRequest, loaded: LoadedModel, data: DataBundle
) -> None:
    params = sum(p.numel() for p in loaded.module.parameters())
    report.set(
        "model",
        {
            "source": str(loaded.source),
            "format": loaded.format,
            "arch": loaded.arch,
            "parameters": params,
        },
    )
    report.set("target", profile.model_dump(mode="json"))
    report.set("preprocess", req.recipe.preprocess.model_dump(mode="json"))
    report.set("data", data.summary())


def _checkpoint(
    req: BuildRequest,
    ctx: BuildContext,
    index: int,
    name: str,
    model: nn.Module,
    changes_model: bool,
    fingerprint: str,
) -> None:
    folder = _stage_dir(req.out_dir, index, name)
    folder.mkdir(parents=True, exist_ok=True)
    if changes_model:
        save_checkpoint(model, folder / "model.pt")
    artifacts = [{**a.to_json(), "sha256": sha256_file(a.path)} for a in ctx.artifacts]
    # done.json is written last: its presence is what marks the stage finished.
    atomic_write_json(
        folder / "done.json",
        {
            "name": name,
            "index": index,
            "inputs": fingerprint,
            "fingerprint": _stage_print(req, fingerprint, index),
            "model_saved": changes_model,
            "artifacts": artifacts,
            "report": ctx.report.data,
        },
    )
    ctx.report.save(req.out_dir)


def _completed_stages(req: BuildRequest, fingerprint: str, log: Log) -> int:
    """How many stages, from the first, finished with the same inputs and options; the
    folders of any after them (an interrupted stage, or stages the recipe changed or
    dropped since) are removed, as they are run again."""
    done = 0
    for index, entry in enumerate(req.recipe.stages, start=1):
        marker = _stage_dir(req.out_dir, index, entry.name) / "done.json"
        if not marker.exists():
            break
        state = json.loads(marker.read_text())
        if state.get("inputs") != fingerprint:
            raise ConfigError(
                f"{marker.parent}: checkpoint from a different model, data, preprocessing or "
                "measured target profile; --resume needs the same inputs (--force starts over)"
            )
        if state.get("fingerprint") != _stage_print(req, fingerprint, index):
            log(
                f"stage {index} ({entry.name}) changed in the recipe: it and what follows run again"
            )
            break
        done = index
    for folder in (req.out_dir / "stages").glob("*"):
        if STAGE_FOLDER.fullmatch(folder.name) and int(folder.name[:2]) > done:
            shutil.rmtree(folder)
    return done


def _restore(
    req: BuildRequest, ctx: BuildContext, done: int, loaded: LoadedModel
) -> nn.Module | None:
    """The report, artifacts and snapshots of the finished stages; the last saved model, or
    None if no finished stage changed the model."""
    state: dict[str, Any] = json.loads(
        (_stage_dir(req.out_dir, done, req.recipe.stages[done - 1].name) / "done.json").read_text()
    )
    ctx.report.data = state["report"]
    for info in state["artifacts"]:
        path = Path(info["path"])
        if not path.exists() or sha256_file(path) != info["sha256"]:
            raise ConfigError(
                f"{path}: artifact changed or missing since its stage finished; rerun with --force"
            )
        ctx.artifacts.add(Artifact.from_json(info))
    saved = [
        i
        for i in range(1, done + 1)
        if (_stage_dir(req.out_dir, i, req.recipe.stages[i - 1].name) / "model.pt").exists()
    ]
    ctx.snapshots.append(("original", loaded.module))
    for i in saved:
        folder = _stage_dir(req.out_dir, i, req.recipe.stages[i - 1].name)
        ctx.snapshots.append((folder.name, folder / "model.pt"))
    if not saved:
        return None
    if len(saved) > 1:
        prev = saved[-2]
        ctx.teacher = load_checkpoint(
            _stage_dir(req.out_dir, prev, req.recipe.stages[prev - 1].name) / "model.pt"
        )
    else:
        ctx.teacher = loaded.module
    last = saved[-1]
    return load_checkpoint(
        _stage_dir(req.out_dir, last, req.recipe.stages[last - 1].name) / "model.pt"
    )
