"""Foreign ONNX models through ``edgecompress convert`` (issue 15): the three PP-OCR models
in the ``rapidocr-onnxruntime`` wheel (PP-OCRv4 text detector and recognizer, the mobile
v2.0 direction classifier; Paddle exports with dynamic dimensions) converted for rk3588
and benchmarked with ``bench --input-shape``, both through the command line as a user
runs them.

Calibration and parity images are real text rendered with OpenCV ``putText``: pages for
the detector, single lines for the recognizer and the classifier, stretched to each
model's input. Normalisation is PaddleOCR's: ImageNet mean/std for the detector, 0.5/0.5
for the other two; BGR channel order (PaddleOCR feeds OpenCV's images as they are).

    python -m benchmarks.run convert     # needs the wheel: see WHEELS below
"""

from __future__ import annotations

import json
import os
import string
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, write_section


def wheels_dir() -> Path:
    """Where ``.ci/run`` downloads the wheel: ``$EDGECOMPRESS_CACHE/wheels``."""
    cache = os.environ.get("EDGECOMPRESS_CACHE", str(Path.home() / ".cache" / "edgecompress"))
    return Path(cache) / "wheels"


HOW_TO_GET = "pip download --no-deps rapidocr-onnxruntime -d " + str(wheels_dir())


@dataclass(frozen=True)
class OcrModel:
    label: str
    file: str  # under rapidocr_onnxruntime/models/ in the wheel
    shape: tuple[int, int, int, int]  # what rapidocr feeds it (det: its 640 limit)
    images: str  # "pages" or "lines"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    algorithm: str = "normal"  # RKNN INT8 calibration


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
MODELS = (
    # mmse: simulator cosine 0.976 (det) and 0.984 (rec) where min/max gave 0.943 / 0.978.
    OcrModel("det", "ch_PP-OCRv4_det_infer.onnx", (1, 3, 640, 640), "pages", *IMAGENET, "mmse"),
    OcrModel("cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192), "lines", *HALF),
    OcrModel("rec", "ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320), "lines", *HALF, "mmse"),
)


def find_wheel() -> Path | None:
    found = sorted(wheels_dir().glob("rapidocr_onnxruntime-*.whl"))
    return found[-1] if found else None


def extract_models(wheel: Path, dest: Path) -> dict[str, Path]:
    """The three ONNX files of the wheel, by label."""
    out = {}
    with zipfile.ZipFile(wheel) as zf:
        for m in MODELS:
            path = dest / m.file
            path.write_bytes(zf.read(f"rapidocr_onnxruntime/models/{m.file}"))
            out[m.label] = path
    return out


def _words(rng: np.random.Generator, n: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return " ".join("".join(rng.choice(list(alphabet), int(rng.integers(2, 9)))) for _ in range(n))


def text_images(folder: Path, kind: str, n: int, seed: int = 0) -> Path:
    """``n`` PNGs of rendered text: ``pages`` (640 x 640, several lines at random sizes
    and places) or ``lines`` (one line, 48 px high, some upside down for the classifier)."""
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    fonts = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX]
    for i in range(n):
        font = fonts[int(rng.integers(len(fonts)))]
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        paper = int(rng.integers(200, 256))
        if kind == "pages":
            img = np.full((640, 640, 3), paper, np.uint8)
            for _ in range(int(rng.integers(4, 12))):
                org = (int(rng.integers(5, 300)), int(rng.integers(30, 630)))
                scale = float(rng.uniform(0.6, 2.0))
                text = _words(rng, int(rng.integers(1, 4)))
                cv2.putText(img, text, org, font, scale, ink, int(rng.integers(1, 4)))
        else:
            text = _words(rng, int(rng.integers(1, 4)))
            (w, h), base = cv2.getTextSize(text, font, 1.0, 2)
            img = np.full((h + base + 12, w + 16, 3), paper, np.uint8)
            cv2.putText(img, text, (8, h + 6), font, 1.0, ink, 2)
            if i % 4 == 3:
                img = cv2.rotate(img, cv2.ROTATE_180)
        cv2.imwrite(str(folder / f"{kind}_{i:03d}.png"), img)
    return folder


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def convert_and_bench(
    path: Path, m: OcrModel, images: Path, out: Path, *, eval_images: int, runs: int
) -> dict[str, Any]:
    """``edgecompress convert --target rk3588`` then ``edgecompress bench --input-shape``
    on the original (dynamic) file, as a user types them; the numbers that matter."""
    from edgecompress.cli import main

    argv = ["convert", str(path), "--target", "rk3588", "-o", str(out), "--quiet", "--force"]
    argv += ["--input-shape", f"x={_shape(m.shape)}", "--data", str(images), "--bgr"]
    argv += ["--resize", "stretch", "--eval-images", str(eval_images), "--min-cosine", "0.9"]
    argv += ["--rknn-algorithm", m.algorithm]
    argv += ["--calibration-images", "32", "--mean", *map(str, m.mean), "--std", *map(str, m.std)]
    code = main(argv)
    report = json.loads((out / "report.json").read_text())
    bench_json = out / "bench.json"
    bench_argv = ["bench", str(path), "--input-shape", f"x={_shape(m.shape)}", "--sensor", "none"]
    bench_argv += [
        "--runs",
        str(runs),
        "--warmup",
        "5",
        "--min-time",
        "1",
        "--json",
        str(bench_json),
    ]
    code_bench = main(bench_argv)
    bench = json.loads(bench_json.read_text())
    cosines = [e["value"] for k, e in report["parity"]["rknn"].items() if k.startswith("cosine")]
    return {
        "label": m.label,
        "file": m.file,
        "shape": m.shape,
        "convert_exit": code,
        "bench_exit": code_bench,
        "rknn_cosine": min(cosines),
        "rknn_precision": report["artifacts"]["rknn"]["precision"],
        "algorithm": m.algorithm,
        "rknn_bytes": report["artifacts"]["rknn"]["size_bytes"],
        "onnx_cosine": report["parity"]["onnx"]["cosine[0]"]["value"],
        "fixed_p50_ms": report["latency"]["onnx@host"]["p50_ms"],
        "bench_p50_ms": bench["latency"]["p50_ms"],
        "bench_p90_ms": bench["latency"]["p90_ms"],
        "bench_input_shapes": bench.get("input_shapes"),
        "runtime": f"{bench.get('runtime')} {bench.get('runtime_version', '')}".strip(),
        "inputs": report["convert"]["inputs"],
    }


def ppocr(
    work: Path, *, eval_images: int = 8, runs: int = 30, algorithm: str | None = None
) -> list[dict[str, Any]]:
    """All three models; raises ``FileNotFoundError`` naming the command when the wheel
    is absent. ``algorithm`` overrides each model's RKNN calibration (the test uses the
    minutes-faster ``normal``)."""
    wheel = find_wheel()
    if wheel is None:
        raise FileNotFoundError(f"no rapidocr-onnxruntime wheel in {wheels_dir()}: {HOW_TO_GET}")
    paths = extract_models(wheel, work)
    folders = {k: text_images(work / k, k, 40, seed=i) for i, k in enumerate(("pages", "lines"))}
    return [
        convert_and_bench(
            paths[m.label],
            replace(m, algorithm=algorithm) if algorithm else m,
            folders[m.images],
            work / f"out_{m.label}",
            eval_images=eval_images,
            runs=runs,
        )
        for m in MODELS
    ]


def run() -> None:
    from edgecompress.report.markdown import table

    with tempfile.TemporaryDirectory() as tmp:
        wheel = find_wheel()
        rows = ppocr(Path(tmp))
    header = [
        "model",
        "input",
        "ORT FP32 p50 ms (bench --input-shape)",
        "p90 ms",
        "fixed model.onnx p50 ms",
        "RKNN",
        "RKNN sim. cosine vs ORT",
    ]
    body = [
        [
            f"{r['label']} ({r['file']})",
            _shape(r["shape"]),
            f"{r['bench_p50_ms']:.2f}",
            f"{r['bench_p90_ms']:.2f}",
            f"{r['fixed_p50_ms']:.2f}",
            f"{r['rknn_precision']} ({r['algorithm']}), {r['rknn_bytes'] / 2**20:.2f} MiB",
            f"{r['rknn_cosine']:.4f}",
        ]
        for r in rows
    ]
    write_section(
        "Foreign ONNX models: PP-OCR through convert",
        f"Machine: {machine()}; {rows[0]['runtime']}, 1 thread. Models: "
        f"`{wheel.name if wheel else '?'}` (`{HOW_TO_GET.split(' -d ')[0]}`) as shipped: "
        "Paddle exports with dynamic dimensions. Per model, `edgecompress convert MODEL "
        "--target rk3588 --input-shape x=SHAPE --data IMAGES --resize stretch --bgr --mean .. "
        "--std .. --rknn-algorithm ..` fixes the shape, simplifies, converts to INT8 RKNN (32 "
        "calibration images) and compares the RKNN simulator with ONNX Runtime on model.onnx; "
        "`edgecompress bench MODEL --input-shape x=SHAPE` times the original file. Images: "
        "text rendered with OpenCV `putText` (640x640 pages for det, one-line crops for cls "
        f"and rec), parity on {rows[0]['inputs'].split(' images')[0]} of them per model (a "
        "plain image folder: they may overlap the calibration images). Normalisation as "
        "PaddleOCR's: ImageNet mean/std for det, 0.5/0.5 for cls and rec. Cosine over the "
        "whole output (det: the probability map; rec: per-step class probabilities). INT8 "
        "calibration: mmse for det and rec (min/max `normal` gave 0.943 and 0.978 in an "
        "earlier run), normal for cls.\n\n" + table(body, header),
    )
