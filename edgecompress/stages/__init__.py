"""Pipeline stages, registered by name. Importing this package registers the built-in
stages; each stage module imports its toolchain only inside ``run``."""

from edgecompress.stages import (  # noqa: F401  (imported to register)
    bench,
    distill,
    evaluate,
    export_onnx,
    export_rknn,
    merge,
    prune,
    quantize,
)
from edgecompress.stages.base import STAGES, BuildContext, Stage, StageConfig

__all__ = ["STAGES", "BuildContext", "Stage", "StageConfig"]
