"""The inputs a conversion shows every runtime: real images (calibration, and the
evaluation images: a test split where there is one), or seeded random inputs where there
are none or the model takes no image. Torch-free.

>>> spec = image_spec({"x": (1, 3, 48, 320)}, None)  # doctest: +SKIP
>>> shapes = {"x": (1, 3, 48, 320)}
>>> samples = model_samples(Path("m.onnx"), shapes, spec, Path("imgs"), (32, 8))  # doctest: +SKIP
>>> samples.how  # doctest: +SKIP
'8 images of imgs (a plain folder of images has no test split: ...)'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.calibration.preprocess import IMAGE_SUFFIXES, Layout, PreprocessSpec
from edgecompress.errors import ConfigError


def _shape_text(shape: Any) -> str:
    return "x".join(str(d) for d in shape)


def _shapes_text(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{k}={_shape_text(v)}" for k, v in shapes.items())


@dataclass
class Samples:
    """The inputs every runtime sees. ``prepared`` (uint8 N x H x W x 3, model channel
    order) and ``calib`` exist for an image model; ``feeds`` are the float batches at the
    model's fixed shape, one dict per call."""

    feeds: list[dict[str, np.ndarray]]
    how: str
    prepared: np.ndarray | None = None
    calib: list[np.ndarray] = field(default_factory=list)
    data_summary: dict[str, Any] = field(default_factory=dict)
    # The class of each of ``prepared`` (a class folder's test split): the model output
    # it is scored as, of ``outputs``.
    labels: np.ndarray | None = None
    outputs: int = 0


def image_spec(
    shapes: dict[str, tuple[int, ...]], spec: PreprocessSpec | None
) -> PreprocessSpec | None:
    """The spec for a model with one image input (N x 3 x H x W, or NHWC with a spec
    that says so), its input size from the model unless set; None for any other model."""
    if len(shapes) != 1:
        return None
    shape = next(iter(shapes.values()))
    spec = spec or PreprocessSpec()
    nchw = spec.layout is Layout.nchw
    if len(shape) != 4 or shape[1 if nchw else 3] != 3:
        return None
    size = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
    if "input_size" not in spec.model_fields_set:
        return spec.model_copy(update={"input_size": size})
    if tuple(spec.input_size) != size:
        raise ConfigError(
            f"--input-size {spec.input_size[0]} {spec.input_size[1]} does not match the "
            f"model's input {_shape_text(shape)} ({spec.layout.value}); give the same size or "
            "leave --input-size out"
        )
    return spec


def model_samples(
    onnx_path: Path,
    shapes: dict[str, tuple[int, ...]],
    spec: PreprocessSpec | None,
    data: Path | None,
    counts: tuple[int, int | None],
) -> Samples:
    """The images of ``data`` as ``spec`` prepares them (``counts``: at most that many
    calibration and evaluation images), else seeded random images (an image model) or
    random inputs of the ONNX model's fixed shapes (any other, ``spec`` None)."""
    if spec is None:
        if data is not None:
            raise ConfigError(
                f"--data {data}: images feed a model with one image input (N x 3 x H x W); "
                f"this one has {_shapes_text(shapes)}. Leave --data out to check on random inputs"
            )
        return _random_feeds(onnx_path, 8)
    if data is None:
        h, w = spec.input_size
        prepared = np.random.default_rng(0).integers(0, 256, (8, h, w, 3), dtype=np.uint8)
        how = "8 seeded random images (uniform uint8 pixels, seed 0); no --data given"
        return _image_samples(shapes, spec, Samples([], how, prepared))
    calib, prepared, how, summary, labels = read_images(data, spec, counts)
    samples = Samples([], how, prepared, calib, summary, labels, int(summary.get("outputs", 0)))
    return _image_samples(shapes, spec, samples)


def _image_samples(
    shapes: dict[str, tuple[int, ...]], spec: PreprocessSpec, samples: Samples
) -> Samples:
    """``samples`` with its feeds: the images normalised, in calls of the model's batch."""
    ((name, shape),) = shapes.items()
    assert samples.prepared is not None
    x = np.stack([spec.normalize(img) for img in samples.prepared])
    batch = shape[0]
    if len(x) % batch:  # a static batch > 1: repeat the last images to fill the last call
        x = np.concatenate([x, np.repeat(x[-1:], batch - len(x) % batch, axis=0)])
    samples.feeds = [{name: x[i : i + batch]} for i in range(0, len(x), batch)]
    return samples


def _random_feeds(onnx_path: Path, n: int) -> Samples:
    from edgecompress.runtime.onnxrt import open_session, random_inputs

    sess = open_session(onnx_path, 1, None)
    feeds = [random_inputs(sess, 1, seed, onnx_path) for seed in range(n)]
    how = f"{n} seeded random inputs (normal floats, integers in {{0, 1}}; seeds 0-{n - 1})"
    return Samples(feeds, how)


def read_images(
    data: Path, spec: PreprocessSpec, counts: tuple[int, int | None]
) -> tuple[list[np.ndarray], np.ndarray, str, dict[str, Any], np.ndarray | None]:
    """(calibration images, evaluation images, how they were chosen, data summary, the
    evaluation images' labels) from an image-class folder (evaluation: its test split,
    labelled) or a plain folder of images (any, no labels); ``counts`` = (calibration
    images, evaluation images), each at most (evaluation None: all of a test split, 20 of
    a plain folder)."""
    from edgecompress.calibration.bundle import DataBundle, DataConfig
    from edgecompress.calibration.dataset import Sample, load_samples, pick_calibration

    (n_calib, n_eval), data = counts, Path(data)
    if not data.is_dir():
        raise ConfigError(f"--data {data}: no such folder of images")
    plain = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not plain:
        cfg = DataConfig(calibration_images=n_calib, eval_images=n_eval)
        bundle = DataBundle(data, spec, cfg)
        calib, prepared = bundle.calibration_prepared, bundle.test_prepared
        pick = " (class-balanced pick)" if n_eval is not None else ""
        how = f"{len(prepared)} images of the test split of {data}{pick}"
        return calib, prepared, how, bundle.summary(), bundle.test_labels
    samples = [Sample(p, 0) for p in plain]
    skipped: list[tuple[Path, str]] = []
    picked = pick_calibration(samples, n_calib)
    calib = list(load_samples(picked, spec, prepared=True, skipped=skipped)[0])
    shown = pick_calibration(samples, n_eval or 20, seed=1)
    prepared = load_samples(shown, spec, prepared=True, skipped=skipped)[0]
    how = (
        f"{len(prepared)} images of {data} (a plain folder of images has no test split: "
        "some may also be calibration images)"
    )
    summary = {"root": str(data), "images": len(plain), "skipped": len(skipped),
               "skipped_files": [f"{p}: {why}" for p, why in skipped]}  # fmt: skip
    return calib, prepared, how, summary, None
