"""The detector through the whole chain: prune -> distil -> QAT -> INT8 ONNX and RKNN ->
mAP in every runtime -> host latency. ``edgecompress detect`` runs it; without a MODEL, on
the built-in example (``make demo-detect``).

Every mAP in the report is on the test split, read after all choices were made: best
epochs (recovery, QAT) are picked on val; calibration images come from train. The same
letterbox, NumPy decoding (:func:`~edgecompress.runtime.detect_post.decode_yolov8`) and
pycocotools scoring serve PyTorch, ONNX Runtime and the RKNN simulator.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from edgecompress.detect.compress import (
    HEAD_LAST,
    export_detector_qdq,
    prune_detector,
    quantize_detector,
)
from edgecompress.detect.data import DetectionSet
from edgecompress.detect.deploy import rknn_detector
from edgecompress.detect.metrics import DetectionMetrics
from edgecompress.detect.model import YoloDetector, fashion_detector
from edgecompress.detect.train import (
    DetectorTrainConfig,
    evaluate_detector,
    export_detector_onnx,
    train_detector,
)
from edgecompress.errors import ConfigError
from edgecompress.io import atomic_write_json, atomic_write_text, temp_path_for
from edgecompress.measure import count_macs
from edgecompress.quantize.config import Rung
from edgecompress.report.markdown import table
from edgecompress.timing import interleaved_p50

EXAMPLE_NAME = "fashion_detect_model"
VAL_SHARE = 0.1  # of train, carved (every 10th image) when a data set has no val split
EXAMPLE_TRAIN = DetectorTrainConfig(epochs=35, size=160, batch_size=16, seed=0, progress=True)


def _example_settings(sizes: dict[str, int]) -> dict[str, Any]:
    cfg = asdict(EXAMPLE_TRAIN)
    cfg.pop("progress")
    return json.loads(
        json.dumps(
            {"model": "fashion_detector", "data_sizes": sizes, "torch_seed": 0, "train": cfg},
            default=str,
        )
    )


def example_detector(
    sets: dict[str, DetectionSet], cache: Path, sizes: dict[str, int], progress: bool = True
) -> tuple[YoloDetector, dict[str, Any]]:
    """The example detector trained with :data:`EXAMPLE_TRAIN` on ``sets`` (about 15
    minutes on two cores), cached in ``cache`` with its training record and reused while
    the record names the same settings."""
    weights, record_path = cache / f"{EXAMPLE_NAME}.pt", cache / f"{EXAMPLE_NAME}.json"
    model = fashion_detector()
    settings = _example_settings(sizes)
    if weights.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("settings") == settings:
            model.load_state_dict(torch.load(weights, weights_only=True))
            return model.eval(), record
    torch.manual_seed(0)
    res = train_detector(
        model, sets["train"], sets["val"], replace(EXAMPLE_TRAIN, progress=progress)
    )
    assert res.best_val is not None
    record = {
        "settings": settings,
        "best_epoch": res.best_epoch,
        "train_s": res.seconds,
        "best_val_map50": res.best_val.map50,
        "best_val_map50_95": res.best_val.map50_95,
        "history": res.history,
    }
    cache.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(weights)
    torch.save(model.state_dict(), tmp)
    tmp.replace(weights)
    atomic_write_json(record_path, record)
    return model.eval(), record


def load_detector(path: Path) -> YoloDetector:
    """A detector from a file: an Ultralytics YOLOv8 detection checkpoint (converted by
    :func:`~edgecompress.detect.ultralytics.from_ultralytics`) or a ``torch.save``d
    :class:`YoloDetector`. Both are pickles: load only files you trust."""
    from edgecompress.detect.ultralytics import from_ultralytics, is_ultralytics_checkpoint
    from edgecompress.errors import ModelLoadError

    if is_ultralytics_checkpoint(path):
        return from_ultralytics(path)
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: not a loadable detector checkpoint ({str(exc).splitlines()[0][:200]}); "
            "give an Ultralytics YOLOv8 .pt or a torch.save'd YoloDetector"
        ) from exc
    if not isinstance(model, YoloDetector):
        raise ModelLoadError(
            f"{path}: holds a {type(model).__name__}, not a YoloDetector or an Ultralytics "
            "YOLOv8 detection checkpoint"
        )
    return model.eval()


def read_detection_data(root: Path) -> dict[str, DetectionSet]:
    """A detection data set's train, val and test splits: COCO (``annotations/`` beside
    the split folders) or YOLO txt labels. Without a val split, every 10th train image
    becomes val (deterministic); a test split is required, since it is the only one the
    reported mAP may come from."""
    from edgecompress.detect.coco import read_coco_splits
    from edgecompress.detect.yolo import read_yolo, split_folders
    from edgecompress.errors import DataError

    root = Path(root)
    if (root / "annotations").is_dir():
        sets = read_coco_splits(root)
    else:
        sets = {}
        for split in ("train", "val", "test"):
            try:
                split_folders(root, split)
            except DataError:
                continue
            sets[split] = read_yolo(root, split)
    if "train" not in sets or "test" not in sets:
        raise ConfigError(
            f"{root}: detection data needs a train and a test split (found: "
            f"{', '.join(sets) or 'none'}); COCO as annotations/instances_<split>.json, or "
            "YOLO as images/<split>/ beside labels/<split>/"
        )
    if "val" not in sets:
        train = sets["train"].images
        step = round(1 / VAL_SHARE)
        sets["val"] = DetectionSet(train[::step], sets["train"].class_names)
        sets["train"] = DetectionSet(
            tuple(im for i, im in enumerate(train) if i % step), sets["train"].class_names
        )
    names = {s: d.class_names for s, d in sets.items()}
    if len(set(names.values())) != 1:
        raise ConfigError(f"{root}: the splits name different classes: {names}")
    return sets


@dataclass(frozen=True)
class DetectBuildConfig:
    """What :func:`build_detector` does. ``keep`` is the MAC budget (a ceiling);
    ``recover`` trains the pruned model (with the original as FGD teacher when ``distill``),
    ``qat_epochs`` the INT8 QAT; ``rknn`` converts for ``platform`` in the simulator.
    ``allocation`` is how the budget is spread over the layers: ``global`` (one L1 ranking)
    or ``latency`` (each layer's share from timing it pruned on this host's ONNX Runtime)."""

    size: int = 160
    keep: float = 0.6
    align: int = 8
    allocation: str = "global"
    recover: DetectorTrainConfig = field(
        default_factory=lambda: DetectorTrainConfig(epochs=60, size=160, lr=2e-3, warmup_epochs=1.0)
    )
    qat_epochs: int = 3
    qat_lr: float = 1e-4
    qat_distill: bool = True  # the original's head outputs distilled into the QAT model
    distill: bool = True
    keep_layers: tuple[str, ...] = HEAD_LAST
    rknn: bool = True
    platform: str = "rk3588"
    calibration: int = 64
    latency_rounds: int = 3
    progress: bool = True


def _map(m: DetectionMetrics) -> dict[str, float]:
    return {"map50": 100 * m.map50, "map50_95": 100 * m.map50_95}


def build_detector(
    model: nn.Module,
    sets: dict[str, DetectionSet],
    out: Path,
    cfg: DetectBuildConfig | None = None,
) -> dict[str, Any]:
    """Compress ``model`` (a trained YOLO-style detector) for the host and ``cfg.platform``
    and write ``out/report.json`` and ``out/report.md``; returns the report."""
    cfg = cfg or DetectBuildConfig()
    for split in ("train", "val", "test"):
        if split not in sets or not len(sets[split]):
            raise ConfigError(
                f"detect build: the data set has no {split!r} images; it needs train (training "
                "and calibration), val (best epochs) and test (the reported mAP)"
            )
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", "report.md"):  # an earlier run's: rewritten at the end
        (out / stale).unlink(missing_ok=True)
    size, test = cfg.size, sets["test"]
    example = torch.zeros(1, 3, size, size)
    report: dict[str, Any] = {"config": json.loads(json.dumps(asdict(cfg), default=str))}
    report["splits"] = {k: len(v) for k, v in sets.items()}
    started = time.perf_counter()
    model = model.eval()
    macs0, params0 = count_macs(model, example)

    # 1. The original, and its FP32 ONNX (parity-checked on val images).
    fp_onnx = out / "original_fp32.onnx"
    export_detector_onnx(model, size, fp_onnx, check_on=sets["val"])
    stages: list[dict[str, Any]] = [
        {
            "stage": "original FP32",
            "macs": macs0,
            "params": params0,
            "pytorch": _map(evaluate_detector(model, test, size)),
            "onnxruntime": _map(evaluate_detector(fp_onnx, test, size)),
        }
    ]

    # 2. Prune (head outputs never), 3. recover with the original as teacher.
    pruned, plan = prune_detector(
        model,
        size,
        keep=cfg.keep,
        align=cfg.align,
        allocation=cfg.allocation,
        progress=cfg.progress,
    )
    plan.save(out / "prune_plan.json")
    macs1, params1 = count_macs(pruned, example)
    teacher = cast(YoloDetector, model) if cfg.distill else None
    rec = train_detector(
        pruned,  # type: ignore[arg-type]  # pruning keeps the YoloDetector class
        sets["train"],
        sets["val"],
        replace(cfg.recover, size=size, progress=cfg.progress),
        teacher=teacher,
    )
    # The recovered float model, kept whole (a pickled YoloDetector: `edgecompress detect`
    # takes it as MODEL) before QAT, so a failure later loses no training.
    recovered = out / "recovered_fp32.pt"
    tmp = temp_path_for(recovered)
    torch.save(pruned, tmp)
    tmp.replace(recovered)
    stages.append(
        {
            "stage": f"pruned ({cfg.allocation}) to {macs1 / macs0:.0%} MACs + "
            f"{cfg.recover.epochs} epoch(s) "
            + ("FGD distillation" if cfg.distill else "fine-tuning"),
            "macs": macs1,
            "params": params1,
            "best_epoch": rec.best_epoch,
            "pytorch": _map(evaluate_detector(pruned, test, size)),
        }
    )

    # 4. INT8 QAT, the head's last convolutions kept at 8 bits on any lower rung.
    qat_cfg = replace(
        cfg.recover, epochs=cfg.qat_epochs, lr=cfg.qat_lr, warmup_epochs=0.0, ema=0.0,
        size=size, progress=cfg.progress,
    )  # fmt: skip
    quant = quantize_detector(
        pruned,
        sets["train"],
        sets["val"],
        rungs=(Rung(w_bits=8, a_bits=8, epochs=cfg.qat_epochs),),
        keep=cfg.keep_layers,
        train=qat_cfg,
        teacher=cast(YoloDetector, model) if cfg.qat_distill else None,
        calibration_images=cfg.calibration,
    )
    qdq = export_detector_qdq(quant.model, sets["train"], size, out / "model_int8.onnx")
    row: dict[str, Any] = {
        "stage": f"+ INT8 QAT ({cfg.qat_epochs} epoch(s)"
        + (", response KD)" if cfg.qat_distill else ")"),
        "macs": macs1,
        "params": params1,
        "pytorch": _map(evaluate_detector(quant.model, test, size)),
        "onnxruntime": _map(evaluate_detector(qdq, test, size)),
    }
    stages.append(row)

    # 5. The RKNN simulator runs the QDQ file as it is (QAT's ranges, no recalibration).
    if cfg.rknn:
        rk = rknn_detector(
            qdq, out / f"model_{cfg.platform}.rknn", sets["train"], test, quantize=False,
            platform=cfg.platform, progress=cfg.progress,
        )  # fmt: skip
        row["rknn_simulator"] = _map(rk.metrics)
        report["rknn"] = {"platform": cfg.platform, "decode_ms_per_image": rk.decode_ms_per_image}

    # 6. Host latency of the original FP32 and the final INT8 file, in the same run.
    fp_ms, int8_ms = interleaved_p50([fp_onnx, qdq], cfg.latency_rounds)
    report["latency"] = {
        "runtime": "onnxruntime, 1 thread, batch 1",
        "original_fp32_p50_ms": fp_ms,
        "final_int8_p50_ms": int8_ms,
        "speedup": fp_ms / int8_ms,
    }
    report["stages"] = stages
    report["quantization"] = {"kept_layers": quant.kept, "rungs": quant.rungs}
    report["recovery"] = rec.history
    first, last = stages[0], stages[-1]
    report["summary"] = {
        "macs_ratio": macs1 / macs0,
        "map50_95_original": first["pytorch"]["map50_95"],
        "map50_95_final_onnxruntime": last["onnxruntime"]["map50_95"],
        "map50_95_lost": first["pytorch"]["map50_95"] - last["onnxruntime"]["map50_95"],
    }
    report["seconds"] = time.perf_counter() - started
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    return report


def report_markdown(report: dict[str, Any]) -> str:
    """The stages as one table: MACs, parameters and test mAP in every runtime."""

    def cell(stage: dict[str, Any], key: str) -> str:
        m = stage.get(key)
        return f"{m['map50_95']:.2f} ({m['map50']:.2f})" if m else "-"

    base = report["stages"][0]["macs"]
    rows = [
        [
            s["stage"],
            f"{s['macs'] / 1e6:.1f}M ({s['macs'] / base:.0%})",
            f"{s['params'] / 1e6:.3f}M",
            cell(s, "pytorch"),
            cell(s, "onnxruntime"),
            cell(s, "rknn_simulator"),
        ]
        for s in report["stages"]
    ]
    lat = report["latency"]
    summary = report["summary"]
    splits = ", ".join(f"{k} {v}" for k, v in report["splits"].items())
    return (
        "# Detector build\n\n"
        f"Test mAP@0.5:0.95 (mAP@0.5), pycocotools, on the test split ({splits} images).\n\n"
        + table(rows, ["stage", "MACs", "params", "PyTorch", "ONNX Runtime", "RKNN simulator"])
        + f"\n\nHost latency ({lat['runtime']}): original FP32 p50 "
        f"{lat['original_fp32_p50_ms']:.2f} ms, final INT8 {lat['final_int8_p50_ms']:.2f} ms "
        f"({lat['speedup']:.2f}x faster).\n\n"
        f"Final INT8 vs original: {summary['macs_ratio']:.0%} of the MACs, "
        f"{summary['map50_95_lost']:.2f} points of mAP@0.5:0.95 lost (ONNX Runtime INT8 vs "
        "PyTorch FP32; negative: gained).\n"
    )
