"""An Ultralytics YOLOv8 detector converted by ``from_ultralytics`` computes what it did:
the six raw head outputs equal Ultralytics' own (its Detect head's ``cv2``/``cv3`` on the
features it receives), its decoded boxes equal the NumPy decoder's, a saved checkpoint
reads back, the result prunes like our own detector, and anything that is not a YOLOv8
detector is refused with a message saying what is supported.

Ultralytics models are built from its YAML files with random weights (nothing is
downloaded). Without the ``ultralytics`` package these tests skip, except under
``EDGECOMPRESS_REQUIRE_ULTRALYTICS=1`` (CI, where ``make`` installs it), where they fail."""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.detect.compress import prune_detector
from edgecompress.detect.model import YoloDetector
from edgecompress.detect.ultralytics import from_ultralytics, is_ultralytics_checkpoint
from edgecompress.errors import ConfigError, MissingToolchainError, ModelLoadError
from edgecompress.runtime.detect_post import PostConfig, decode_yolov8

# Ultralytics decides at import whether it is online and where its settings file goes.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault(
    "YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "edgecompress-tests-ultralytics")
)
NC = 10


@pytest.fixture(scope="module")
def ul() -> Iterator[ModuleType]:
    """``ultralytics.nn.tasks``. Importing ultralytics changes process-wide state (NumPy
    and torch print options, OpenCV threads, ``torch.save``); put it back afterwards so
    that the rest of the suite runs as it would without this module."""
    if importlib.util.find_spec("ultralytics") is None:
        if os.environ.get("EDGECOMPRESS_REQUIRE_ULTRALYTICS") == "1":
            pytest.fail("EDGECOMPRESS_REQUIRE_ULTRALYTICS=1 but ultralytics is not installed")
        pytest.skip("ultralytics is not installed (pip install 'edgecompress[ultralytics]')")
    import cv2

    np_opts, save, cv_threads = np.get_printoptions(), torch.save, cv2.getNumThreads()
    import ultralytics.nn.tasks as tasks

    yield tasks
    np.set_printoptions(**np_opts)
    torch.set_printoptions(profile="default")
    torch.save = save
    cv2.setNumThreads(cv_threads)


def _ultralytics_model(tasks: ModuleType, cfg: str, seed: int = 0) -> nn.Module:
    """A random ``DetectionModel`` whose batch norms matter: statistics and affine
    parameters away from their identity initialisation, and eps 1e-5 (not ours, 1e-3) on
    half of them so that copying eps is tested."""
    torch.manual_seed(seed)
    model = tasks.DetectionModel(cfg, nc=NC, verbose=False)
    with torch.no_grad():
        for i, m in enumerate(model.modules()):
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.eps = 1e-5 if i % 2 else m.eps
    return model.eval()


def _raw(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Ultralytics' raw head outputs in our order (box per level, then class per level):
    its Detect head's branches on the features the head receives."""
    head = model.model[-1]
    feats: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: feats.extend(args[0]))
    try:
        with torch.no_grad():
            model(x)
            return [b(f) for b, f in zip(head.cv2, feats, strict=True)] + [
                c(f) for c, f in zip(head.cv3, feats, strict=True)
            ]
    finally:
        hook.remove()


def _max_diffs(theirs: nn.Module, ours: nn.Module, x: torch.Tensor) -> list[float]:
    with torch.no_grad():
        got = ours(x)
    ref = _raw(theirs, x)
    assert [t.shape for t in got] == [t.shape for t in ref]
    return [float((a - b).abs().max()) for a, b in zip(got, ref, strict=True)]


@pytest.mark.parametrize(("cfg", "sizes"), [("yolov8n.yaml", (160, 320)), ("yolov8s.yaml", (160,))])
def test_converted_model_gives_ultralytics_raw_head_outputs(
    ul: ModuleType, cfg: str, sizes: tuple[int, ...]
) -> None:
    theirs = _ultralytics_model(ul, cfg)
    ours = from_ultralytics(theirs)
    assert isinstance(ours, YoloDetector) and not ours.training
    assert ours.num_classes == NC and ours.reg_max == 16
    torch.manual_seed(1)
    for size in sizes:
        x = torch.randn(1, 3, size, size)
        diffs = _max_diffs(theirs, ours, x)
        assert max(diffs) < 1e-5, (cfg, size, diffs)
    # Same parameters, less the DFL's fixed arange convolution.
    n_theirs = sum(p.numel() for p in theirs.parameters())
    n_dfl = sum(p.numel() for p in theirs.model[-1].dfl.parameters())
    assert sum(p.numel() for p in ours.parameters()) == n_theirs - n_dfl


def test_the_numpy_decoder_gives_ultralytics_decoded_boxes(ul: ModuleType) -> None:
    """Ultralytics' own decoding (DFL, grid, sigmoid) of its model, against
    ``decode_yolov8`` on the converted model's raw outputs: the layout matches and the
    DFL convolution that is not copied is not needed."""
    theirs = _ultralytics_model(ul, "yolov8n.yaml")
    ours = from_ultralytics(theirs)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        out = theirs(x)
        raw = [t.numpy() for t in ours(x)]
    pred = (out[0] if isinstance(out, tuple | list) else out)[0].numpy()  # (4 + nc, cells)
    cells = pred.shape[1]
    xywh, scores = pred[:4].T, pred[4:].max(axis=0)
    xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    order = np.argsort(-scores)[:50]
    dets = decode_yolov8(raw[:3], raw[3:], config=PostConfig(conf=0.0, iou=1.0, max_det=cells))
    assert len(dets) == cells
    np.testing.assert_allclose(dets.scores[:50], scores[order], atol=1e-5)
    np.testing.assert_allclose(dets.boxes[:50], xyxy[order], atol=1e-3)
    np.testing.assert_array_equal(dets.classes[:50], pred[4:].argmax(axis=0)[order])


def test_larger_scale_with_a_channel_cap_converts(ul: ModuleType) -> None:
    """yolov8m caps its channels at 768 (x 0.75 = 576): the width, depth and cap come from
    the layer shapes, and every tensor lands where its shape fits."""
    torch.manual_seed(0)
    theirs = ul.DetectionModel("yolov8m.yaml", nc=3, verbose=False).eval()
    ours = from_ultralytics(theirs)
    assert ours.backbone.stage4[0].conv.out_channels == 576
    assert len(ours.backbone.stage2[1].blocks) == 4
    n_dfl = sum(p.numel() for p in theirs.model[-1].dfl.parameters())
    assert sum(p.numel() for p in ours.parameters()) == (
        sum(p.numel() for p in theirs.parameters()) - n_dfl
    )


def test_a_fused_model_converts(ul: ModuleType) -> None:
    """After ``fuse()`` (as ``YOLO.predict`` leaves a model) the batch norms are folded
    into the convolutions; the converted model still computes the same."""
    theirs = _ultralytics_model(ul, "yolov8n.yaml")
    theirs.fuse(verbose=False)
    ours = from_ultralytics(theirs)
    diffs = _max_diffs(theirs, ours, torch.randn(1, 3, 160, 160))
    assert max(diffs) < 1e-4, diffs


def test_an_sppf_without_activation_converts(ul: ModuleType) -> None:
    """YOLO26-style ``SPPF(act=False)``: its ``cv1`` has no activation, and neither has
    ours after conversion."""
    theirs = _ultralytics_model(ul, "yolov8n.yaml")
    theirs.model[9].cv1.act = nn.Identity()
    ours = from_ultralytics(theirs)
    assert isinstance(ours.backbone.stage4[2].cv_in.act, nn.Identity)
    assert max(_max_diffs(theirs, ours, torch.randn(1, 3, 160, 160))) < 1e-5


@pytest.mark.parametrize("form", ["YOLO.save", "trainer"])
def test_checkpoint_file_round_trip(ul: ModuleType, tmp_path: Path, form: str) -> None:
    """Both forms Ultralytics writes: ``YOLO.save`` (``model`` in half precision, with
    metadata) and the trainer's ``last.pt`` (``model: None``, the EMA in half precision)."""
    from ultralytics import YOLO

    theirs = _ultralytics_model(ul, "yolov8n.yaml")
    path = tmp_path / "best.pt"
    if form == "YOLO.save":
        yolo = YOLO("yolov8n.yaml", task="detect")
        yolo.model = theirs
        yolo.save(path)
    else:
        ckpt = {"epoch": 3, "model": None, "ema": copy.deepcopy(theirs).half(), "updates": 9}
        torch.save(ckpt, path)
    ours = from_ultralytics(path)
    rounded = copy.deepcopy(theirs).half().float()  # what the file holds
    diffs = _max_diffs(rounded, ours, torch.randn(1, 3, 160, 160))
    assert max(diffs) < 1e-5, diffs
    assert from_ultralytics(str(path)).num_classes == NC
    assert is_ultralytics_checkpoint(path)  # what `edgecompress detect MODEL` dispatches on
    torch.save(ours, tmp_path / "ours.pt")
    assert not is_ultralytics_checkpoint(tmp_path / "ours.pt")


def test_converted_model_prunes_and_keeps_its_head_layout(ul: ModuleType) -> None:
    ours = from_ultralytics(_ultralytics_model(ul, "yolov8n.yaml"))
    x = torch.randn(1, 3, 160, 160)
    pruned, plan = prune_detector(ours, 160, keep=0.6, progress=False)
    assert plan.macs[1] <= 0.65 * plan.macs[0]
    with torch.no_grad():
        before, after = ours(x), pruned.eval()(x)
    assert [t.shape for t in after] == [t.shape for t in before]


@pytest.mark.parametrize(
    ("cfg", "found"),
    [
        ("yolov8n-seg.yaml", "segmentation"),
        ("yolov8n-cls.yaml", "classification"),
        ("yolo11n.yaml", "C3k2"),
        ("yolov5n.yaml", "YOLOv5u"),
        ("yolov8n-p2.yaml", "layer order"),
    ],
)
def test_other_models_are_refused_saying_what_is_supported(
    ul: ModuleType, cfg: str, found: str
) -> None:
    from ultralytics import YOLO

    with pytest.raises(ConfigError, match=found) as err:
        from_ultralytics(YOLO(cfg))
    assert "supported: YOLOv8 detection models" in str(err.value)


def test_bad_files_are_refused(ul: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        from_ultralytics(tmp_path / "missing.pt")
    bare = tmp_path / "weights.pt"
    torch.save(_ultralytics_model(ul, "yolov8n.yaml").state_dict(), bare)
    with pytest.raises(ModelLoadError, match="bare state_dict"):
        from_ultralytics(bare)
    with pytest.raises(ConfigError, match="not an Ultralytics model"):
        from_ultralytics(nn.Conv2d(3, 8, 3))


def test_without_ultralytics_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs with or without the package: its import is made to fail."""
    path = tmp_path / "best.pt"
    path.write_bytes(b"not read")
    for name in [m for m in sys.modules if m == "ultralytics" or m.startswith("ultralytics.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ultralytics", None)
    with pytest.raises(MissingToolchainError, match=r"edgecompress\[ultralytics\]") as err:
        from_ultralytics(path)
    assert "AGPL-3.0" in str(err.value)
