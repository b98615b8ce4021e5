"""Issue 17, done means: the example detector through the whole chain (``edgecompress
detect``, as ``make demo-detect`` runs it): pruned to at most 60% of its MACs, recovered
with FGD from the original, INT8 QAT, and its test mAP in PyTorch, ONNX Runtime INT8 and
the RKNN simulator in one table.

``python -m benchmarks.detect_pipeline`` runs the chain (about 20 minutes here after the
cached example training) into ``<cache>/detect_pipeline/`` and writes the section;
``python -m benchmarks.detect_pipeline REPORT.json`` writes it from a finished run's
report (``out/demo-detect/report.json``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine, write_section
from edgecompress.calibration.fashion_mnist import default_cache
from edgecompress.detect.coco import read_coco_splits
from edgecompress.detect.example import SIZES, ensure_fashion_detect
from edgecompress.detect.pipeline import (
    DetectBuildConfig,
    build_detector,
    example_detector,
    report_markdown,
)

MAC_GOAL = 0.60  # at most this share of the original's MACs
MAP_GOAL = 2.0  # points of test mAP@0.5:0.95 lost, at most
RUNTIME_GOAL = 1.0  # points between PyTorch, ONNX Runtime INT8 and the RKNN simulator


def section(report: dict[str, Any]) -> str:
    final = report["stages"][-1]
    maps = [
        final[k]["map50_95"] for k in ("pytorch", "onnxruntime", "rknn_simulator") if k in final
    ]
    spread = max(maps) - min(maps)
    summary = report["summary"]
    lost, ratio = summary["map50_95_lost"], summary["macs_ratio"]
    met = ratio <= MAC_GOAL and lost <= MAP_GOAL

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    body = report_markdown(report).split("\n", 2)[2]  # without its title
    cfg = report["config"]
    return (
        f"Machine: {machine()}; torch {torch.__version__}. Another job shared the two cores "
        "while this ran. `edgecompress detect` (as `make demo-detect` runs it) on the example "
        f"detector: prune to {cfg['keep']} of the MACs (L1, global ranking, widths aligned to "
        f"{cfg['align']}; the six head output convolutions never), recover "
        f"{cfg['recover']['epochs']} epochs (lr {cfg['recover']['lr']}) with "
        f"{'FGD + response KD from the original' if cfg['distill'] else 'fine-tuning'}, "
        f"INT8 QAT {cfg['qat_epochs']} epochs (lr {cfg['qat_lr']}"
        f"{', the original head distilled into it' if cfg.get('qat_distill') else ''}), QDQ "
        "export, the RKNN "
        f"simulator ({cfg['platform']}) running the QDQ file's ranges. One run, "
        f"{report['seconds'] / 60:.0f} min.\n\n"
        + body
        + f"\nGoals (issue 17): the runtimes within {RUNTIME_GOAL:.0f} point of each other: "
        f"{verdict(spread <= RUNTIME_GOAL)} ({spread:.2f}); pruned + distilled + QAT within "
        f"{MAP_GOAL:.0f} points of the original at no more than {MAC_GOAL:.0%} of its MACs: "
        f"{verdict(met)} ({lost:.2f} points at {ratio:.1%}).\n"
    )


def run(report_path: Path | None = None) -> None:
    if report_path is None:
        torch.set_num_threads(1)
        sets = read_coco_splits(ensure_fashion_detect())
        model, _ = example_detector(sets, default_cache(), SIZES)
        report = build_detector(
            model, sets, default_cache() / "detect_pipeline", DetectBuildConfig()
        )
    else:
        report = json.loads(report_path.read_text())
    write_section(
        "Detection: the whole chain (prune, FGD, QAT, ONNX Runtime, RKNN)", section(report)
    )


if __name__ == "__main__":
    run(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
