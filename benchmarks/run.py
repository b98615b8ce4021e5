"""`make bench`: run every benchmark (or those named) and update docs/BENCHMARKS.md.

python -m benchmarks.run            # all
python -m benchmarks.run spine      # one
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = [
    "spine",
    "distill",
    "prune",
    "merge",
    "quantize",
    "device",
    "pipeline",
    "stream",
    "convert",
    "ppocr_build",
    "detect_post",
    "detect_train",
    "detect_deploy",
    "detect_distill",
    "detect_latency",
    "detect_pipeline",
    "peers",
    "fashion_pipeline",
    "transformer_allocation",
    "torchvision_matrix",
]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    for name in names:
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
    for name in names:
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
