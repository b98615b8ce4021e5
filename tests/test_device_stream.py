"""The detection stream on NPU contexts (``bench --stream``), run by the on-device agent.

The NPU is faked: there is no RK3588 here, so ``rknnlite.api`` is tests/fakes/rknnlite,
which holds its core for a few ms per call and returns outputs recorded from a real run.
Everything else is real: real image files (scikit-learn's handwritten digits drawn on
canvases of several sizes, png and jpg), a real YOLOv8-style detector (untrained, tiny)
exported to ONNX and run by ONNX Runtime on each letterboxed image to make the recording
(keyed by the SHA-256 of the uint8 NHWC input, so the stream only gets outputs when its
letterbox gives the very bytes the detector's own preprocessing gives), the agent in its
own process with the copied bundle, the threads and queues, and the NumPy decoding.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from edgecompress.errors import ConfigError
from edgecompress.runtime.detect_post import Detections, PostConfig
from edgecompress.runtime.harness import BenchOptions, DeviceDisconnected, RunStopped
from edgecompress.runtime.stream_bench import StreamOptions, bench_stream

FAKES = Path(__file__).parent / "fakes"
SIZE = 128
POST = PostConfig(conf=0.002, iou=0.5, max_det=20)
OPTS = BenchOptions(warmup=1, sensors=(), python=sys.executable, inputs=((1, SIZE, SIZE, 3),))


@dataclass(frozen=True)
class Recorded:
    images: Path  # the image folder
    outputs: Path  # the .npz the fake replays
    expected: list[Detections]  # per image (sorted by name): ORT outputs decoded directly


def _write_images(folder: Path) -> list[Path]:
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits().images
    rng = np.random.default_rng(0)
    paths = []
    for k, (w, h) in enumerate([(200, 120), (90, 150), (128, 128), (300, 64), (70, 70)]):
        canvas = np.full((h, w, 3), 40 + 30 * k, np.uint8)
        canvas += rng.integers(0, 20, canvas.shape, dtype=np.uint8)
        for j in range(3):
            side = int(rng.integers(24, min(w, h) - 4))
            glyph = cv2.resize((digits[5 * k + j] * 15).astype(np.uint8), (side, side))
            x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            canvas[y : y + side, x : x + side, j] = np.maximum(
                canvas[y : y + side, x : x + side, j], glyph
            )
        path = folder / f"im{k}.{'jpg' if k % 2 else 'png'}"
        cv2.imwrite(str(path), canvas)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """The detector's head outputs on every image, from ONNX Runtime (~10 s)."""
    import torch

    from edgecompress.detect.data import load_image
    from edgecompress.detect.model import YoloDetector
    from edgecompress.detect.train import (
        decode_head_outputs,
        detector_preprocess,
        export_detector_onnx,
        onnx_runner,
    )
    from edgecompress.runtime.detect_post import letterbox_geometry

    root = tmp_path_factory.mktemp("stream")
    (root / "images").mkdir()
    paths = _write_images(root / "images")
    torch.manual_seed(0)
    model = YoloDetector(num_classes=3, width=0.0625, depth=0.33, prior_size=SIZE)
    onnx = root / "det.onnx"
    export_detector_onnx(model, SIZE, onnx, exporter="torchscript")
    run, spec = onnx_runner(onnx), detector_preprocess(SIZE)
    keys, outs, expected = [], [], []
    for path in paths:
        image = load_image(path)
        prepared = spec.prepare(image)  # uint8 RGB HxWx3: what the NPU takes
        keys.append(hashlib.sha256(prepared[None].tobytes()).hexdigest())
        out = run(spec.normalize(prepared)[None])
        outs.append(out)
        lb = letterbox_geometry(image.shape[1], image.shape[0], SIZE)
        expected.append(decode_head_outputs(out, [lb], SIZE, POST)[0])
    arrays = {f"out{i}": np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))}
    np.savez(root / "outputs.npz", keys=np.array(keys), **arrays)
    return Recorded(root / "images", root / "outputs.npz", expected)


@pytest.fixture()
def rknn_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: Recorded) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(FAKES))
    monkeypatch.setenv("FAKE_RKNN_LOG", str(tmp_path / "cores.log"))
    monkeypatch.setenv("FAKE_RKNN_OUTPUTS", str(recorded.outputs))
    path = tmp_path / "det.rknn"
    path.write_bytes(b"RKNN" + bytes(64))
    return path


def _stream(recorded: Recorded, **kw: object) -> StreamOptions:
    base = StreamOptions(
        recorded.images, frames=10, conf=POST.conf, iou=POST.iou, max_det=POST.max_det
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _cores(rknn_file: Path) -> Counter[str]:
    return Counter((rknn_file.parent / "cores.log").read_text().split())


def test_frames_come_back_in_order_with_the_onnxruntime_detections(
    rknn_file: Path, recorded: Recorded
) -> None:
    stream = _stream(recorded, frames=12, detections=True)
    res = bench_stream(rknn_file, "rk3588", "local", replace(OPTS, parallel=3), stream)
    assert res["complete"] and res["torch_imported"] is False
    frames = res["frames"]
    assert [f["frame"] for f in frames] == list(range(12))
    assert sum(len(d) for d in recorded.expected) > 0  # something to compare
    for f in frames:
        want = recorded.expected[f["frame"] % len(recorded.expected)]
        assert f["image"] == f"im{f['frame'] % 5}.{'jpg' if f['frame'] % 5 % 2 else 'png'}"
        assert f["detections"] == len(want)
        np.testing.assert_array_equal(np.asarray(f["classes"]), want.classes)
        np.testing.assert_allclose(np.asarray(f["scores"]).reshape(-1), want.scores, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(f["boxes"]).reshape(-1, 4), want.boxes, rtol=1e-12)
    st = res["stream"]
    assert st["frames"] == 12 and st["contexts"] == 3 and st["in_flight"] == 6
    assert sum(st["frames_per_context"]) == 12 and res["strides"] == [8, 16, 32]
    for stage in ("pre", "npu", "post", "e2e", "wait_npu", "wait_post", "reorder"):
        assert st["stages"][stage]["p90_ms"] >= st["stages"][stage]["p50_ms"] >= 0
    assert st["stages"]["npu"]["p50_ms"] >= 3.0  # the fake holds its core 3 ms
    assert st["stages"]["e2e"]["p50_ms"] >= st["stages"]["npu"]["p50_ms"]


def test_contexts_use_distinct_cores_and_raise_throughput(
    rknn_file: Path, recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20 ms per NPU call: reading, letterboxing and decoding (~1 ms a frame here, more on
    # a loaded machine) stay small beside it, as they do beside a real YOLOv8n call.
    monkeypatch.setenv("FAKE_RKNN_MS", "20")
    stream = _stream(recorded, frames=24)
    one = bench_stream(rknn_file, "rk3588", "local", replace(OPTS, core_mask="0"), stream)
    assert set(_cores(rknn_file)) == {"1"}  # NPU_CORE_0's real value
    three = bench_stream(rknn_file, "rk3588", "local", replace(OPTS, parallel=3), stream)
    assert three["core_masks"] == ["NPU_CORE_0", "NPU_CORE_1", "NPU_CORE_2"]
    assert set(_cores(rknn_file)) == {"1", "2", "4"}
    assert all(n > 0 for n in three["stream"]["frames_per_context"])
    ratio = three["stream"]["frames_per_s"] / one["stream"]["frames_per_s"]
    assert ratio > 1.5, f"three contexts gave only {ratio:.2f}x the frames/s of one"
    assert one["stream"]["npu_busy"] > 0.5  # one context: the NPU is the bottleneck


def test_a_failing_npu_call_mid_stream_keeps_the_frames_delivered(
    rknn_file: Path, recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_RKNN_FAIL_AFTER", "8")  # 2 warm-up calls, then 6 frames
    stream = _stream(recorded, frames=30, progress_s=0.01)
    with pytest.raises(RunStopped, match="inference returned nothing") as err:
        bench_stream(rknn_file, "rk3588", "local", replace(OPTS, parallel=2), stream)
    assert "NPU context" in str(err.value) and "complete: false" in str(err.value)
    partial = err.value.partial
    assert partial["complete"] is False and partial["artifact"] == str(rknn_file)
    assert 1 <= partial["stream"]["frames"] <= 6
    assert [f["frame"] for f in partial["frames"]] == list(range(partial["stream"]["frames"]))
    assert partial["stream"]["stages"]["npu"]["p50_ms"] >= 3.0


def test_a_device_lost_mid_stream_keeps_the_frames_delivered(
    rknn_file: Path, recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_RKNN_EXIT_AFTER", "10")  # 1 warm-up call, then 9 frames
    monkeypatch.setenv("FAKE_RKNN_MS", "10")
    stream = _stream(recorded, frames=40, progress_s=0.01)
    with pytest.raises(DeviceDisconnected, match="without a result") as err:
        bench_stream(rknn_file, "rk3588", "local", OPTS, stream)
    partial = err.value.partial
    assert partial["complete"] is False and 1 <= partial["stream"]["frames"] <= 9
    assert partial["stream"]["frames_per_s"] > 0


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("nhwc", r"NPU output 0 \(box logits\) has shape \(1, 16, 16, 64\) \(it looks NHWC"),
        ("drop_last", r"returned 5 outputs .*expected an even number"),
    ],
)
def test_outputs_in_another_layout_are_a_clear_error(
    rknn_file: Path, recorded: Recorded, monkeypatch: pytest.MonkeyPatch, layout: str, message: str
) -> None:
    monkeypatch.setenv("FAKE_RKNN_LAYOUT", layout)
    with pytest.raises(ConfigError, match=message):
        bench_stream(rknn_file, "rk3588", "local", OPTS, _stream(recorded))


def test_strides_that_do_not_match_the_outputs_are_a_clear_error(
    rknn_file: Path, recorded: Recorded
) -> None:
    with pytest.raises(ConfigError, match=r"expected 4 outputs"):
        bench_stream(rknn_file, "rk3588", "local", OPTS, _stream(recorded, strides=(8, 16)))
    with pytest.raises(ConfigError, match=r"reg_max 8"):
        bench_stream(rknn_file, "rk3588", "local", OPTS, _stream(recorded, reg_max=8))


def test_in_flight_bounds_the_frames_between_reading_and_delivery(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, with contexts that replay the recording: never more than ``in_flight``
    frames read and not yet delivered, however many contexts wait for work."""
    from edgecompress.runtime.detect_stream import StreamConfig, run_stream
    from edgecompress.runtime.images import list_images

    with np.load(recorded.outputs) as data:
        by_key = {
            str(k): [data[f"out{i}"][j : j + 1] for i in range(6)]
            for j, k in enumerate(data["keys"])
        }
    live, most = [0], [0]

    def infer(inputs: list[np.ndarray]) -> list[np.ndarray]:
        time.sleep(0.005)
        return by_key[hashlib.sha256(inputs[0].tobytes()).hexdigest()]

    images = list_images(recorded.images)
    cfg = StreamConfig((SIZE, SIZE), frames=20, in_flight=2, post=POST, warmup=1)

    def delivered(frame: object) -> None:
        live[0] -= 1

    import edgecompress.runtime.detect_stream as ds

    real = ds.letterboxed_input

    def counting(*args: object, **kw: object) -> object:
        live[0] += 1
        most[0] = max(most[0], live[0])
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ds, "letterboxed_input", counting)
    res = run_stream([infer] * 3, images, cfg, delivered)
    assert [f.index for f in res.frames] == list(range(20))
    assert most[0] <= 2 + 1  # in_flight, and the warm-up's read that is never delivered


def test_numpy_resize_is_within_one_grey_level_of_opencv() -> None:
    """Boards without OpenCV letterbox with NumPy: OpenCV's sampling points."""
    import cv2

    from edgecompress.runtime.images import _resize_linear_numpy

    rng = np.random.default_rng(0)
    for (h, w), (nw, nh) in [
        ((120, 200), (128, 77)),
        ((37, 23), (90, 145)),
        ((100, 100), (33, 33)),
    ]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR).astype(int)
        got = _resize_linear_numpy(image, nw, nh).astype(int)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1


def test_boards_without_opencv_letterbox_with_pillow_and_numpy(
    recorded: Recorded, tmp_path: Path
) -> None:
    """The same geometry, and pixels within one grey level of the OpenCV letterbox."""
    import subprocess

    from edgecompress.runtime.images import letterboxed_input

    image = recorded.images / "im0.png"  # lossless: both decoders give the same pixels
    code = (
        "import sys; sys.modules['cv2'] = None; sys.modules['torch'] = None\n"
        "from pathlib import Path; import numpy as np\n"
        "from edgecompress.runtime.images import letterboxed_input\n"
        "x, lb = letterboxed_input(Path(sys.argv[1]), (128, 128))\n"
        "np.save(sys.argv[2], x); print(lb.scale, lb.pad_x, lb.pad_y)\n"
    )
    out = tmp_path / "x.npy"
    res = subprocess.run(
        [sys.executable, "-c", code, str(image), str(out)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    want, lb = letterboxed_input(image, (SIZE, SIZE))
    assert res.stdout.split() == [str(lb.scale), str(lb.pad_x), str(lb.pad_y)]
    got = np.load(out)
    assert got.shape == want.shape == (1, SIZE, SIZE, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_cli_stream_reports_frames_per_second(
    rknn_file: Path, recorded: Recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from edgecompress.cli import main

    out = tmp_path / "stream.json"
    code = main(
        [
            "bench", str(rknn_file), "--stream", str(recorded.images), "--contexts", "2",
            "--frames", "6", "--input-shape", f"1x{SIZE}x{SIZE}x3", "--sensor", "none",
            "--warmup", "1", "--conf", str(POST.conf), "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "frames/s" in printed and "npu p50/p90 ms" in printed
    res = json.loads(out.read_text())
    assert res["stream"]["frames"] == 6 and res["stream"]["contexts"] == 2
    assert res["stream"]["frames_per_s"] > 0 and len(res["frames"]) == 6
