"""Detection on a stream of real frames: N NPU contexts with frames in flight.

Three stages joined by queues, as the RK3588 YOLOv8 deployments that get their
throughput from all three NPU cores run it::

    reader (read, decode, letterbox -> uint8 1xHxWx3) -> N NPU workers (one runtime per
    core, one thread each) -> post (decode_yolov8, boxes back to the image) -> in order

At most ``in_flight`` frames are between the start of their reading and their delivery:
the reader takes a slot before it reads a frame and the delivery gives it back, so
memory stays bounded and a slow stage shows as the reader waiting for a slot. Frames
finish the NPU in any order; the post stage decodes each as it arrives and delivers them
in frame order. Each frame records its stage times (pre, NPU, post), its waits in the
queues and its end-to-end latency; :func:`stream_stats` turns those records into
frames/s and per-stage percentiles (on the board, and on the host from the streamed
records when a run stops early).

Torch-free and 3.8-compatible: the on-device agent runs it (job key ``stream``).

>>> res = run_stream(backend.contexts(), list_images(Path("frames")), StreamConfig((640, 640)))
... # doctest: +SKIP
>>> res.stats["frames_per_s"], res.stats["stages"]["npu"]["p50_ms"]  # doctest: +SKIP
(88.1, 31.2)
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress.errors import ConfigError, DeviceError
from edgecompress.runtime.detect_post import Detections, Letterbox, PostConfig, decode_yolov8
from edgecompress.runtime.images import PAD_VALUE, letterboxed_input

if TYPE_CHECKING:  # aliases only in annotations: the agent also runs on Python 3.8
    from collections.abc import Callable, Sequence

    Infer = Callable[[list[np.ndarray]], Sequence[np.ndarray]]

# The per-frame times a record carries (ms); ``wait_slot`` is before the frame starts.
STAGES = ("wait_slot", "pre", "wait_npu", "npu", "wait_post", "post", "reorder", "e2e")
_POLL_S = 0.05  # how often a blocked stage looks whether the stream was stopped


class StreamError(DeviceError):
    """A stream stopped before its last frame; ``partial`` holds the statistics of the
    frames delivered before it."""

    def __init__(self, message: str, partial: dict[str, Any]) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass(frozen=True)
class StreamConfig:
    """``input_size`` (height, width) of the NPU input; ``frames`` to run (the images
    are cycled); ``in_flight`` frames at most between reading and delivery (0: two per
    context); ``strides``/``reg_max`` checked against the outputs (None: read from their
    shapes); ``warmup`` untimed calls per context on the first frame."""

    input_size: tuple[int, int]
    frames: int = 100
    in_flight: int = 0
    strides: tuple[int, ...] | None = None
    reg_max: int | None = None
    post: PostConfig = field(default_factory=PostConfig)
    pad_value: int = PAD_VALUE
    warmup: int = 2

    def slots(self, contexts: int) -> int:
        return self.in_flight or 2 * contexts


@dataclass(frozen=True)
class FrameResult:
    """One delivered frame: which image, which context ran it, its detections (original
    image pixels), its stage times and when it started/finished (ms from stream start)."""

    index: int
    image: str
    context: int
    detections: Detections
    ms: dict[str, float]
    start_ms: float
    done_ms: float

    def record(self, detections: bool = False) -> dict[str, Any]:
        """JSON-able: the times and the detection count, the detections when asked."""
        out: dict[str, Any] = {
            "frame": self.index,
            "image": self.image,
            "context": self.context,
            "detections": len(self.detections),
            "start_ms": round(self.start_ms, 4),
            "done_ms": round(self.done_ms, 4),
            "ms": {k: round(v, 4) for k, v in self.ms.items()},
        }
        if detections:
            out["boxes"] = self.detections.boxes.tolist()
            out["scores"] = self.detections.scores.tolist()
            out["classes"] = self.detections.classes.tolist()
        return out


@dataclass(frozen=True)
class StreamResult:
    """The delivered frames in order, :func:`stream_stats` of them, the warm-up calls'
    times (ms) and the strides the outputs were found at."""

    frames: list[FrameResult]
    stats: dict[str, Any]
    warmup_ms: list[float]
    strides: tuple[int, ...]


class HeadLayout:
    """What the NPU must return per frame: the head cut before decoding, as the ONNX
    export has it: box logits of every level then class logits of every level, each
    float (1, C, H, W) with H x stride, W x stride = the input. Checked on every frame
    (shapes only): an NHWC output or a missing one would otherwise decode garbage."""

    def __init__(self, config: StreamConfig) -> None:
        self.size, self.strides, self.reg_max = config.input_size, config.strides, config.reg_max
        self.known: tuple[tuple[int, ...], ...] | None = None
        self.found: tuple[int, ...] = ()

    def split(self, outputs: Sequence[Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(box outputs, class outputs) of one frame, after the check."""
        outs = list(outputs)
        shapes = tuple(tuple(getattr(o, "shape", ())) for o in outs)
        if shapes != self.known or any(
            getattr(o, "dtype", np.dtype("O")).kind != "f" for o in outs
        ):
            self._check(outs, shapes)
        half = len(outs) // 2
        return outs[:half], outs[half:]

    def _check(self, outs: list[Any], shapes: tuple[tuple[int, ...], ...]) -> None:
        levels = len(self.strides) if self.strides else None
        if len(outs) < 2 or len(outs) % 2 or (levels and len(outs) != 2 * levels):
            want = f"{2 * levels} outputs" if levels else "an even number of outputs"
            raise ConfigError(
                f"the NPU returned {len(outs)} outputs {list(shapes)}; expected {want} (box "
                "logits per stride level, then class logits per level: the detector head cut "
                "before its decoding, as export_detector_onnx writes it)"
            )
        h, w = self.size
        half, strides = len(outs) // 2, []
        for i, (o, shape) in enumerate(zip(outs, shapes)):  # noqa: B905 (3.8 boards)
            kind = "box" if i < half else "class"
            ok = len(shape) == 4 and shape[0] == 1 and shape[2] > 0 and shape[3] > 0
            stride = h // shape[2] if ok else 0
            ok = ok and stride * shape[2] == h and stride * shape[3] == w
            if not ok:
                hint = " (it looks NHWC: channels last)" if _looks_nhwc(shape, h, w) else ""
                raise ConfigError(
                    f"NPU output {i} ({kind} logits) has shape {shape}{hint}; expected NCHW "
                    f"(1, C, H, W) with H = {h} / stride and W = {w} / stride, the layout of "
                    "the ONNX head outputs: convert the .rknn from that ONNX without changing "
                    "its output layout"
                )
            if np.asarray(o).dtype.kind != "f":
                raise ConfigError(
                    f"NPU output {i} is {np.asarray(o).dtype}, expected float: the "
                    "rknn-toolkit-lite2 outputs must be dequantized (its default)"
                )
            strides.append(stride)
        self._check_levels(shapes, strides)
        self.known, self.found = shapes, tuple(strides[:half])

    def _check_levels(self, shapes: tuple[tuple[int, ...], ...], strides: list[int]) -> None:
        half = len(shapes) // 2
        box, cls = shapes[:half], shapes[half:]
        if strides[:half] != strides[half:] or (
            self.strides is not None and tuple(strides[:half]) != tuple(self.strides)
        ):
            raise ConfigError(
                f"NPU outputs {list(shapes)} are at strides {strides}; expected the box levels "
                f"then the class levels at the same strides"
                + (f" {list(self.strides)}" if self.strides else "")
            )
        reg = {s[1] // 4 for s in box} if all(s[1] % 4 == 0 for s in box) else set()
        if len(reg) != 1 or (self.reg_max is not None and reg != {self.reg_max}):
            raise ConfigError(
                f"NPU box outputs have {[s[1] for s in box]} channels; expected 4 x reg_max "
                f"(reg_max {self.reg_max or 'the same on every level'}) per level"
            )
        if len({s[1] for s in cls}) != 1:
            raise ConfigError(
                f"NPU class outputs have {[s[1] for s in cls]} channels; expected the same "
                "number of classes on every level"
            )


def _looks_nhwc(shape: tuple[int, ...], h: int, w: int) -> bool:
    return len(shape) == 4 and shape[1] > 0 and h % shape[1] == 0 and h // shape[1] * shape[2] == w


class _Frame:
    """A frame on its way through the stages, with the clock at each step (ns)."""

    __slots__ = ("boxes", "classes", "context", "dets", "index", "lb", "path", "t", "x")

    def __init__(
        self, index: int, path: Path, t: dict[str, int], x: np.ndarray, lb: Letterbox
    ) -> None:
        self.index, self.path, self.t, self.x, self.lb = index, path, t, x, lb
        self.context = -1
        self.boxes: list[np.ndarray] = []
        self.classes: list[np.ndarray] = []
        self.dets: Detections | None = None

    def result(self, t0: int) -> FrameResult:
        t = self.t
        spans = (
            ("wait_slot", "slot", "read"), ("pre", "read", "pre"), ("wait_npu", "pre", "npu0"),
            ("npu", "npu0", "npu1"), ("wait_post", "npu1", "post0"), ("post", "post0", "post1"),
            ("reorder", "post1", "out"), ("e2e", "read", "out"),
        )  # fmt: skip
        ms = {name: (t[b] - t[a]) / 1e6 for name, a, b in spans}
        assert self.dets is not None
        return FrameResult(
            self.index, self.path.name, self.context, self.dets, ms,
            (t["read"] - t0) / 1e6, (t["out"] - t0) / 1e6,
        )  # fmt: skip


class _Pipeline:
    def __init__(
        self,
        contexts: Sequence[Infer],
        images: Sequence[Path],
        cfg: StreamConfig,
        on_frame: Callable[[FrameResult], None] | None,
    ) -> None:
        self.contexts, self.images, self.cfg, self.on_frame = contexts, images, cfg, on_frame
        self.layout = HeadLayout(cfg)
        self.slots = threading.Semaphore(cfg.slots(len(contexts)))
        self.to_npu: queue.Queue[_Frame | None] = queue.Queue()
        self.to_post: queue.Queue[_Frame] = queue.Queue()
        self.stop = threading.Event()
        self.failure: list[tuple[str, BaseException]] = []
        self.lock = threading.Lock()
        self.delivered: list[FrameResult] = []
        self.t0 = 0

    def fail(self, where: str, exc: BaseException) -> None:
        with self.lock:
            if not self.failure:
                self.failure.append((where, exc))
        self.stop.set()

    def read(self) -> None:
        clock, i, path = time.perf_counter_ns, 0, self.images[0]
        try:
            for i in range(self.cfg.frames):
                path = self.images[i % len(self.images)]
                waited_from = clock()
                while not self.slots.acquire(timeout=_POLL_S):
                    if self.stop.is_set():
                        return
                if self.stop.is_set():
                    return
                t = {"slot": waited_from, "read": clock()}
                x, lb = letterboxed_input(path, self.cfg.input_size, self.cfg.pad_value)
                t["pre"] = clock()
                self.to_npu.put(_Frame(i, path, t, x, lb))
        except BaseException as exc:  # reported by the post stage, which owns the result
            self.fail(f"reading frame {i} ({path.name})", exc)
        finally:
            for _ in self.contexts:
                self.to_npu.put(None)

    def infer(self, k: int, infer: Infer) -> None:
        clock = time.perf_counter_ns
        while not self.stop.is_set():
            frame = self.to_npu.get()
            if frame is None or self.stop.is_set():
                return
            try:
                frame.t["npu0"] = clock()
                outputs = infer([frame.x])
                frame.t["npu1"] = clock()
                frame.boxes, frame.classes = self.layout.split(outputs)
            except BaseException as exc:
                self.fail(f"frame {frame.index} ({frame.path.name}) on NPU context {k}", exc)
                return
            frame.context = k
            self.to_post.put(frame)

    def run(self) -> list[FrameResult]:
        threads = [threading.Thread(target=self.read, name="stream-read", daemon=True)]
        threads += [
            threading.Thread(target=self.infer, args=(k, fn), name=f"stream-npu{k}", daemon=True)
            for k, fn in enumerate(self.contexts)
        ]
        self.t0 = time.perf_counter_ns()
        for t in threads:
            t.start()
        try:
            self.post(threads)
        except Exception as exc:
            self.fail(f"post-processing after frame {len(self.delivered)}", exc)
        finally:  # an interrupt too: no stage is left running
            self.stop.set()
            for t in threads:  # an NPU call in progress ends within its inference time
                t.join(5.0)
        return self.delivered

    def post(self, threads: list[threading.Thread]) -> None:
        clock, cfg = time.perf_counter_ns, self.cfg
        pending: dict[int, _Frame] = {}
        while len(self.delivered) < cfg.frames and not self.stop.is_set():
            try:
                frame = self.to_post.get(timeout=_POLL_S)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and self.to_post.empty():
                    raise DeviceError("every stream stage stopped before the last frame") from None
                continue
            frame.t["post0"] = clock()
            strides = self.layout.found
            frame.dets = decode_yolov8(frame.boxes, frame.classes, strides, cfg.post, frame.lb)
            frame.t["post1"] = clock()
            frame.boxes = frame.classes = []
            pending[frame.index] = frame
            while len(self.delivered) in pending:
                ready = pending.pop(len(self.delivered))
                ready.t["out"] = clock()
                result = ready.result(self.t0)
                self.delivered.append(result)
                if self.on_frame is not None:
                    self.on_frame(result)
                self.slots.release()  # after the hand-over: the consumer is a stage too


def warm_up(
    contexts: Sequence[Infer], first: Path, cfg: StreamConfig
) -> tuple[list[float], tuple[int, ...]]:
    """``cfg.warmup`` untimed calls per context on the first frame (lazy allocation, the
    first call's setup), checking the output layout before the stream starts: the calls'
    times (ms) and the strides the outputs are at."""
    x, _ = letterboxed_input(first, cfg.input_size, cfg.pad_value)
    layout, times = HeadLayout(cfg), []
    for infer in contexts:
        for _ in range(max(1, cfg.warmup)):
            t = time.perf_counter_ns()
            outputs = infer([x])
            times.append((time.perf_counter_ns() - t) / 1e6)
            layout.split(outputs)
    return times, layout.found


def run_stream(
    contexts: Sequence[Infer],
    images: Sequence[Path],
    cfg: StreamConfig,
    on_frame: Callable[[FrameResult], None] | None = None,
) -> StreamResult:
    """Run ``cfg.frames`` frames (``images`` cycled) through the contexts (callables
    taking the NPU's input list and returning its outputs, each called from one thread),
    delivering each frame in order to ``on_frame``. A failure in any stage stops the
    stream and raises :class:`StreamError` with the delivered frames' statistics."""
    if not contexts:
        raise ConfigError("a stream needs at least one NPU context")
    if not images:
        raise ConfigError("a stream needs at least one image")
    if cfg.frames < 1 or cfg.in_flight < 0:
        raise ConfigError(
            f"stream: frames must be >= 1 and in_flight >= 0, got {cfg.frames}, {cfg.in_flight}"
        )
    warm, strides = warm_up(contexts, images[0], cfg)
    pipe = _Pipeline(contexts, images, cfg, on_frame)
    frames = pipe.run()
    slots = cfg.slots(len(contexts))
    stats = stream_stats([f.record() for f in frames], len(contexts), slots)
    if pipe.failure:
        where, exc = pipe.failure[0]
        raise StreamError(
            f"the stream stopped at {where}: {type(exc).__name__}: {exc}; the {len(frames)} of "
            f"{cfg.frames} frames delivered before it are kept",
            stats,
        )
    return StreamResult(frames, stats, warm, strides)


def _percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(a.mean()),
        "max_ms": float(a.max()),
    }


def stream_stats(records: list[dict[str, Any]], contexts: int, in_flight: int) -> dict[str, Any]:
    """Frames/s and per-stage times of delivered frames (:meth:`FrameResult.record`).

    ``frames_per_s`` is frames over the time from the first frame's start to the last
    delivery; ``npu_busy`` the share of that time the contexts spent in NPU calls (1.0:
    every context busy all the time); ``stages`` p50/p90/p99/mean/max per frame of each
    span in :data:`STAGES` (``e2e`` from the start of reading to the delivery)."""
    out: dict[str, Any] = {"frames": len(records), "contexts": contexts, "in_flight": in_flight}
    if not records:
        return {**out, "seconds": 0.0, "frames_per_s": None, "npu_busy": None, "stages": {}}
    seconds = max(r["done_ms"] for r in records) / 1e3
    per_context = [0] * contexts
    for r in records:
        if 0 <= r["context"] < contexts:
            per_context[r["context"]] += 1
    npu_s = sum(r["ms"]["npu"] for r in records) / 1e3
    return {
        **out,
        "seconds": seconds,
        "frames_per_s": len(records) / seconds if seconds > 0 else None,
        "npu_busy": npu_s / (contexts * seconds) if seconds > 0 else None,
        "frames_per_context": per_context,
        "stages": {s: _percentiles([r["ms"][s] for r in records]) for s in STAGES},
        "how": "wall clock on the device (perf_counter) per frame; frames/s over the first "
        "frame's start to the last frame's delivery, after an untimed warm-up per context",
    }
