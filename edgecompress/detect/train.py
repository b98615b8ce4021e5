"""Training the YOLOv8-style detector, and measuring it the same way in every runtime.

Every runtime sees the same input: the image letterboxed by :func:`detector_preprocess`
(RGB, pixels / 255, grey padding) and the same head outputs decoded by the same NumPy
post-processing (:func:`edgecompress.runtime.detect_post.decode_yolov8`), scored by
pycocotools (:func:`edgecompress.detect.metrics.detection_metrics`). So the mAP of a
PyTorch module and of its ONNX export differ only by what the runtimes compute.

>>> model = fashion_detector()
>>> result = train_detector(model, sets["train"], sets["val"], DetectorTrainConfig(epochs=30))
... # doctest: +SKIP
>>> export_detector_onnx(model, 160, "det.onnx", check_on=sets["val"])  # doctest: +SKIP
>>> evaluate_detector("det.onnx", sets["test"], 160).map50_95  # doctest: +SKIP
0.62
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecompress.calibration.preprocess import ChannelOrder, PreprocessSpec, ResizeMode
from edgecompress.detect.data import DetectionSet, letterbox_geometry, load_image, to_letterbox
from edgecompress.detect.distill import DetectDistillConfig, DetectionDistiller
from edgecompress.detect.loss import DetectionLoss, LossConfig, Targets
from edgecompress.detect.metrics import DetectionMetrics, detection_metrics
from edgecompress.detect.model import YoloDetector, split_outputs
from edgecompress.exporters.onnx import OnnxExport, check_parity, export_onnx, parity_metrics
from edgecompress.progress import progress
from edgecompress.runtime.detect_post import Detections, Letterbox, PostConfig, decode_yolov8

# How mAP is measured (YOLOv8's validation settings): every (box, class) above 0.001,
# class-aware NMS at IoU 0.7, at most 300 per image before COCO's 100.
MAP_POST = PostConfig(conf=0.001, iou=0.7, max_det=300, multi_label=True)
MAX_STRIDE = 32

# A function that runs the model: a (N, 3, H, W) float32 batch -> the head's outputs.
Runner = Callable[[np.ndarray], Sequence[np.ndarray]]


def detector_preprocess(size: int) -> PreprocessSpec:
    """The detector's preprocessing: letterbox to ``size`` x ``size`` (grey 114 padding),
    RGB, pixels / 255 (mean 0, std 1), NCHW."""
    if size <= 0 or size % MAX_STRIDE:
        raise ValueError(
            f"detector input size {size}: must be a positive multiple of {MAX_STRIDE} (the "
            "coarsest stride), e.g. 160, 320, 640"
        )
    return PreprocessSpec(
        input_size=(size, size),
        resize=ResizeMode.letterbox,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        channel_order=ChannelOrder.rgb,
    )


def detector_input(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """One image as the model's input (3 x size x size, float32) and its letterbox."""
    spec = detector_preprocess(size)
    h, w = image_bgr.shape[:2]
    return spec.normalize(spec.prepare(image_bgr)), letterbox_geometry(w, h, size)


# -- training ----------------------------------------------------------------------------


class Optimizer(StrEnum):
    sgd = "sgd"
    adamw = "adamw"


@dataclass(frozen=True)
class DetectorTrainConfig:
    """How :func:`train_detector` trains. ``lr`` is the peak (after warm-up), decayed by a
    cosine to ``lr * final_lr`` (the default suits AdamW; SGD's has not been tuned here);
    ``ema`` the decay of the weight average that is validated and kept (0: the raw
    weights)."""

    epochs: int = 30
    size: int = 160
    batch_size: int = 16
    optimizer: Optimizer = Optimizer.adamw
    lr: float = 2e-3
    final_lr: float = 0.05
    momentum: float = 0.937  # SGD momentum, AdamW beta1
    weight_decay: float = 5e-4  # convolution weights only, not norms or biases
    warmup_epochs: float = 1.0
    flip: float = 0.5  # probability of a horizontal flip
    ema: float = 0.999
    ema_ramp: int = 200  # the EMA's decay ramps up over about this many steps
    grad_clip: float = 10.0
    eval_every: int = 1  # validate every this many epochs (and after the last)
    loss: LossConfig = field(default_factory=LossConfig)
    post: PostConfig = MAP_POST
    seed: int = 0
    progress: bool = True


@dataclass
class DetectorTrainResult:
    """Per epoch: mean losses, learning rate, seconds, and val mAP where validated. The
    model holds the weights of ``best_epoch`` (the best val mAP@0.5:0.95).

    With a teacher, ``loss`` is the whole objective, ``distill`` its weighted distillation
    part, and each distillation term (unweighted) has its own key: ``fgd_fg``, ``fgd_bg``,
    ``fgd_att``, ``fgd_global``, ``kd_cls``, ``kd_dfl``."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: DetectionMetrics | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class _Prepared:
    """A split letterboxed once: uint8 RGB images (N, S, S, 3); per image its boxes in
    input pixels and classes (crowd regions left out)."""

    images: np.ndarray
    boxes: list[np.ndarray]
    classes: list[np.ndarray]


def _prepare(data: DetectionSet, size: int) -> _Prepared:
    spec = detector_preprocess(size)
    images, boxes, classes = [], [], []
    for im in data.images:
        images.append(spec.prepare(load_image(im.path)))
        lb = letterbox_geometry(im.width, im.height, size)
        keep = ~im.crowd
        boxes.append(to_letterbox(im.boxes[keep], lb).astype(np.float32))
        classes.append(im.classes[keep])
    return _Prepared(np.stack(images), boxes, classes)


class _Ema:
    """An exponential moving average of a model's weights (and its norms' statistics)."""

    def __init__(self, model: nn.Module, decay: float, ramp: int) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1.0 - math.exp(-self.updates / self.ramp))
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src[k].detach(), alpha=1.0 - d)
            else:
                v.copy_(src[k])


def _optimizer(params: Sequence[nn.Parameter], cfg: DetectorTrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    if cfg.optimizer is Optimizer.sgd:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def _lr_factor(step: int, total: int, warmup: int, final: float) -> float:
    warm = min(1.0, (step + 1) / max(warmup, 1))
    cos = final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    return warm * cos


def _batch(data: _Prepared, idx: np.ndarray, flip: np.ndarray) -> tuple[torch.Tensor, Targets]:
    """Images ``idx`` as a float batch, those marked in ``flip`` mirrored (and their boxes)."""
    images = data.images[idx]
    images[flip] = images[flip, :, ::-1]
    width = images.shape[2]
    boxes = []
    for j, f in zip(idx.tolist(), flip.tolist(), strict=True):
        b = data.boxes[j]
        boxes.append(np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1) if f else b)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return x, Targets.from_lists(boxes, [data.classes[j] for j in idx.tolist()])


class _Steps:
    """The optimisation state of one run: optimizer, EMA, schedule, shuffling."""

    def __init__(
        self,
        model: YoloDetector,
        data: _Prepared,
        cfg: DetectorTrainConfig,
        distiller: DetectionDistiller | None = None,
    ) -> None:
        self.model, self.data, self.cfg, self.distiller = model, data, cfg, distiller
        self.loss_fn = DetectionLoss(model.num_classes, model.reg_max, model.strides, cfg.loss)
        # The distiller's adapters and GcBlocks train beside the student.
        self.params = list(model.parameters())
        if distiller is not None:
            self.params += list(distiller.parameters())
        self.opt = _optimizer(self.params, cfg)
        self.ema = _Ema(model, cfg.ema, cfg.ema_ramp) if cfg.ema > 0 else None
        self.rng = np.random.default_rng(cfg.seed)
        self.per_epoch = math.ceil(len(data.images) / cfg.batch_size)
        self.total = cfg.epochs * self.per_epoch
        self.warmup = round(cfg.warmup_epochs * self.per_epoch)
        self.step = 0

    def epoch(self, desc: str) -> dict[str, float]:
        """One pass over the shuffled training images: the mean losses and the last lr."""
        cfg, model = self.cfg, self.model
        model.train()
        order = self.rng.permutation(len(self.data.images))
        sums = {"loss": 0.0, "box": 0.0, "cls": 0.0, "dfl": 0.0, "lr": 0.0}
        starts = range(0, len(order), cfg.batch_size)
        with progress(starts, total=self.per_epoch, desc=desc, enabled=cfg.progress) as bar:
            for i in bar:
                idx = order[i : i + cfg.batch_size]
                x, targets = _batch(self.data, idx, self.rng.random(len(idx)) < cfg.flip)
                lr = cfg.lr * _lr_factor(self.step, self.total, self.warmup, cfg.final_lr)
                for group in self.opt.param_groups:
                    group["lr"] = lr
                loss, parts = self._loss(x, targets)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                self.opt.step()
                if self.ema is not None:
                    self.ema.update(model)
                self.step += 1
                for k, v in (("loss", loss.item()), *parts.items()):
                    sums[k] = sums.get(k, 0.0) + v / self.per_epoch
                sums["lr"] = lr
                bar.set_postfix_str(f"loss {loss.item():.3f}")
        return sums

    def _loss(self, x: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, dict[str, float]]:
        """The detection loss, plus the distillation terms when there is a teacher."""
        if self.distiller is None:
            return self.loss_fn(self.model(x), targets)
        step = self.distiller(x, targets)
        loss, parts = self.loss_fn(step.outputs, targets)
        return loss + step.loss, {**parts, "distill": step.loss.item(), **step.parts}


def train_detector(
    model: YoloDetector,
    train_set: DetectionSet,
    val_set: DetectionSet,
    cfg: DetectorTrainConfig | None = None,
    *,
    teacher: YoloDetector | None = None,
    distill: DetectDistillConfig | None = None,
) -> DetectorTrainResult:
    """Train ``model`` on ``train_set``; validate on ``val_set`` and keep the epoch with the
    best mAP@0.5:0.95 (of the EMA weights when ``cfg.ema``). The test split is never seen
    here.

    With a ``teacher`` (run frozen, in eval mode; same classes and DFL bins), the
    distillation of :mod:`edgecompress.detect.distill` (``distill``, or its defaults) is
    added to the detection loss: FGD on the neck's outputs and KL on the head's."""
    cfg = cfg or DetectorTrainConfig()
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}")
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError("train_detector needs images in both the train and the val set")
    if distill is not None and teacher is None:
        raise ValueError("train_detector: a distill config was given without a teacher")
    start = time.perf_counter()
    distiller = DetectionDistiller(model, teacher, distill) if teacher is not None else None
    steps = _Steps(model, _prepare(train_set, cfg.size), cfg, distiller)
    result, best_state = DetectorTrainResult(), None
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        row = {"epoch": float(epoch), **steps.epoch(f"detect: epoch {epoch}/{cfg.epochs}")}
        row["seconds"] = time.perf_counter() - t0
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            judged = steps.ema.module if steps.ema is not None else model
            val = evaluate_detector(judged, val_set, cfg.size, cfg.post)
            row.update(val_map50=val.map50, val_map50_95=val.map50_95)
            if result.best_val is None or val.map50_95 > result.best_val.map50_95:
                result.best_epoch, result.best_val = epoch, val
                best_state = copy.deepcopy(judged.state_dict())
        result.history.append(row)
    assert best_state is not None  # the last epoch is always validated
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


# -- evaluation in any runtime -----------------------------------------------------------


def torch_runner(model: nn.Module) -> Runner:
    """Run a PyTorch module in eval mode (its mode is restored after each call)."""

    def run(x: np.ndarray) -> list[np.ndarray]:
        was = model.training
        model.eval()
        try:
            with torch.inference_mode():
                return [o.float().numpy() for o in model(torch.from_numpy(x))]
        finally:
            model.train(was)

    return run


def onnx_runner(path: Path | str, threads: int = 1) -> Runner:
    """Run an ONNX file in ONNX Runtime (CPU), at its own static batch size."""
    from edgecompress.exporters.onnx import ort_session

    sess = ort_session(Path(path), threads)
    meta = sess.get_inputs()[0]
    static = meta.shape[0] if isinstance(meta.shape[0], int) else None

    def run(x: np.ndarray) -> list[np.ndarray]:
        step = static or len(x)
        if len(x) % step:
            raise ValueError(
                f"{path}: the model takes batches of {step}, got {len(x)} images; export it "
                "with batch 1 or feed multiples of its batch"
            )
        outs = [sess.run(None, {meta.name: x[i : i + step]}) for i in range(0, len(x), step)]
        return [np.concatenate(parts) for parts in zip(*outs, strict=True)]

    return run


def decode_head_outputs(
    outputs: Sequence[np.ndarray],
    letterboxes: Sequence[Letterbox],
    size: int,
    post: PostConfig = MAP_POST,
) -> list[Detections]:
    """The head's outputs for a batch (each ``(N, C, H, W)``, box levels then class levels)
    decoded by :func:`decode_yolov8` into each image's original pixels. The strides are
    read from the output sizes, so any runtime's outputs decode the same way."""
    boxes, classes = split_outputs(list(outputs))
    strides = [size // b.shape[2] for b in boxes]
    return [
        decode_yolov8([b[j] for b in boxes], [c[j] for c in classes], strides, post, lb)
        for j, lb in enumerate(letterboxes)
    ]


def predict_detections(
    run: Runner,
    dataset: DetectionSet,
    size: int,
    post: PostConfig = MAP_POST,
    batch_size: int = 16,
) -> dict[int, Detections]:
    """Every image of ``dataset`` letterboxed to ``size``, run by ``run``, decoded by
    :func:`decode_head_outputs`: image id -> detections in its original pixels."""
    out: dict[int, Detections] = {}
    for i in range(0, len(dataset), batch_size):
        chunk = dataset.images[i : i + batch_size]
        inputs = [detector_input(load_image(im.path), size) for im in chunk]
        outs = run(np.stack([x for x, _ in inputs]))
        dets = decode_head_outputs(outs, [lb for _, lb in inputs], size, post)
        out.update((im.image_id, d) for im, d in zip(chunk, dets, strict=True))
    return out


def evaluate_detector(
    model: nn.Module | Path | str,
    dataset: DetectionSet,
    size: int,
    post: PostConfig = MAP_POST,
    batch_size: int = 16,
    threads: int = 1,
) -> DetectionMetrics:
    """mAP of a PyTorch module, or of an ONNX file run by ONNX Runtime, on ``dataset``:
    the same inputs, post-processing and scoring for both."""
    run = torch_runner(model) if isinstance(model, nn.Module) else onnx_runner(model, threads)
    return detection_metrics(dataset, predict_detections(run, dataset, size, post, batch_size))


# -- export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorExport:
    """The ONNX file and, when checked, its parity with PyTorch on real images (max abs
    diff and cosine, worst over the head outputs)."""

    onnx: OnnxExport
    parity: dict[str, float] | None


def export_detector_onnx(
    model: nn.Module,
    size: int,
    path: Path | str,
    *,
    check_on: DetectionSet | None = None,
    images: int = 4,
    exporter: str = "auto",
    opset: int = 18,
    max_abs_diff: float = 1e-3,
    min_cosine: float = 0.99999,
) -> DetectorExport:
    """Export the detector cut before its decoding (batch 1, ``size`` x ``size``; outputs
    as :meth:`~edgecompress.detect.model.YoloDetector.forward`'s). With ``check_on``, its
    first ``images`` images are run by PyTorch and ONNX Runtime and the head outputs
    compared; a mismatch raises :class:`~edgecompress.errors.ParityError`."""
    path = Path(path)
    model.eval()
    example = torch.zeros(1, 3, size, size)
    if check_on is not None and len(check_on):
        example = torch.from_numpy(detector_input(load_image(check_on.images[0].path), size)[0])[
            None
        ]
    exported = export_onnx(model, example, path, opset=opset, exporter=exporter)
    if check_on is None or not len(check_on):
        return DetectorExport(exported, None)
    x = np.stack([detector_input(load_image(im.path), size)[0] for im in check_on.images[:images]])
    ref = torch_runner(model)(x)
    got = onnx_runner(path)(x)
    metrics = parity_metrics(list(ref), list(got))
    check_parity(
        f"{path} (detector head)",
        metrics,
        max_abs_diff=max_abs_diff,
        min_cosine=min_cosine,
        options="export_detector_onnx",
        inputs=f"{len(x)} letterboxed images of the check set",
    )
    return DetectorExport(exported, metrics)
