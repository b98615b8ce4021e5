"""``ec.export``: the artifacts a target runs, from an in-memory model.

    arts = ec.export(qat, example, "out/", target="rk3588", calibration=calib_inputs,
                     spec=spec, images=calib_images_uint8)

A float model becomes FP32 ONNX (``model.onnx``), a fake-quantized one INT8 QDQ ONNX
(``model.int8.onnx``) with the scales QAT learned; targets with an NPU toolchain then get
their file from that ONNX (RKNN takes the QDQ ranges over, or calibrates a float model
on ``images``). Every file is written atomically and returned as a typed record."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from edgecompress.artifacts import Artifact, ArtifactKind
from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.errors import ConfigError, UnsupportedOpError
from edgecompress.exporters.onnx import export_onnx
from edgecompress.quantize.export import export_qat_onnx
from edgecompress.quantize.fake import is_quantized
from edgecompress.targets import TargetProfile, get_target


def export_model_onnx(
    model: nn.Module,
    example: Tensor,
    out: Path,
    *,
    target: str | TargetProfile = "host",
    calibration: np.ndarray | None = None,
    opset: int | None = None,
    min_cosine: float = 0.99,
) -> Artifact:
    """``model`` as the ONNX file the target's runtime executes (INT8 QDQ for a
    fake-quantized model: ``calibration`` inputs fill tensors QAT did not quantize, and
    ``min_cosine`` against the QAT model on them chooses how widely to quantize).
    ``target``: a name, or a profile (a build's, measured on its machine)."""
    profile = target if isinstance(target, TargetProfile) else get_target(target)
    out = Path(out)
    if not is_quantized(model):
        export_onnx(model, example, out, opset=opset or profile.onnx_opset)
        return Artifact("onnx", ArtifactKind.onnx, "fp32", "export", out)
    if calibration is None:
        raise ConfigError("export: a fake-quantized model needs calibration inputs for its QDQ")
    export_qat_onnx(
        model,
        example,
        calibration,
        out,
        symmetric_activations=profile.quant_symmetric_activations,
        weights=profile.int8_weights,
        min_cosine=min_cosine,
        float_below=profile.int8_min_in_channels,
        quantize_bias=profile.int8_bias,
    )
    return Artifact("onnx", ArtifactKind.onnx, "int8", "export", out)


def export(
    model: nn.Module,
    example: Tensor,
    out_dir: Path,
    *,
    target: str = "host",
    calibration: np.ndarray | None = None,
    spec: PreprocessSpec | None = None,
    images: Sequence[np.ndarray] | None = None,
    rknn_python: str | None = None,
    device: str | None = None,
) -> list[Artifact]:
    """Every artifact ``target`` needs, in order (ONNX first; the NPU file from it). A
    TensorRT engine is built on ``device`` (``ssh://user@jetson``, or ``local`` where this
    machine has TensorRT); without one, the ONNX file is what TensorRT takes."""
    profile = get_target(target)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "model.int8.onnx" if is_quantized(model) else "model.onnx"
    onnx = export_model_onnx(model, example, out_dir / name, target=target, calibration=calibration)
    arts = [onnx]
    for exporter in profile.exporters:
        if exporter == "onnx":
            continue
        if exporter == "tensorrt":
            if device is not None:
                arts.append(_engine(onnx, out_dir, device))
            continue  # an engine is built on its GPU: without a device, the ONNX is it
        if exporter != "rknn" or profile.rknn_platform is None:
            raise ConfigError(f"export: {exporter} files cannot be made by this version")
        arts.append(_rknn(onnx, out_dir, profile.rknn_platform, spec, images, rknn_python))
    return arts


def _engine(onnx: Artifact, out_dir: Path, device: str) -> Artifact:
    from edgecompress.exporters.tensorrt import build_engine
    from edgecompress.runtime.transports import parse_device

    precision = "int8" if onnx.precision == "int8" else "fp16"
    result = build_engine(onnx.path, out_dir / "model.engine", precision, parse_device(device))
    return Artifact("tensorrt", ArtifactKind.tensorrt, precision, "export", result.path)


def _rknn(
    onnx: Artifact,
    out_dir: Path,
    platform: str,
    spec: PreprocessSpec | None,
    images: Sequence[np.ndarray] | None,
    rknn_python: str | None,
) -> Artifact:
    from edgecompress.exporters.rknn import convert_rknn

    if spec is None or (onnx.precision == "fp32" and not images):
        raise ConfigError(
            "export: RKNN needs the preprocessing spec (mean/std run on the NPU) and, for "
            "a float model, calibration images (uint8, H x W x 3)"
        )
    from_qdq = onnx.precision == "int8"
    result = convert_rknn(
        onnx.path,
        out_dir / "model.rknn",
        spec,
        platform,
        list(images or []),
        np.zeros((0, *spec.input_size, 3), np.uint8),
        quantize=not from_qdq,
        rknn_python=rknn_python,
    )
    return Artifact("rknn", ArtifactKind.rknn, "int8", "export", result.path)


def try_exports(
    module: nn.Module,
    example: Tensor,
    profile: TargetProfile,
    spec: PreprocessSpec,
    exporters: Sequence[str],
    *,
    opset: int | None = None,
    exporter: str = "auto",
    rknn_python: str | None = None,
) -> None:
    """Raise :class:`UnsupportedOpError` when ``module`` as it is cannot be exported to
    ONNX, or (``exporters`` naming rknn) converted by rknn-toolkit2 in float: what a build
    checks before training. The files go to a temporary folder, kept only on a failure
    (its message names the converter's log there)."""
    import shutil
    import tempfile

    found = "Found before any training: the model as given cannot be exported"
    tmp = Path(tempfile.mkdtemp(prefix="edgecompress-precheck-"))
    path = tmp / "original.onnx"
    try:
        export_onnx(module, example, path, simplify=False, exporter=exporter,
                    opset=opset or profile.onnx_opset)  # fmt: skip
    except UnsupportedOpError as exc:
        raise UnsupportedOpError(f"export_onnx: {exc}. {found}") from None
    if "rknn" in exporters and profile.rknn_platform:
        from edgecompress.exporters.rknn import convert_rknn

        none = np.zeros((0, *spec.input_size, spec.channels), np.uint8)
        try:
            convert_rknn(path, tmp / "original.rknn", spec, profile.rknn_platform, [], none,
                         quantize=False, rknn_python=rknn_python, progress=False)  # fmt: skip
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(f"export_rknn: {exc}. {found} to RKNN") from None
    shutil.rmtree(tmp, ignore_errors=True)
