"""Each exact merge rule keeps the output (relative tolerance 1e-4) on random inputs, and
the blocks the issue names merge: a ResNet block, a RepVGG-style block, googlenet's
inception blocks, a VGG-style network with pools."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from edgecompress.merge.engine import EXACT_DEFAULT, merge
from edgecompress.merge.rules import RULES
from edgecompress.testing.models import BasicBlock

X = torch.randn(4, 8, 16, 16, generator=torch.Generator().manual_seed(0))


def _randomise_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


class RepVGGBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.k3 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.k1 = nn.Sequential(nn.Conv2d(c, c, 1, 1, 0, bias=False), nn.BatchNorm2d(c))
        self.id = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.k3(x) + self.k1(x) + self.id(x))


class Parallel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 6, 3, padding=1)
        self.c = nn.Conv2d(8, 5, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x), self.c(x)], dim=1)


class BnThenConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(8), nn.Conv2d(8, 6, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


class ScaleShift(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) * 0.5) + 1.0


CASES = {
    "drop_noops": (
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Dropout(0.5), nn.Identity(), nn.ReLU()),
        2,
    ),
    "bn_into_previous": (
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        1,
    ),
    "bn_into_next": (BnThenConv(), 1),
    "sum_branches": (RepVGGBlock(8), 2),
    "stack_concat": (Parallel(), 1),
    "compose_linear": (nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 4, 1)), 1),
    "fold_scale_shift": (ScaleShift(), 2),
    "swap_relu_pool": (nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)), 1),
}


def test_every_exact_rule_has_a_case() -> None:
    exact = {n for n in RULES.names() if RULES.get(n).exact}
    assert exact == set(CASES) == set(EXACT_DEFAULT)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_exact_rule_keeps_the_output(rule: str) -> None:
    model, expected = CASES[rule]
    model = _randomise_bn(model)
    res = merge(model, X, (rule,) if rule != "sum_branches" else ("bn_into_previous", rule))
    assert (
        res.applied.get(rule, 0) >= 1 if rule != "sum_branches" else res.applied[rule] == expected
    )
    assert res.max_rel_diff is not None and res.max_rel_diff < 1e-4
    if rule != "swap_relu_pool":  # a swap keeps the count; its ReLU runs on pooled maps
        assert res.nodes_after < res.nodes_before
    with torch.no_grad():
        torch.testing.assert_close(res.model(X), model(X), rtol=1e-4, atol=1e-4)


def test_bn_into_next_refuses_when_padding_makes_it_inexact() -> None:
    model = _randomise_bn(nn.Sequential(nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)))
    assert merge(model, X, ("bn_into_next",)).applied == {}


def test_resnet_block() -> None:
    block = _randomise_bn(BasicBlock(8, 16, 2))
    res = merge(block, X)
    assert res.applied["bn_into_previous"] == 3
    assert res.layers_after == res.layers_before - 3 and res.max_rel_diff < 1e-4  # type: ignore[operator]


def test_repvgg_block_becomes_one_conv() -> None:
    res = merge(_randomise_bn(RepVGGBlock(8)), X)
    convs = [m for m in res.model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in res.model.modules())


def test_googlenet_inception_blocks() -> None:
    net = _randomise_bn(
        torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    )
    x = torch.randn(1, 3, 64, 64)
    res = merge(net, x)
    assert res.applied["bn_into_previous"] >= 50 and res.applied["drop_noops"] >= 1
    assert res.max_rel_diff < 1e-4  # type: ignore[operator]


def vgg_with_pools() -> nn.Module:
    layers: list[nn.Module] = []
    c = 3
    for width in (16, 32, 64):
        layers += [
            nn.Conv2d(c, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c = width
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 10)
    )


def test_vgg_with_pools_exact_then_streamlined() -> None:
    net = _randomise_bn(vgg_with_pools())
    x = torch.randn(2, 3, 32, 32)
    exact = merge(net, x)
    assert exact.applied == {"drop_noops": 1, "bn_into_previous": 6, "swap_relu_pool": 3}
    assert exact.max_rel_diff < 1e-4  # type: ignore[operator]
    # Swapping ReLU and pool made each pool adjacent to its conv: all three streamline.
    approx = merge(net, x, (*EXACT_DEFAULT, "streamline_pool"))
    assert approx.applied["streamline_pool"] == 3
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten())
    streamlined = merge(plain, x, ("streamline_pool",))
    assert streamlined.applied == {"streamline_pool": 1} and streamlined.max_rel_diff is None
    assert streamlined.model(x).shape == plain(x).shape


def test_merge_stage_reports_counts_and_latency(digits_example: tuple, tmp_path) -> None:  # type: ignore[no-untyped-def, type-arg]
    import json

    from edgecompress.cli import main

    model, data = digits_example
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "target: host\npreprocess: {input_size: [32, 32], resize: stretch,"
        " mean: [0.305, 0.305, 0.305], std: [0.324, 0.324, 0.324]}\n"
        "stages: [evaluate, merge, {name: evaluate, label: merged}, export_onnx]\n"
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "build",
                str(model),
                "--arch",
                "edgecompress.testing.models:digits_resnet",
                "--recipe",
                str(recipe),
                "--data",
                str(data),
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    m = report["merging"][0]
    assert m["applied"]["bn_into_previous"] == 9 and m["layers"]["after"] < m["layers"]["before"]
    assert m["max_rel_diff"]["value"] < 1e-4 and set(m["latency_ms"]) == {"before", "after"}
    acc = report["accuracy"]
    assert acc["merged"]["agreement"]["value"] == 100.0
    assert abs(acc["onnxruntime"]["top1"]["value"] - acc["pytorch"]["top1"]["value"]) <= 0.1


def test_branch_merging_on_an_inception_model_keeps_shapes_and_cuts_layers() -> None:
    from edgecompress.merge.engine import APPROXIMATE
    from edgecompress.testing.models import inception_digits

    net = _randomise_bn(inception_digits())
    x = torch.randn(2, 3, 32, 32)
    res = merge(net, x, (*EXACT_DEFAULT, *APPROXIMATE))
    assert res.applied["pool_branch_to_conv"] == 2 and res.applied["drop_small_branch"] == 2
    assert res.max_rel_diff is None  # approximate: not claimed to keep the output
    assert res.layers_after < merge(net, x).layers_after
    with torch.no_grad():
        assert res.model(x).shape == net(x).shape
    # The widened convs keep the concatenation's width: the next block's input is unchanged.
    assert not any(isinstance(m, nn.MaxPool2d) and m.stride == 1 for m in res.model.modules())


def test_streamlining_a_vgg_network_cuts_macs() -> None:
    from edgecompress.measure import count_macs
    from edgecompress.merge.engine import APPROXIMATE
    from edgecompress.testing.models import vgg_digits

    net = _randomise_bn(vgg_digits())
    x = torch.randn(1, 3, 32, 32)
    res = merge(net, x, (*EXACT_DEFAULT, *APPROXIMATE))
    assert res.applied["swap_relu_pool"] == 3 and res.applied["streamline_pool"] == 3
    assert count_macs(res.model, x)[0] < 0.6 * count_macs(net, x)[0]


@pytest.mark.parametrize("mode, steps", [("layer_by_layer", 3), ("all_at_once", 1)])
def test_approximate_merges_recover_per_the_recipe(
    digits_example: tuple, tmp_path, mode: str, steps: int
) -> None:  # type: ignore[no-untyped-def, type-arg]
    import json

    from edgecompress.cli import main
    from edgecompress.testing.models import vgg_digits

    _, data = digits_example
    weights = tmp_path / "vgg.pt"
    torch.manual_seed(0)
    torch.save(vgg_digits().state_dict(), weights)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "target: host\npreprocess: {input_size: [32, 32], resize: stretch,"
        " mean: [0.305, 0.305, 0.305], std: [0.324, 0.324, 0.324]}\nstages:\n"
        "  - name: merge\n    approximate: true\n"
        f"    recovery_mode: {mode}\n    recovery: {{epochs: 1}}\n"
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "build",
                str(weights),
                "--arch",
                "edgecompress.testing.models:vgg_digits",
                "--recipe",
                str(recipe),
                "--data",
                str(data),
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    m = json.loads((out / "report.json").read_text())["merging"][0]
    assert m["applied"]["streamline_pool"] == 3
    assert m["recovery"]["mode"] == mode and len(m["recovery"]["steps"]) == steps
    assert m["max_rel_diff"] is None  # approximate: no exactness claimed
