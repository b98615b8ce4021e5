"""Fine-tuning streams an image folder from disk through a DataLoader with worker
processes: nothing holds the whole data set in memory, and the result is the same kind
of recovery as with arrays."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

import edgecompress as ec
from edgecompress.calibration.preprocess import PreprocessSpec
from edgecompress.testing.ddp_fit import damaged_copy
from edgecompress.testing.models import tiny_cnn

SPEC = PreprocessSpec(input_size=(16, 16), resize="stretch", mean=(0.3,) * 3, std=(0.3,) * 3)


def test_distill_streams_a_folder_through_worker_processes(tiny: tuple[Path, Path]) -> None:
    state, data = tiny
    teacher = tiny_cnn().eval()
    teacher.load_state_dict(torch.load(state, weights_only=True))
    student = damaged_copy(teacher, scale=0.8)
    folder = ec.scan_image_folder(data)
    train = DataLoader(
        ec.FolderDataset(folder.train, SPEC), batch_size=16, shuffle=True, num_workers=2
    )
    val = DataLoader(ec.FolderDataset(folder.val, SPEC), batch_size=32, num_workers=2)
    seen: list[int] = []
    worker_pids = []

    class Spy(torch.utils.data.Dataset):  # type: ignore[type-arg]
        """Records which process decoded each image."""

        def __init__(self, inner: ec.FolderDataset) -> None:
            self.inner = inner

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            import os

            x, y = self.inner[i]
            return x, y, os.getpid()

    spy = DataLoader(Spy(ec.FolderDataset(folder.train, SPEC)), batch_size=16, num_workers=2)
    for _, y, pids in spy:
        seen += y.tolist()
        worker_pids += pids.tolist()
    import os

    assert len(seen) == len(folder.train) and os.getpid() not in worker_pids

    before = ec.evaluate(student, val)["top1"]
    cfg = ec.FitConfig(epochs=4, lr=0.02, losses=[ec.LossConfig(name="kd")])
    result = ec.distill(student, teacher, train, val, cfg, progress=False)
    assert len(result.history) == 4
    assert result.best_top1 >= before, (before, result.best_top1)
    assert ec.evaluate(student, val)["top1"] == result.best_top1
