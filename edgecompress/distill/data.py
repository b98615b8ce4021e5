"""What the training loop reads: any iterable of ``(inputs, labels)`` batches (a
``torch.utils.data.DataLoader`` with worker processes streams a folder larger than
memory) or, for the built-in image folders, a pair of arrays that this module batches
with a seeded order and a random shift per epoch (so a resumed run repeats exactly).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeGuard

import numpy as np
import torch
from torch import Tensor

from edgecompress.distill import dist
from edgecompress.errors import ConfigError

Arrays = tuple[np.ndarray, np.ndarray]
# Arrays, or an iterable of (x, y) batches (tensors or arrays).
Data = Arrays | Iterable[Any]


def is_arrays(data: Any) -> TypeGuard[Arrays]:
    return (
        isinstance(data, tuple) and len(data) == 2 and all(isinstance(a, np.ndarray) for a in data)
    )


def _pair(batch: Any, where: str) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, list | tuple) or len(batch) < 2:
        raise ConfigError(
            f"{where}: each batch must be (inputs, labels), got {type(batch).__name__}; "
            "wrap a dataset of images alone with a forward loop instead"
        )
    x, y = batch[0], batch[1]
    x = torch.as_tensor(x) if not isinstance(x, Tensor) else x
    y = torch.as_tensor(y) if not isinstance(y, Tensor) else y
    return x.float(), y.long()


def steps_per_epoch(data: Data, batch_size: int) -> int:
    """Batches one epoch yields on this rank (the LR schedule needs it up front)."""
    if is_arrays(data):
        n = len(data[1])
        return int(np.ceil(np.ceil(n / dist.world_size()) / batch_size))
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(
            "training data: an iterable without len(); give a DataLoader (or anything "
            "with __len__) so the learning-rate schedule knows the epoch length"
        ) from None


def first_inputs(data: Data, n: int = 2) -> Tensor:
    """A few inputs, to trace the model with."""
    if is_arrays(data):
        return torch.from_numpy(data[0][:n])
    for batch in data:
        return _pair(batch, "training data")[0][:n]
    raise ConfigError("training data: the iterable yielded no batch")


def _shift(x: Tensor, pixels: int, gen: torch.Generator) -> Tensor:
    if pixels == 0:
        return x
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_batches(
    data: Data, batch_size: int, seed: int, epoch: int, shift: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of training batches. Arrays: this rank's seeded order and a random
    shift of up to ``shift`` pixels; an iterable is read as given (its sampler's
    ``set_epoch`` is called, as DistributedSampler wants)."""
    if not is_arrays(data):
        set_epoch = getattr(getattr(data, "sampler", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        for batch in data:
            yield _pair(batch, "training data")
        return
    x, y = data
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(y))
    order = order[dist.rank() :: dist.world_size()]
    for i in range(0, len(order), batch_size):
        sel = order[i : i + batch_size]
        yield _shift(torch.from_numpy(x[sel]), shift, gen), torch.from_numpy(y[sel]).long()


def eval_batches(data: Data, batch_size: int = 256) -> Iterator[tuple[Tensor, Tensor]]:
    """Validation batches, this rank's share for arrays."""
    if not is_arrays(data):
        for batch in data:
            yield _pair(batch, "validation data")
        return
    x, y = data
    idx = np.arange(len(y))[dist.rank() :: dist.world_size()]
    for i in range(0, len(idx), batch_size):
        sel = idx[i : i + batch_size]
        yield torch.from_numpy(x[sel]), torch.from_numpy(y[sel]).long()


class FolderDataset(torch.utils.data.Dataset):
    """One split of an image folder, decoded per item: wrap it in a DataLoader with
    worker processes and a folder larger than memory streams from disk.

    >>> folder = scan_image_folder(Path("images"))  # doctest: +SKIP
    >>> loader = DataLoader(FolderDataset(folder.train, spec), batch_size=64,
    ...                     shuffle=True, num_workers=4)  # doctest: +SKIP
    """

    def __init__(self, samples: Any, spec: Any) -> None:
        self.samples, self.spec = list(samples), spec

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        s = self.samples[i]
        return torch.from_numpy(self.spec.load(s.path)), int(s.label)
