"""The host side of the detection stream (``edgecompress bench det.rknn --stream DIR``):
stage the agent, the artifact and the images on the device, run the agent's ``stream``
job (:mod:`edgecompress.runtime.detect_stream`) and return one JSON-able result.

>>> res = bench_stream(Path("det.rknn"), "rk3588", "ssh://radxa@rock5b",
...     BenchOptions(inputs=((1, 640, 640, 3),), parallel=3), StreamOptions(Path("frames/")))
... # doctest: +SKIP
>>> res["stream"]["frames_per_s"], res["stream"]["stages"]["npu"]["p50_ms"]  # doctest: +SKIP
(88.1, 31.2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgecompress import errors
from edgecompress.errors import ConfigError
from edgecompress.runtime.backends import backend_for
from edgecompress.runtime.detect_post import PostConfig
from edgecompress.runtime.harness import (
    BenchOptions,
    ProgressLines,
    RunStopped,
    bench_job,
    run_agent,
    run_identity,
)
from edgecompress.runtime.images import list_images
from edgecompress.runtime.transports import parse_device


@dataclass(frozen=True)
class StreamOptions:
    """What to stream (the CLI's ``--stream`` flags): the first ``frames`` images of the
    folder ``images`` (cycled when there are fewer), at most ``in_flight`` frames between
    reading and delivery (0: two per NPU context), the post-processing thresholds, the
    head's ``strides``/``reg_max`` to check the outputs against (empty/None: read from the
    outputs), and whether each frame's detections come back (``detections``)."""

    images: Path
    frames: int = 200
    in_flight: int = 0
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    multi_label: bool = False
    strides: tuple[int, ...] = ()
    reg_max: int | None = None
    detections: bool = False
    progress_s: float = 0.5

    def post(self) -> PostConfig:
        try:
            return PostConfig(self.conf, self.iou, self.max_det, multi_label=self.multi_label)
        except ValueError as exc:
            raise ConfigError(f"stream post-processing: {exc}") from None


def _input_size(artifact: Path, opts: BenchOptions) -> tuple[int, int]:
    shapes = opts.inputs
    if len(shapes) != 1 or len(shapes[0]) != 4 or shapes[0][0] != 1 or shapes[0][3] != 3:
        raise ConfigError(
            f"{artifact}: a detection stream needs the model's one input as 1xHxWx3 (uint8 "
            f"NHWC, what the NPU takes; e.g. --input-shape 1x640x640x3), got {list(shapes)}"
        )
    return shapes[0][1], shapes[0][2]


def stream_job(
    artifact: Path, runtime: str, opts: BenchOptions, stream: StreamOptions
) -> dict[str, Any]:
    """The agent's job: the bench job (``opts.parallel`` contexts) and its ``stream`` spec."""
    size = _input_size(artifact, opts)
    post = stream.post()
    if stream.frames < 1 or stream.in_flight < 0:
        raise ConfigError(
            f"--frames must be >= 1 and --in-flight >= 0, got {stream.frames}, {stream.in_flight}"
        )
    job = bench_job(artifact, runtime, opts, probe=False)
    job["progress_s"] = stream.progress_s
    job["stream"] = {
        "images": "images",
        "input_size": list(size),
        "frames": stream.frames,
        "in_flight": stream.in_flight,
        "strides": list(stream.strides) or None,
        "reg_max": stream.reg_max,
        "post": asdict(post),
        "detections": stream.detections,
    }
    return job


def bench_stream(
    artifact: Path,
    target: str,
    device: str,
    opts: BenchOptions,
    stream: StreamOptions,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Frames/s and per-stage latency (read + letterbox, NPU, post-processing, queue waits,
    end to end) of a detector ``.rknn`` on ``device`` over real images, with
    ``opts.parallel`` NPU contexts; one JSON-able dict (``stream``: the statistics,
    ``frames``: each frame's record in order); no power sensor is read. A device lost, or
    an error there, after frames were delivered raises
    :class:`~edgecompress.runtime.harness.RunStopped` with them in ``partial``."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise errors.ModelLoadError(f"{artifact}: no such file to benchmark")
    runtime = backend_for(artifact)
    if runtime != "rknnlite":
        raise ConfigError(
            f"{artifact}: --stream runs a detector on rknn-toolkit-lite2 NPU contexts (an "
            f".rknn file); {runtime} is timed by the plain bench"
        )
    if opts.host_sensors:
        raise ConfigError("a detection stream measures no energy: leave out --host-sensor")
    images = list_images(Path(stream.images))[: stream.frames]
    opts = replace(opts, sensors=(), idle_s=0.0)  # the device's sensors are not read either
    job = stream_job(artifact, runtime, opts, stream)
    transport = parse_device(device, python=opts.python, ssh_options=opts.ssh_options)
    if progress:
        on_event = ProgressLines(f"stream: {artifact.name} on {device}", on_event)
    identity = {**run_identity(artifact, target, device, opts), "stream_options": asdict(stream)}
    files = [(f"images/{p.name}", p) for p in images]
    try:
        run = run_agent(transport, artifact, job, opts, on_event, files)
    except RunStopped as exc:
        exc.partial.update(identity)
        raise
    assert run.result is not None
    return {
        **identity,
        "complete": True,
        "device_info": run.hello,
        **run.result,
        "frames": run.frames,
    }
