"""Merge rules on ``torch.fx`` graphs, registered by name. A rule rewrites every place it
matches and returns how many it rewrote. Exact rules keep the output (the engine checks);
approximate ones (DeepRebirth's streamlining) change it and need recovery.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count, pairwise

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgecompress.choices import MERGE_RULES
from edgecompress.merge import fold
from edgecompress.registry import Registry


@dataclass(frozen=True)
class Rule:
    name: str
    exact: bool
    apply: Callable[..., int]  # (gm, limit: int | None = None) -> rewrites done
    doc: str


RULES: Registry[Rule] = Registry("merge rule")
_ids = count()


def rule(name: str) -> Callable[[Callable[[fx.GraphModule], int]], Callable[[fx.GraphModule], int]]:
    """Register an implementation of a merge rule declared in ``choices.MERGE_RULES``
    (which says whether it is exact)."""
    declared = MERGE_RULES.get(name, "merge rule implementation")

    def add(fn: Callable[[fx.GraphModule], int]) -> Callable[[fx.GraphModule], int]:
        RULES.register(name)(Rule(name, declared.exact, fn, (fn.__doc__ or "").strip()))
        return fn

    return add


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _is(gm: fx.GraphModule, node: object, types: type | tuple[type, ...]) -> bool:
    return isinstance(node, fx.Node) and isinstance(_module(gm, node), types)


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _install(gm: fx.GraphModule, module: nn.Module) -> str:
    name = f"merged_{next(_ids)}"
    gm.add_submodule(name, module)
    return name


def _swap(gm: fx.GraphModule, node: fx.Node, module: nn.Module) -> None:
    """Point ``node`` at ``module``, the fold of its own layer: under the layer's own name
    where no other node calls it (so ``layer1.conv1`` keeps its name through BN folding,
    and mixed precision or a user's ignore list can still name it), else a new one."""
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target]
    if calls == [node]:
        gm.set_submodule(str(node.target), module)
    else:
        node.target = _install(gm, module)


def _plain_conv(c: nn.Module | None) -> bool:
    return (
        isinstance(c, nn.Conv2d)
        and c.groups == 1
        and c.dilation == (1, 1)
        and c.padding_mode == "zeros"
    )


def _centered(c: nn.Conv2d) -> bool:
    """Padding k//2: kernels of different sizes stay aligned on the same centre."""
    return c.padding == (c.kernel_size[0] // 2, c.kernel_size[1] // 2)


@rule("drop_noops")
def drop_noops(gm: fx.GraphModule) -> int:
    """Dropout, identity and other inference no-ops are removed."""
    n = 0
    for node in list(gm.graph.nodes):
        noop = _is(gm, node, (nn.Dropout, nn.Dropout2d, nn.Identity, nn.AlphaDropout)) or (
            node.op == "call_function" and node.target in (F.dropout, F.dropout2d, torch.dropout)
        )
        if noop and node.args and isinstance(node.args[0], fx.Node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            n += 1
    return n


@rule("bn_into_previous")
def bn_into_previous(gm: fx.GraphModule) -> int:
    """BatchNorm folded into the convolution or linear layer before it."""
    n = 0
    for node in list(gm.graph.nodes):
        if not _is(gm, node, (nn.BatchNorm2d, nn.BatchNorm1d)):
            continue
        prev = node.args[0]
        if not _is(gm, prev, (nn.Conv2d, nn.Linear)) or _only_user(prev) is not node:
            continue
        _swap(gm, prev, fold.bn_into_previous(_module(gm, prev), _module(gm, node)))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        n += 1
    return n


@rule("bn_into_next")
def bn_into_next(gm: fx.GraphModule) -> int:
    """BatchNorm folded into the convolution after it, where that is exact: no zero padding
    in between and an ungrouped convolution."""
    n = 0
    for node in list(gm.graph.nodes):
        if not _is(gm, node, nn.BatchNorm2d):
            continue
        nxt = _only_user(node)
        conv = _module(gm, nxt) if nxt is not None else None
        if (
            nxt is None
            or not _plain_conv(conv)
            or conv.padding != (0, 0)
            or nxt.args[0] is not node
        ):
            continue
        _swap(gm, nxt, fold.bn_into_next(_module(gm, node), conv))
        nxt.args = (node.args[0], *nxt.args[1:])
        gm.graph.erase_node(node)
        n += 1
    return n


@dataclass(frozen=True)
class _Part:
    kind: str  # "conv" | "bn" | "id"
    source: fx.Node  # the tensor the branch reads
    module: nn.Module | None
    node: fx.Node  # the branch's own node (the source itself for an identity)


def _branch(gm: fx.GraphModule, node: object, add: fx.Node) -> _Part | None:
    """Classify one input of a sum: a conv or BN reading some x, or x itself."""
    if not isinstance(node, fx.Node):
        return None
    mod = _module(gm, node)
    if mod is not None and _only_user(node) is add and isinstance(node.args[0], fx.Node):
        if _plain_conv(mod) and _centered(mod):
            return _Part("conv", node.args[0], mod, node)
        if isinstance(mod, nn.BatchNorm2d):
            return _Part("bn", node.args[0], mod, node)
    return _Part("id", node, None, node)


@rule("sum_branches")
def sum_branches(gm: fx.GraphModule) -> int:
    """Parallel branches that are summed — a kxk conv, a 1x1 conv and an identity (or BN)
    branch reading one input — become one kxk conv (RepVGG's re-parameterisation)."""
    n = 0
    for add in list(gm.graph.nodes):
        if not (
            add.op == "call_function"
            and add.target in (operator.add, torch.add)
            and len(add.args) == 2
        ):
            continue
        found = [_branch(gm, a, add) for a in add.args]
        if any(p is None for p in found):
            continue
        parts = [p for p in found if p is not None]
        convs: list[nn.Conv2d] = [p.module for p in parts if p.kind == "conv"]
        if not convs or len({p.source for p in parts}) != 1:
            continue
        c0 = convs[0]
        if len({(c.stride, c.out_channels) for c in convs}) != 1:
            continue
        if any(p.kind != "conv" for p in parts) and (
            c0.stride != (1, 1) or c0.in_channels != c0.out_channels
        ):
            continue
        identity = []
        for p in parts:
            if p.kind == "id":
                identity.append(
                    (c0.out_channels, torch.ones(c0.out_channels), torch.zeros(c0.out_channels))
                )
            elif p.kind == "bn":
                s, t = fold.bn_affine(p.module)
                identity.append((c0.out_channels, s, t))
        merged = fold.sum_branches(convs, identity)
        with gm.graph.inserting_before(add):
            new = gm.graph.call_module(_install(gm, merged), (parts[0].source,))
        add.replace_all_uses_with(new)
        gm.graph.erase_node(add)
        for p in parts:
            if p.kind != "id":
                gm.graph.erase_node(p.node)
        n += 1
    return n


@rule("stack_concat")
def stack_concat(gm: fx.GraphModule) -> int:
    """Parallel convolutions reading the same input whose outputs are concatenated become
    one convolution with the filters stacked."""
    n = 0
    for cat in list(gm.graph.nodes):
        if not (cat.op == "call_function" and cat.target is torch.cat):
            continue
        dim = cat.kwargs.get("dim", cat.args[1] if len(cat.args) > 1 else 0)
        items = list(cat.args[0])
        ok = [
            isinstance(i, fx.Node)
            and _plain_conv(_module(gm, i))
            and _centered(_module(gm, i))
            and _only_user(i) is cat
            for i in items
        ]
        if dim != 1 or sum(ok) < 2:
            continue
        groups: list[list[fx.Node]] = []
        for item, good in zip(items, ok, strict=True):
            same = groups and good and groups[-1] and groups[-1][-1] is not None
            if (
                same
                and item.args[0] is groups[-1][0].args[0]
                and _module(gm, item).stride == _module(gm, groups[-1][0]).stride
            ):
                groups[-1].append(item)
            else:
                groups.append([item] if good else [item, None])
        new_items = []
        for g in groups:
            if len(g) >= 2 and g[-1] is not None:
                merged = fold.stack_outputs([_module(gm, c) for c in g])
                with gm.graph.inserting_before(cat):
                    new_items.append(gm.graph.call_module(_install(gm, merged), (g[0].args[0],)))
                n += 1
            else:
                new_items.append(g[0])
        if len(new_items) == len(items):
            continue
        old = [i for i in items if i not in new_items]
        if len(new_items) == 1:
            cat.replace_all_uses_with(new_items[0])
            gm.graph.erase_node(cat)
        else:
            cat.args = (new_items, *cat.args[1:])
        for o in old:
            gm.graph.erase_node(o)
    return n


@rule("compose_linear")
def compose_linear(gm: fx.GraphModule) -> int:
    """Consecutive linear operations with nothing nonlinear between them become one: a 1x1
    conv after a conv, a linear layer after a linear layer; only where the one layer is no
    larger than the pair (a narrow bottleneck between two wide layers is a low-rank
    factorisation: composing it would add parameters and MACs)."""
    n = 0
    for node in list(gm.graph.nodes):
        second, prev = _module(gm, node), node.args[0] if node.args else None
        first = _module(gm, prev) if isinstance(prev, fx.Node) else None
        if first is None or _only_user(prev) is not node:
            continue
        if isinstance(second, nn.Linear) and isinstance(first, nn.Linear):
            merged: nn.Module = fold.compose_linear(first, second)
        elif (
            _plain_conv(second)
            and second.kernel_size == (1, 1)
            and second.stride == (1, 1)
            and second.padding == (0, 0)
            and _plain_conv(first)
        ):
            merged = fold.compose(first, second)
        else:
            continue
        if _size(merged) > _size(first) + _size(second):
            continue
        node.target = _install(gm, merged)
        node.args = (prev.args[0], *node.args[1:])
        gm.graph.erase_node(prev)
        n += 1
    return n


def _size(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


@rule("fold_scale_shift")
def fold_scale_shift(gm: fx.GraphModule) -> int:
    """A constant scale or shift after a conv/linear layer folds into its weights and bias."""
    n = 0
    for node in list(gm.graph.nodes):
        if not (
            node.op == "call_function"
            and node.target in (operator.mul, operator.add, torch.mul, torch.add)
        ):
            continue
        layer_node = next((a for a in node.args if _is(gm, a, (nn.Conv2d, nn.Linear))), None)
        const = next((a for a in node.args if isinstance(a, int | float)), None)
        if (
            layer_node is None
            or const is None
            or _only_user(layer_node) is not node
            or len(node.args) != 2
        ):
            continue
        is_mul = node.target in (operator.mul, torch.mul)
        merged = fold.scale_shift(
            _module(gm, layer_node),
            float(const) if is_mul else 1.0,
            0.0 if is_mul else float(const),
        )
        _swap(gm, layer_node, merged)
        node.replace_all_uses_with(layer_node)
        gm.graph.erase_node(node)
        n += 1
    return n


@rule("streamline_pool")
def streamline_pool(gm: fx.GraphModule, limit: int | None = None) -> int:
    """DeepRebirth streamlining: a non-overlapping pooling layer right after a stride-1
    convolution is removed and its stride folded into the convolution, which then computes
    a quarter as much (for 2x2 pooling). Changes the output: recover afterwards."""
    n = 0
    for node in list(gm.graph.nodes):
        if limit is not None and n >= limit:
            break
        pool = _module(gm, node)
        if not isinstance(pool, nn.MaxPool2d | nn.AvgPool2d):
            continue
        k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
        s = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
        prev = node.args[0]
        conv = _module(gm, prev) if isinstance(prev, fx.Node) else None
        if (
            k != s
            or pool.padding not in (0, (0, 0))
            or not _plain_conv(conv)
            or conv.stride != (1, 1)
        ):
            continue
        if _only_user(prev) is not node or not _centered(conv):
            continue
        conv.stride = (s, s)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        n += 1
    return n


@rule("drop_lrn")
def drop_lrn(gm: fx.GraphModule, limit: int | None = None) -> int:
    """Local response normalisation (no tensor work of its own worth its cost) is dropped."""
    n = 0
    for node in list(gm.graph.nodes):
        if limit is not None and n >= limit:
            break
        if _is(gm, node, nn.LocalResponseNorm):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            n += 1
    return n


@rule("swap_relu_pool")
def swap_relu_pool(gm: fx.GraphModule) -> int:
    """ReLU -> max pooling becomes max pooling -> ReLU: both are monotone, so the result is
    the same, the ReLU touches a quarter of the values, and the pool becomes adjacent to
    the convolution before it (which streamlining needs)."""
    n = 0
    for pool in list(gm.graph.nodes):
        relu = pool.args[0] if _is(gm, pool, nn.MaxPool2d) else None
        if not _is(gm, relu, nn.ReLU) or _only_user(relu) is not pool:
            continue
        src = relu.args[0]
        pool.args = (src, *pool.args[1:])
        pool.replace_all_uses_with(relu, delete_user_cb=lambda u, r=relu: u is not r)
        relu.args = (pool, *relu.args[1:])
        relu.prepend(pool)  # keep topological order: the pool now runs first
        n += 1
    return n


def _cat_branches(gm: fx.GraphModule, cat: fx.Node) -> list[list[fx.Node]] | None:
    """For cat([b1, b2, ...], dim=1) whose branches all start from one tensor, each branch's
    nodes from first to last (every node used only inside its branch)."""
    if not (cat.op == "call_function" and cat.target is torch.cat):
        return None
    if cat.kwargs.get("dim", cat.args[1] if len(cat.args) > 1 else 0) != 1:
        return None
    branches, sources = [], set()
    for end in cat.args[0]:
        chain, node = [], end
        while isinstance(node, fx.Node) and node.op == "call_module" and len(node.users) == 1:
            chain.append(node)
            node = node.args[0]
        if not chain or not isinstance(node, fx.Node):
            return None
        sources.add(node)
        branches.append(chain[::-1])
    return branches if len(sources) == 1 else None


@rule("pool_branch_to_conv")
def pool_branch_to_conv(gm: fx.GraphModule, limit: int | None = None) -> int:
    """DeepRebirth branch merging: a pooling branch (stride-1 pool -> 1x1 conv) of an
    inception block is replaced by one kxk convolution, initialised with the 1x1 filters at
    its centre. One dense layer instead of a pool and a conv; recover afterwards."""
    n = 0
    for cat in list(gm.graph.nodes):
        if limit is not None and n >= limit:
            break
        for branch in _cat_branches(gm, cat) or []:
            if limit is not None and n >= limit:
                break
            pool, conv = _module(gm, branch[0]), _module(gm, branch[1]) if len(branch) > 1 else None
            if not isinstance(pool, nn.MaxPool2d | nn.AvgPool2d) or not _plain_conv(conv):
                continue
            k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
            s = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
            if (
                s != 1
                or conv.kernel_size != (1, 1)
                or 2 * (pool.padding if isinstance(pool.padding, int) else pool.padding[0]) != k - 1
            ):
                continue
            w = fold.pad_kernel(conv.weight.detach(), (k, k))
            merged = nn.Conv2d(conv.in_channels, conv.out_channels, k, 1, k // 2)
            with torch.no_grad():
                merged.weight.copy_(w)
                merged.bias.copy_(fold._bias(conv))
            branch[1].target = _install(gm, merged)
            branch[1].args = (branch[0].args[0], *branch[1].args[1:])
            gm.graph.erase_node(branch[0])
            n += 1
    return n


def _core(gm: fx.GraphModule, branch: list[fx.Node]) -> tuple[fx.Node, bool] | None:
    """A branch's last conv node and whether a ReLU follows it (as in conv-BN-ReLU blocks
    after BN folding)."""
    relu = len(branch) >= 2 and _is(gm, branch[-1], nn.ReLU)
    conv = branch[-2] if relu else branch[-1]
    return (conv, relu) if _plain_conv(_module(gm, conv)) else None


@rule("drop_small_branch")
def drop_small_branch(gm: fx.GraphModule, limit: int | None = None) -> int:
    """DeepRebirth branch merging: a single small-kernel conv branch standing just before a
    branch that ends in a larger-kernel conv is removed, and that larger conv is widened to
    produce its feature maps too (new filters start from zero; recover afterwards). The
    concatenation keeps its width and channel order."""
    n = 0
    for cat in list(gm.graph.nodes):
        if limit is not None and n >= limit:
            break
        branches = _cat_branches(gm, cat)
        for small, big in pairwise(branches or []):
            s_core, b_core = _core(gm, small), _core(gm, big)
            if (
                s_core is None
                or b_core is None
                or s_core[1] != b_core[1]
                or len(small) != 1 + s_core[1]
            ):
                continue
            sconv, bconv = _module(gm, s_core[0]), _module(gm, b_core[0])
            if len(big) < 2 + b_core[1] or sconv.kernel_size[0] >= bconv.kernel_size[0]:
                continue
            if not _centered(bconv) or bconv.stride != sconv.stride:
                continue
            wide = nn.Conv2d(
                bconv.in_channels,
                sconv.out_channels + bconv.out_channels,
                bconv.kernel_size,
                bconv.stride,
                bconv.padding,
            )
            with torch.no_grad():
                wide.weight.zero_()
                wide.weight[sconv.out_channels :].copy_(bconv.weight)
                wide.bias.zero_()
                wide.bias[sconv.out_channels :].copy_(fold._bias(bconv))
            b_core[0].target = _install(gm, wide)
            cat.args = ([a for a in cat.args[0] if a is not small[-1]], *cat.args[1:])
            for node in reversed(small):
                gm.graph.erase_node(node)
            n += 1
            break  # the cat changed: look again on the next pass
    return n
