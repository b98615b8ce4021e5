"""Issue 17, done means: the example detector through the whole chain (``edgecompress
detect``, as ``make demo-detect`` runs it): pruned to at most 60% of its MACs, recovered
with FGD from the original, INT8 QAT, and its test mAP in PyTorch, ONNX Runtime INT8 and
the RKNN simulator in one table.

``python -m benchmarks.detect_pipeline`` runs the chain (about 35 minutes here after the
cached example training) into ``<cache>/detect_pipeline/`` and writes the section;
``python -m benchmarks.detect_pipeline REPORT.json [OTHER.json ...]`` writes it from a
finished run's report (``out/demo-detect/report.json``), with other runs of the chain
(another allocation, more recovery epochs) as one row each below it. The reports behind
the section in docs/BENCHMARKS.md are kept in ``benchmarks/results/detect_pipeline/``."""

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
from edgecompress.report.markdown import table

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
        f"detector: prune to {cfg['keep']} of the MACs (L1, {_allocation(cfg)}, widths "
        f"aligned to {cfg['align']}; the six head output convolutions never), recover "
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


def _allocation(cfg: dict[str, Any]) -> str:
    if cfg.get("allocation", "global") == "latency":
        return "each layer's share from timing it pruned by half in ONNX Runtime on this host"
    return "global ranking"


def others(reports: list[dict[str, Any]]) -> str:
    """One row per other run of the chain: what differed and where it ended."""
    rows = []
    for r in reports:
        cfg, s = r["config"], r["summary"]
        rec, qat = r["stages"][1], r["stages"][-1]
        rows.append(
            [
                cfg.get("allocation", "global"),
                f"{cfg['keep']}",
                f"{cfg['recover']['epochs']}",
                f"{s['macs_ratio']:.1%}",
                f"{rec['params'] / r['stages'][0]['params']:.2f}",
                f"{rec['pytorch']['map50_95']:.2f}",
                f"{qat['pytorch']['map50_95']:.2f}",
                f"{qat['onnxruntime']['map50_95']:.2f}",
                f"{qat['rknn_simulator']['map50_95']:.2f}" if "rknn_simulator" in qat else "-",
                f"{s['map50_95_lost']:.2f}",
                f"{r['latency']['final_int8_p50_ms'] / r['latency']['original_fp32_p50_ms']:.2f}",
            ]
        )
    return (
        "\nOther runs of the same chain, one each (test mAP@0.5:0.95; `lost`: the ONNX Runtime "
        "INT8 file against the original in PyTorch; `INT8/FP32`: host p50 of the final INT8 "
        "file over the original FP32 one, timed in turns within that run):\n\n"
        + table(
            rows,
            [
                "allocation",
                "keep",
                "recovery epochs",
                "MACs",
                "params",
                "recovered FP32",
                "QAT",
                "ONNX Runtime INT8",
                "RKNN simulator",
                "lost",
                "INT8/FP32",
            ],
        )
    )


def run(report_path: Path | None = None, other_paths: tuple[Path, ...] = ()) -> None:
    if report_path is None:
        torch.set_num_threads(1)
        sets = read_coco_splits(ensure_fashion_detect())
        model, _ = example_detector(sets, default_cache(), SIZES)
        report = build_detector(
            model, sets, default_cache() / "detect_pipeline", DetectBuildConfig()
        )
    else:
        report = json.loads(report_path.read_text())
    body = section(report)
    if other_paths:
        body += others([json.loads(p.read_text()) for p in other_paths])
    write_section("Detection: the whole chain (prune, FGD, QAT, ONNX Runtime, RKNN)", body)


if __name__ == "__main__":
    paths = [Path(a) for a in sys.argv[1:]]
    run(paths[0] if paths else None, tuple(paths[1:]))
