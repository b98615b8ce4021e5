"""``ec.export``: the artifacts a target runs, from an in-memory model.

    arts = ec.export(qat, example, "out/", target="rk3588", calibration=calib_inputs,
                     spec=spec, images=calib_images_uint8)

A float model becomes FP32 ONNX (``model.onnx``), a fake-quantized one INT8 QDQ ONNX
(``model.int8.onnx``) with the scales QAT learned; targets with an NPU toolchain then get
their file from that ONNX (RKNN takes the QDQ ranges over, or calibrates a float model
on ``images``). The registered exporters of a build's export stage make each file and
prove it; every file is written atomically and returned as a typed record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from edgecompress.artifacts import Artifact, ArtifactKind
from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.errors import (
    ConfigError,
    EdgeCompressError,
    MissingToolchainError,
    UnsupportedOpError,
)
from edgecompress.exporters.onnx import export_onnx
from edgecompress.exporters.qdq import export_qat_onnx
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
    exporter: str = "auto",
    simplify: bool = True,
) -> Artifact:
    """``model`` as the ONNX file the target's runtime executes (INT8 QDQ for a
    fake-quantized model: ``calibration`` inputs fill tensors QAT did not quantize, and
    ``min_cosine`` against the QAT model on them chooses how widely to quantize).
    ``target``: a name, or a profile (a build's, measured on its machine). A float model:
    torch.onnx's ``exporter`` (auto, dynamo, torchscript), onnxslim unless not ``simplify``."""
    profile = target if isinstance(target, TargetProfile) else get_target(target)
    out = Path(out)
    if not is_quantized(model):
        opset = opset or profile.onnx_opset
        export_onnx(model, example, out, opset=opset, exporter=exporter, simplify=simplify)
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


@dataclass
class _Arrays:
    """What the export stages read from a build's data, made of the arrays ``export`` is
    given: the checks' inputs, the same images as uint8 for an NPU's simulator, the
    calibration images. No labels, so no accuracy: only parity is checked."""

    test_inputs: np.ndarray
    test_prepared: np.ndarray | None
    calibration_prepared: list[np.ndarray]
    test_labels: None = None


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
    """Every artifact ``target`` needs, made and proven by the registered exporters a
    build's export stage runs, in the profile's order: ONNX Runtime against PyTorch, the
    RKNN simulator against ONNX Runtime, on ``images`` (uint8, normalised by ``spec``)
    where given, else ``calibration``, else ``example``; a failed check raises
    :class:`~edgecompress.errors.ParityError`. A TensorRT engine is built on ``device``
    (``ssh://user@jetson``, or this machine where it has TensorRT); without one, the
    ONNX file is what TensorRT takes."""
    from edgecompress.exporters.registry import EXPORTERS, export_and_verify
    from edgecompress.report.schema import Report
    from edgecompress.stages.base import BuildContext, BuildOptions

    profile, out_dir = get_target(target), Path(out_dir)
    if profile.rknn_platform and "rknn" in profile.exporters and not images:
        raise ConfigError(
            f"export for {profile.name}: RKNN needs images (uint8 H x W x 3 from "
            "spec.prepare) to calibrate a float model and to check the file in the simulator"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = spec or PreprocessSpec(input_size=tuple(example.shape[-2:]))
    prepared = np.stack(list(images)) if images else None
    if prepared is not None:
        inputs = np.stack([spec.normalize(img) for img in prepared])
    else:
        inputs = calibration[:64] if calibration is not None else example.numpy()
    data = _Arrays(np.ascontiguousarray(inputs, np.float32), prepared, list(images or []))
    options = BuildOptions(rknn_python, progress=False, devices=(device,) if device else ())
    ctx = BuildContext(out_dir, profile, spec, data, Report(), options)  # type: ignore[arg-type]
    ctx.calibration = calibration
    for name in profile.exporters:
        export_and_verify(EXPORTERS.get(name).make(), model, ctx)
    return list(ctx.artifacts.items)


def try_exports(
    module: nn.Module,
    example: Tensor,
    profile: TargetProfile,
    spec: PreprocessSpec,
    exporters: Sequence[str],
    *,
    opset: int | None = None,
    exporter: str = "auto",
    simplify: bool = True,
    rknn_python: str | None = None,
) -> None:
    """Raise :class:`UnsupportedOpError` when ``module`` as it is cannot be exported to
    ONNX, or (``exporters`` naming rknn) has an op rknn-toolkit2 refuses in float: what a
    build checks before training. Only a refused op (or a missing toolchain) stops it: any
    other failure here (a converter crash, a graph it cannot load) is left to the export
    stage, whose INT8 file and fallback differ from this float one. The files go to a
    temporary folder, kept only on a refusal (its message names the log there)."""
    import shutil
    import tempfile

    found = "Found before any training: the model as given cannot be exported"
    tmp = Path(tempfile.mkdtemp(prefix="edgecompress-precheck-"))  # kept if a try refuses
    path = tmp / "original.onnx"
    try:
        export_onnx(module, example, path, simplify=simplify, exporter=exporter,
                    opset=opset or profile.onnx_opset)  # fmt: skip
    except UnsupportedOpError as exc:
        raise UnsupportedOpError(f"export_onnx: {exc}. {found}") from None
    except EdgeCompressError:
        shutil.rmtree(tmp, ignore_errors=True)
        return  # the export stage meets it again, with its own handling
    if "rknn" in exporters and profile.rknn_platform:
        from edgecompress.exporters.rknn import convert_rknn

        none = np.zeros((0, *spec.input_size, spec.channels), np.uint8)
        try:
            convert_rknn(path, tmp / "original.rknn", spec, profile.rknn_platform, [], none,
                         quantize=False, rknn_python=rknn_python, progress=False,
                         crash_dir=tmp / "rknn_crash")  # fmt: skip
        except UnsupportedOpError as exc:  # its message names the log in tmp
            raise UnsupportedOpError(f"export_rknn: {exc}. {found} to RKNN") from None
        except MissingToolchainError:
            raise
        except EdgeCompressError:
            pass  # a crash, a graph it cannot load: left to the stage and its fallback
    shutil.rmtree(tmp, ignore_errors=True)
