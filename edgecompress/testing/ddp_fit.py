"""A fine-tuning run for the distributed test and for trying torchrun by hand:

    torchrun --nproc_per_node=2 -m edgecompress.testing.ddp_fit DIGITS_DIR TEACHER.pt OUT.json

The student is the teacher with noise added to every weight (a damaged model, as after
pruning); it recovers with soft-logit distillation. Rank 0 writes the result as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from edgecompress.calibration.bundle import DataBundle, DataConfig
from edgecompress.calibration.digits import DIGITS_SPEC
from edgecompress.distill import dist
from edgecompress.distill.losses import LossConfig
from edgecompress.distill.trainer import FitConfig, fit
from edgecompress.model_io import load_model

ARCH = "edgecompress.testing.models:digits_resnet"


def damaged_copy(teacher: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> torch.nn.Module:
    import copy

    student = copy.deepcopy(teacher)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std().nan_to_num(0.0) * scale)
    return student


def main(data: str, teacher_path: str, out: str, epochs: int = 6) -> int:
    dist.init_from_env()
    bundle = DataBundle(Path(data), DIGITS_SPEC, DataConfig())
    teacher = load_model(Path(teacher_path), ARCH).module
    student = damaged_copy(teacher)
    cfg = FitConfig(epochs=epochs, lr=0.01, losses=(LossConfig(name="kd"), LossConfig(name="ce")))
    result = fit(
        student,
        teacher,
        bundle.train_arrays(),
        (bundle.val_inputs, bundle.val_labels),
        cfg,
        progress=False,
    )
    if dist.is_main():
        Path(out).write_text(
            json.dumps(
                {
                    "world_size": dist.world_size(),
                    "best_top1": result.best_top1,
                    "history": result.history,
                }
            )
        )
    dist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3]))
