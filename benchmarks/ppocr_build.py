"""A public ONNX classifier compressed by ``edgecompress build`` (issue 36): PP-OCR's text
direction classifier (``ch_ppocr_mobile_v2.0_cls_infer.onnx`` from the
``rapidocr-onnxruntime`` wheel: a Paddle export, dynamic batch, H and W; softmax outputs,
class 0 = upright, 1 = upside down) through the default pipeline (prune, distill, merge,
QAT, export, bench) on labelled text lines, as a user types it:

    edgecompress build cls.onnx --target host --data lines/ --input-size 48 192 \\
        --resize stretch --mean 0.5 0.5 0.5 --std 0.5 0.5 0.5 --bgr --classes 0,180

Lines are real text rendered with OpenCV ``putText`` (fonts, ink, paper, size and noise
drawn at random); half of them turned by 180 degrees, labelled by folder. Top-1 is on the
test split (nothing was chosen on it), before (the file as shipped) and after.

    python -m benchmarks.run ppocr_build     # needs the wheel (benchmarks/convert.py)
"""

from __future__ import annotations

import contextlib
import io
import json
import string
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, write_section
from benchmarks.convert import HOW_TO_GET, find_wheel

MODEL = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
CLASSES = ("0", "180")  # the model's outputs, in order


def direction_lines(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` one-line text images under ``folder/0`` (upright) and ``folder/180``."""
    import cv2

    rng = np.random.default_rng(seed)
    fonts = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
             cv2.FONT_HERSHEY_TRIPLEX]  # fmt: skip
    alphabet = list(string.ascii_letters + string.digits)
    for label in CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        words = " ".join(
            "".join(rng.choice(alphabet, int(rng.integers(2, 9))))
            for _ in range(int(rng.integers(1, 4)))
        )
        font, scale = fonts[int(rng.integers(len(fonts)))], float(rng.uniform(0.7, 1.3))
        thick = int(rng.integers(1, 3))
        (w, h), base = cv2.getTextSize(words, font, scale, thick)
        img = np.full((h + base + 12, w + 16, 3), int(rng.integers(180, 256)), np.uint8)
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        cv2.putText(img, words, (8, h + 6), font, scale, ink, thick)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        label = CLASSES[i % 2]
        if label == "180":
            img = cv2.rotate(img, cv2.ROTATE_180)
        cv2.imwrite(str(folder / label / f"line_{i:04d}.png"), img)
    return folder


def compress(work: Path, *, images: int = 1200, seed: int = 0) -> dict[str, Any]:
    """Extract the classifier, render ``images`` lines and build; the report's numbers."""
    from edgecompress.cli import main

    wheel = find_wheel()
    if wheel is None:
        raise FileNotFoundError(f"no rapidocr-onnxruntime wheel: {HOW_TO_GET}")
    model = work / MODEL
    with zipfile.ZipFile(wheel) as zf:
        model.write_bytes(zf.read(f"rapidocr_onnxruntime/models/{MODEL}"))
    data = direction_lines(work / f"lines{seed}", images, seed)
    out = work / f"out{seed}"
    argv = ["build", str(model), "--target", "host", "--data", str(data), "-o", str(out)]
    argv += ["--input-size", "48", "192", "--resize", "stretch", "--bgr", "--seed", str(seed)]
    argv += ["--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5"]
    argv += ["--classes", ",".join(CLASSES), "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    report = json.loads((out / "report.json").read_text())
    rows = report["summary"]["rows"]
    first = rows[0]
    deployed = [r for r in rows if r["kind"] == "artifact" and r.get("deployed")][-1]
    return {
        "exit": code,
        "seed": seed,
        "stages": [s["name"] for s in report["stages"]],
        "test_images": report["data"]["test_images"],
        "before_top1": first["top1"],
        "after_top1": deployed["top1"],
        "before_macs": first["macs"],
        "after_macs": deployed["macs"],
        "before_p50_ms": first["p50_ms"],
        "after_p50_ms": deployed["p50_ms"],
        "deployed": deployed["row"],
        "deployed_precision": deployed["precision"],
        "qat_top1": next((r["top1"] for r in rows if r["row"].endswith("model.int8.onnx")), None),
    }


def run() -> None:
    from edgecompress.report.markdown import table

    seeds = (0, 1, 2)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [compress(Path(tmp), seed=s) for s in seeds]
    header = ["seed", "test images", "top-1 before", "top-1 after (deployed)", "QAT INT8 top-1",
              "MACs", "host p50 ms", "deployed"]  # fmt: skip
    body = [
        [
            str(r["seed"]),
            str(r["test_images"]),
            f"{r['before_top1']:.2f}",
            f"{r['after_top1']:.2f}",
            f"{r['qat_top1']:.2f}" if r["qat_top1"] is not None else "-",
            f"{r['before_macs'] / 1e6:.2f}M -> {r['after_macs'] / 1e6:.2f}M",
            f"{r['before_p50_ms']:.3f} -> {r['after_p50_ms']:.3f}",
            f"{r['deployed']} ({r['deployed_precision']})",
        ]
        for r in rows
    ]
    gain = [r["after_top1"] - r["before_top1"] for r in rows]
    speed = [r["before_p50_ms"] / r["after_p50_ms"] for r in rows]
    write_section(
        "Foreign ONNX compressed: PP-OCR's direction classifier through build",
        f"Machine: {machine()}. `{MODEL}` from `{find_wheel().name if find_wheel() else '?'}` "
        "as shipped (dynamic batch and H/W, softmax outputs) built with the default host "
        f"pipeline ({' -> '.join(rows[0]['stages'])}): `edgecompress build cls.onnx --target "
        "host --data lines/ --input-size 48 192 --resize stretch --bgr --mean 0.5 0.5 0.5 "
        "--std 0.5 0.5 0.5 --classes 0,180 --seed N`. Data: 1,200 one-line text images "
        "rendered with OpenCV (random words, fonts, sizes, ink, paper, noise), half turned "
        "180 degrees; split 60/20/20 per class by the build; a new rendering per seed. Top-1 "
        "on the test split. The gain is mostly the distillation fitting the rendered lines "
        "(the shipped model was trained on real scans), not compression. The deployed file "
        "is the fastest form within 1 val point; where INT8 is slower than FP32 on this CPU "
        "the FP32 file is deployed and the QAT INT8 file kept beside it.\n\n" + table(body, header),
        headline=f"PP-OCR direction classifier (foreign ONNX) through build: top-1 "
        f"{min(gain):+.2f} to {max(gain):+.2f} points, {min(speed):.2f}-{max(speed):.2f}x "
        "host p50, 3 seeds",
    )
