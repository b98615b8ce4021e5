"""Ultralytics YOLOv8 detection models as edgecompress :class:`YoloDetector`\\ s, so a user's
own trained checkpoint goes through pruning, QAT, export and the NumPy decoder.

>>> model = from_ultralytics("runs/detect/train/weights/best.pt")  # doctest: +SKIP
>>> outs = model(torch.zeros(1, 3, 640, 640))  # box_8, box_16, box_32, cls_8, ...  # doctest: +SKIP

The two models are the same network (yolov8.yaml), written differently; every weight and
batch-norm statistic is copied, so the converted model computes what the checkpoint did:

==================================  ==================================================
Ultralytics (yolov8.yaml layer)     edgecompress
==================================  ==================================================
0 Conv                              ``backbone.stem``
1, 3, 5, 7 Conv / 2, 4, 6, 8 C2f    ``backbone.stage1..4``: ``.0`` Conv, ``.1`` C2f
9 SPPF (``cv1``, ``cv2``)           ``backbone.stage4.2`` (``cv_in``, ``cv_out``)
12, 15, 18, 21 C2f                  ``neck.top4``, ``neck.top3``, ``neck.out4``, ``neck.out5``
16, 19 Conv                         ``neck.down4``, ``neck.down5``
22 Detect ``cv2[i]`` / ``cv3[i]``   ``head.box[i]`` / ``head.cls[i]``
C2f ``cv1`` (one conv, chunked)     ``cv_skip`` (first half), ``cv_in`` (second half)
C2f ``m[i].cv1/cv2``, ``cv2``       ``blocks[i].cv1/cv2``, ``cv_out``
==================================  ==================================================

Ultralytics' C2f runs ``cv1`` and splits its output in two halves: the first goes straight
to the final concatenation, the second into the bottlenecks. The halves of ``cv1``'s
weights and batch norm are those of ``cv_skip`` and ``cv_in``. The DFL convolution of the
Detect head is a fixed ``arange`` and is not copied: the decoding (DFL softmax, grid,
sigmoid, NMS) runs in NumPy (:mod:`edgecompress.runtime.detect_post`). The widths, depths,
class count and ``reg_max`` are read from the layers' shapes (not from the YAML, which a
pruned or edited model would contradict) and every copied tensor's shape is checked.

``ultralytics`` (AGPL-3.0) is an optional dependency, imported only to read a ``.pt``
file: its checkpoints pickle its own classes. A ``.pt`` file is a pickle, and reading it
runs code it names, as Ultralytics' own loader does: load only checkpoints you trust.
Importing ``ultralytics`` changes process-wide state (NumPy and torch print options,
OpenCV's thread count, a retrying ``torch.save``); :func:`from_ultralytics` imports it
with ``YOLO_OFFLINE=1`` so that it does not probe the network.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from edgecompress.detect.model import C2f, ConvBNAct, YoloDetector, _channels
from edgecompress.errors import ConfigError, MissingToolchainError, ModelLoadError

SUPPORTED = (
    "YOLOv8 detection models (yolov8n/s/m/l/x.yaml and models trained from them: Conv, C2f "
    "and SPPF layers, a Detect head on strides 8, 16 and 32)"
)
INSTALL = (
    "`pip install 'edgecompress[ultralytics]'` (Ultralytics is AGPL-3.0 and optional; only "
    "reading its .pt files needs it)"
)

# yolov8.yaml, layer by layer: (Ultralytics class name, our module, the layers it reads).
_LAYOUT: tuple[tuple[str, str, object], ...] = (
    ("Conv", "backbone.stem", -1),
    ("Conv", "backbone.stage1.0", -1),
    ("C2f", "backbone.stage1.1", -1),
    ("Conv", "backbone.stage2.0", -1),
    ("C2f", "backbone.stage2.1", -1),
    ("Conv", "backbone.stage3.0", -1),
    ("C2f", "backbone.stage3.1", -1),
    ("Conv", "backbone.stage4.0", -1),
    ("C2f", "backbone.stage4.1", -1),
    ("SPPF", "backbone.stage4.2", -1),
    ("Upsample", "", -1),
    ("Concat", "", [-1, 6]),
    ("C2f", "neck.top4", -1),
    ("Upsample", "", -1),
    ("Concat", "", [-1, 4]),
    ("C2f", "neck.top3", -1),
    ("Conv", "neck.down4", -1),
    ("Concat", "", [-1, 12]),
    ("C2f", "neck.out4", -1),
    ("Conv", "neck.down5", -1),
    ("Concat", "", [-1, 9]),
    ("C2f", "neck.out5", -1),
    ("Detect", "head", [15, 18, 21]),
)
# Blocks that name the family a model belongs to, for the refusal message.
_FAMILIES = {
    "C3k2": "YOLO11 or YOLO26 (C3k2 blocks)",
    "C2PSA": "YOLO11 or YOLO26 (C2PSA attention)",
    "A2C2f": "YOLO12 (area attention)",
    "C3": "YOLOv5u (C3 blocks)",
    "RepNCSPELAN4": "YOLOv9 (GELAN blocks)",
    "SCDown": "YOLOv10",
    "Segment": "segmentation",
    "Pose": "pose",
    "OBB": "oriented boxes",
    "Classify": "classification",
    "v10Detect": "YOLOv10",
    "RTDETRDecoder": "RT-DETR",
    "WorldDetect": "YOLO-World",
}


def from_ultralytics(source: str | Path | nn.Module) -> YoloDetector:
    """A :class:`YoloDetector` computing what an Ultralytics YOLOv8 detection model computes:
    ``source`` is a checkpoint path (``.pt``, as Ultralytics' trainer or ``YOLO.save``
    writes it) or a model already in memory (a ``YOLO`` or its ``DetectionModel``). The
    result is in eval mode and on the CPU; its head outputs are raw (see
    :mod:`edgecompress.detect.model`). Anything other than a YOLOv8 detector is refused
    with a :class:`~edgecompress.errors.ConfigError` naming what was found."""
    where = str(source) if isinstance(source, str | Path) else f"{type(source).__name__} object"
    module = _load_checkpoint(Path(source)) if isinstance(source, str | Path) else source
    layers = _layers(module, where)
    _check_layout(layers, where)
    model = _build(layers, where)
    mapped = _Mapped(model, where)
    mapped.layers(layers)
    try:
        model.load_state_dict(mapped.state, strict=True)
    except RuntimeError as exc:  # a shape no YOLOv8 scale has (a pruned or edited model)
        raise ConfigError(
            f"{where}: its layer shapes are not those of a YOLOv8 scale ({exc}); supported: "
            f"{SUPPORTED}"
        ) from exc
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = mapped.eps[name]
        elif isinstance(m, ConvBNAct) and name in mapped.no_act:
            # An SPPF cv1 built with act=False (YOLO26's form; yolov8.yaml keeps SiLU).
            m.act = nn.Identity()  # type: ignore[assignment]
    return model.eval()


def is_ultralytics_checkpoint(path: Path) -> bool:
    """Does the torch checkpoint ``path`` pickle Ultralytics classes? Read from its pickle
    bytes, without unpickling (which would import ``ultralytics`` online)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(
                b"ultralytics" in archive.read(name)
                for name in archive.namelist()
                if name.endswith("data.pkl")
            )
    except (OSError, zipfile.BadZipFile):
        return False


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """``YOLO_OFFLINE=1`` while ``ultralytics`` is imported: it decides at import whether it
    is online (a DNS lookup) and would otherwise check for updates and send events."""
    before = os.environ.get("YOLO_OFFLINE")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("YOLO_OFFLINE", None)


def _import_ultralytics(where: str) -> None:
    try:
        with _offline():
            import ultralytics.nn.tasks  # noqa: F401  (registers the classes the pickle names)
    except ImportError as exc:
        missing = "ultralytics" if exc.name in (None, "ultralytics") else exc.name
        raise MissingToolchainError(
            f"{where}: reading an Ultralytics checkpoint needs the `ultralytics` package "
            f"({missing} could not be imported: {exc}); {INSTALL}"
        ) from exc


def _load_checkpoint(path: Path) -> nn.Module:
    """The model in an Ultralytics checkpoint: ``{"model": ..., "ema": ...}`` (the trainer
    saves the EMA weights, in half precision; a finished run's file has them as ``model``)
    or a pickled module."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file (an Ultralytics .pt checkpoint expected)")
    if path.suffix != ".pt":
        raise ModelLoadError(
            f"{path}: an Ultralytics checkpoint (.pt) expected; export other formats from "
            "the .pt, or pass the YOLO object itself"
        )
    _import_ultralytics(str(path))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            f"{path}: the checkpoint pickles module {exc.name!r}, which this Python cannot "
            "import: a model from the original YOLOv5 repository (anchor-based, not "
            f"supported) or from another ultralytics version; supported: {SUPPORTED}"
        ) from exc
    except (RuntimeError, EOFError, pickle.UnpicklingError, AttributeError) as exc:
        raise ModelLoadError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    if isinstance(ckpt, nn.Module):
        return ckpt
    if isinstance(ckpt, Mapping):
        for key in ("ema", "model"):
            if isinstance(ckpt.get(key), nn.Module):
                return ckpt[key]
    found = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
    raise ModelLoadError(
        f"{path}: no model in it (found {found}); an Ultralytics checkpoint holds the model "
        "under 'model' or 'ema'. A bare state_dict cannot be converted: load it into its "
        "Ultralytics model first and pass that"
    )


def _layers(source: nn.Module, where: str) -> list[Any]:
    """The numbered layers of a ``YOLO`` (its ``.model``) or ``DetectionModel`` (its
    ``.model``, an ``nn.Sequential``)."""
    inner = getattr(source, "model", None)
    if isinstance(inner, nn.Module) and not isinstance(inner, nn.Sequential):
        inner = getattr(inner, "model", None)  # a YOLO object wraps the DetectionModel
    if not isinstance(inner, nn.Sequential):
        raise ConfigError(
            f"{where}: not an Ultralytics model (no numbered layers in .model; got "
            f"{type(source).__name__}); supported: {SUPPORTED}"
        )
    return list(inner)


def _check_layout(layers: list[Any], where: str) -> None:
    names = [type(m).__name__ for m in layers]
    expected = [kind for kind, _, _ in _LAYOUT]
    froms = [getattr(m, "f", -1) for m in layers]
    if names == expected and froms == [f for _, _, f in _LAYOUT]:
        for i in (10, 13):
            up = layers[i]
            if getattr(up, "mode", None) != "nearest" or getattr(up, "scale_factor", 0) != 2:
                raise ConfigError(f"{where}: layer {i} is not a 2x nearest upsampling ({up})")
        head = layers[22]
        if getattr(head, "end2end", False) or getattr(head, "one2one_cv2", None) is not None:
            raise ConfigError(
                f"{where}: its Detect head is end-to-end (one-to-one, NMS-free); "
                f"supported: {SUPPORTED}"
            )
        return
    families = sorted({_FAMILIES[n] for n in names if n in _FAMILIES})
    found = (
        ", ".join(families)
        if families
        else "not yolov8.yaml's layer order: a P2/P6 or edited variant"
    )
    raise ConfigError(
        f"{where}: an Ultralytics model of {len(layers)} layers ({found}; head "
        f"{names[-1] if names else 'none'}, blocks {', '.join(sorted(set(names)))}) is not "
        f"supported; supported: {SUPPORTED}"
    )


def _build(layers: list[Any], where: str) -> YoloDetector:
    """Our detector of the same shape: the width multiple from layer 1 (128 channels at
    width 1; no scale clips it), the channel cap from the last stage, the depth multiple
    from layer 4 (6 repeats at depth 1)."""
    ch = [layers[i].conv.out_channels for i in (0, 1, 3, 5, 7)]
    reps = [len(layers[i].m) for i in (2, 4, 6, 8)]
    head = layers[22]
    nc, reg_max = int(head.nc), int(head.reg_max)
    width = ch[1] / 128
    cap = 1024 if _channels(1024, width, 1024) == ch[4] else round(ch[4] / width)
    depth = reps[1] / 6
    if [_channels(c, width, cap) for c in (64, 128, 256, 512, 1024)] != ch or reg_max < 2:
        raise ConfigError(
            f"{where}: backbone channels {ch} (reg_max {reg_max}) are not those of a YOLOv8 "
            f"scale (a width multiple of 64, 128, 256, 512, 1024, rounded up to 8, and "
            f"reg_max >= 2); pruned or edited models are not supported; supported: {SUPPORTED}"
        )
    model = YoloDetector(nc, width=width, depth=depth, reg_max=reg_max, max_channels=cap)
    ours = [len(cast(C2f, model.get_submodule(p)).blocks) for p in _C2F_PATHS]
    theirs = [len(layers[i].m) for i, (kind, _, _) in enumerate(_LAYOUT) if kind == "C2f"]
    if ours != theirs:
        raise ConfigError(
            f"{where}: C2f repeats {theirs} are not those of a YOLOv8 depth multiple "
            f"(found {reps} in the backbone); supported: {SUPPORTED}"
        )
    return model


_C2F_PATHS = [path for kind, path, _ in _LAYOUT if kind == "C2f"]

State = dict[str, Tensor]


def _f32(t: Tensor) -> Tensor:
    t = t.detach().to("cpu")
    return t.float() if t.is_floating_point() else t.clone()


class _Mapped:
    """Our state dict from Ultralytics' layers, one block at a time, checking each block's
    form against ours; with what a state dict does not hold: each batch norm's eps, and
    the convolutions that have no activation. Ultralytics' modules are typed ``Any``: their
    classes are not imported, their attributes are read and checked."""

    def __init__(self, model: YoloDetector, where: str) -> None:
        self.model, self.where = model, where
        self.state: State = {}
        self.eps: dict[str, float] = {}
        self.no_act: set[str] = set()

    def layers(self, layers: list[Any]) -> None:
        for i, (kind, path, _) in enumerate(_LAYOUT):
            at = f"layer {i} ({kind})"
            if kind == "Conv":
                self.conv(layers[i], path, at)
            elif kind == "C2f":
                self.c2f(layers[i], path, at)
            elif kind == "SPPF":
                self.sppf(layers[i], path, at)
            elif kind == "Detect":
                self.head(layers[i], at)

    def _fail(self, at: str, what: str) -> ConfigError:
        return ConfigError(f"{self.where}: {at}: {what}; supported: {SUPPORTED}")

    def _put(self, path: str, state: Mapping[str, Tensor], eps: float, act: bool) -> None:
        self.state.update({f"{path}.{k}": v for k, v in state.items()})
        self.eps[f"{path}.bn"] = eps
        if not act:
            self.no_act.add(path)

    def _conv_state(self, src: Any, path: str, at: str) -> tuple[State, float, bool]:
        """An Ultralytics Conv (conv, bn, act) as a ConvBNAct's state, its eps and whether
        it has an activation. A fused one (after ``fuse()``, as ``predict`` leaves it: the
        BN folded into a biased convolution) gets an identity batch norm carrying the bias."""
        dst = self.model.get_submodule(path)
        assert isinstance(dst, ConvBNAct)
        if type(src).__name__ != "Conv":
            raise self._fail(at, f"a Conv expected, found {type(src).__name__}")
        conv, bn, act = src.conv, getattr(src, "bn", None), getattr(src, "act", None)
        for attr in ("stride", "padding", "dilation", "groups"):
            theirs, ours = getattr(conv, attr), getattr(dst.conv, attr)
            if theirs != ours:
                raise self._fail(at, f"convolution {attr} {theirs}, YOLOv8 has {ours}")
        if not isinstance(act, nn.SiLU | nn.Identity):
            raise self._fail(at, f"activation {act}; SiLU (or none) expected")
        has_act = isinstance(act, nn.SiLU)
        if isinstance(bn, nn.BatchNorm2d):
            state = {
                "conv.weight": conv.weight,
                "bn.weight": bn.weight,
                "bn.bias": bn.bias,
                "bn.running_mean": bn.running_mean,
                "bn.running_var": bn.running_var,
                "bn.num_batches_tracked": bn.num_batches_tracked,
            }
            return {k: _f32(v) for k, v in state.items()}, float(bn.eps), has_act
        if bn is None and conv.bias is not None:
            eps, n = dst.bn.eps, int(conv.out_channels)
            state = {
                "conv.weight": _f32(conv.weight),
                "bn.weight": torch.ones(n),
                "bn.bias": _f32(conv.bias),
                "bn.running_mean": torch.zeros(n),
                "bn.running_var": torch.full((n,), 1.0 - eps),  # (x - 0) / sqrt(var + eps) = x
                "bn.num_batches_tracked": torch.tensor(0),
            }
            return state, eps, has_act
        raise self._fail(at, "a Conv with neither a batch norm nor a fused bias")

    def conv(self, src: Any, path: str, at: str) -> None:
        self._put(path, *self._conv_state(src, path, at))

    def c2f(self, src: Any, path: str, at: str) -> None:
        dst = self.model.get_submodule(path)
        assert isinstance(dst, C2f)
        # Ultralytics' C2f.forward: y = cv1(x).chunk(2, 1); y[0] goes to the concatenation,
        # y[1] through the bottlenecks; ours: cv_skip(x) and cv_in(x).
        state, eps, act = self._conv_state(src.cv1, f"{path}.cv_skip", f"{at} cv1")
        if state["conv.weight"].shape[0] % 2:
            raise self._fail(at, "cv1 has an odd channel count, it cannot be split in two")
        halves = {k: v.chunk(2, 0) if v.ndim else (v, v.clone()) for k, v in state.items()}
        self._put(f"{path}.cv_skip", {k: h[0] for k, h in halves.items()}, eps, act)
        self._put(f"{path}.cv_in", {k: h[1] for k, h in halves.items()}, eps, act)
        for j, (theirs, ours) in enumerate(zip(src.m, dst.blocks, strict=True)):
            if type(theirs).__name__ != "Bottleneck" or bool(theirs.add) != ours.shortcut:
                raise self._fail(
                    f"{at} m.{j}",
                    f"a Bottleneck with shortcut={ours.shortcut} expected, found "
                    f"{type(theirs).__name__} (add={getattr(theirs, 'add', None)})",
                )
            self.conv(theirs.cv1, f"{path}.blocks.{j}.cv1", f"{at} m.{j}.cv1")
            self.conv(theirs.cv2, f"{path}.blocks.{j}.cv2", f"{at} m.{j}.cv2")
        self.conv(src.cv2, f"{path}.cv_out", f"{at} cv2")

    def sppf(self, src: Any, path: str, at: str) -> None:
        k = getattr(src.m, "kernel_size", None)
        if k != 5 or getattr(src, "n", 3) != 3 or getattr(src, "add", False):
            raise self._fail(at, "an SPPF of three 5x5 pools without a shortcut expected")
        self.conv(src.cv1, f"{path}.cv_in", f"{at} cv1")
        self.conv(src.cv2, f"{path}.cv_out", f"{at} cv2")

    def head(self, src: Any, at: str) -> None:
        # Detect: cv2[i] is level i's box branch (4 * reg_max DFL bins), cv3[i] its class one.
        for ours, theirs, branches in (("box", "cv2", src.cv2), ("cls", "cv3", src.cv3)):
            for i, branch in enumerate(branches):
                kinds = [type(m).__name__ for m in branch]
                if kinds != ["Conv", "Conv", "Conv2d"] or branch[2].bias is None:
                    raise self._fail(
                        f"{at} {theirs}.{i}",
                        f"layers {kinds}; YOLOv8's Detect has Conv, Conv, Conv2d with a bias "
                        "(a depthwise class branch is YOLO11's head)",
                    )
                path = f"head.{ours}.{i}"
                self.conv(branch[0], f"{path}.0", f"{at} {theirs}.{i}.0")
                self.conv(branch[1], f"{path}.1", f"{at} {theirs}.{i}.1")
                self.state[f"{path}.2.weight"] = _f32(branch[2].weight)
                self.state[f"{path}.2.bias"] = _f32(branch[2].bias)
