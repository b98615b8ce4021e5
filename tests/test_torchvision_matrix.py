"""Every torchvision classification architecture builds through rk3588's default stages
(prune, distill, merge, QAT, INT8 ONNX, RKNN, bench) from the user's command, at a small
input size with random weights. Where a random-weight build stops on an export's parity
check (random weights under fake quantization can make the reference itself unstable),
the same start trained a few epochs on the folder, as a user's model is, must pass every
stage. One case per architecture in ``torchvision.models.list_models``: hours on 2 cores,
so these cases carry the ``matrix`` marker and run with ``make test-matrix`` (``pytest -m
matrix``), not in ``make test``; ``docs/BENCHMARKS.md`` has the table of the last run. The
transformer and CNN families that ``make test`` does cover are in test_transformers.py,
test_prune_coverage.py and test_stage_order.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress.testing.matrix import PARITY_STAGES, TRAIN_EPOCHS, architectures, run_arch


@pytest.mark.matrix
@pytest.mark.rknn
@pytest.mark.parametrize("arch", architectures())
def test_architecture_builds_through_every_default_stage(
    arch: str, tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    result = run_arch(arch, tiny[1], tmp_path / arch)
    if result.failed in PARITY_STAGES:
        trained = run_arch(arch, tiny[1], tmp_path / "trained", train_epochs=TRAIN_EPOCHS)
        assert trained.failed is None, (
            f"{arch}: random weights: {result.failed}: {result.error}; "
            f"trained {TRAIN_EPOCHS} epochs: {trained.failed}: {trained.error}"
        )
        result = trained
    assert result.failed is None, f"{arch}: {result.failed}: {result.error}"
    assert result.passed == result.stages
