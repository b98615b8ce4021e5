"""Named choices a recipe or an API call may make (a pruning criterion, an allocation, a
distillation loss, a QAT initialisation, a merge rule), declared torch-free with what
each needs, so a recipe is validated against them at parse time without importing the
toolchains that implement them. The implementations register under the same names; a
contract test keeps the two in step.

>>> CRITERIA.check("taylr", "prune.criterion")  # doctest: +SKIP
ConfigError: prune.criterion: unknown pruning criterion 'taylr' (did you mean 'taylor'?) ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgecompress.errors import ConfigError
from edgecompress.validation import did_you_mean


@dataclass(frozen=True)
class Choice:
    """One named option and what it needs to run."""

    name: str
    doc: str
    needs_data: bool = False  # labelled or unlabelled batches (calibration, gradients)
    needs_teacher: bool = False
    needs_features: bool = False  # intermediate feature maps of student and teacher
    exact: bool = True  # merge rules: output unchanged (else recover after it)


class ChoiceSet:
    """The declared choices of one kind, in order; a duplicate name is an error."""

    def __init__(self, kind: str, choices: tuple[Choice, ...]) -> None:
        self.kind = kind
        self._items: dict[str, Choice] = {}
        for c in choices:
            if c.name in self._items:
                raise ValueError(f"{kind} {c.name!r} is declared twice")
            self._items[c.name] = c

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str, where: str = "") -> Choice:
        self.check(name, where)
        return self._items[name]

    def check(self, name: Any, where: str = "") -> str:
        """``name`` if it is one of the choices, else a ConfigError with a suggestion."""
        if name in self._items:
            return str(name)
        hint = did_you_mean(str(name), self.names())
        prefix = f"{where}: " if where else ""
        raise ConfigError(
            f"{prefix}unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}"
        )

    def validator(self, where: str) -> Any:
        """A pydantic ``AfterValidator`` checking a field against this set."""
        from pydantic import AfterValidator

        return AfterValidator(lambda v: self.check(v, where))


CRITERIA = ChoiceSet(
    "pruning criterion",
    (
        Choice("l1", "L1 norm of each channel's weights"),
        Choice("l2", "L2 norm of each channel's weights"),
        Choice("bn_scale", "|gamma| of the BatchNorm after the layer (network slimming)"),
        Choice("taylor", "first-order Taylor estimate of the loss change", needs_data=True),
        Choice("apoz", "average percentage of zero activations", needs_data=True),
        Choice("entropy", "entropy of each channel's activations", needs_data=True),
        Choice("svd", "each channel's share of the layer's singular-value energy"),
        Choice("random", "random scores (the baseline every criterion must beat)"),
    ),
)

ALLOCATIONS = ChoiceSet(
    "pruning allocation",
    (
        Choice("uniform", "every layer loses the same fraction"),
        Choice("global", "one ranking of all channels across layers"),
        Choice("svd", "layers with low effective rank lose more"),
        Choice("sensitivity", "layers whose pruning costs little loss lose more", needs_data=True),
        Choice("latency", "layers whose pruning saves the most measured latency lose more"),
    ),
)

LOSSES = ChoiceSet(
    "distillation loss",
    (
        Choice("ce", "cross-entropy with the hard labels", needs_data=True),
        Choice("kd", "softened logits (Hinton et al. 2015)", needs_teacher=True),
        Choice(
            "hint",
            "feature regression through 1x1 adapters (FitNets)",
            needs_teacher=True,
            needs_features=True,
        ),
        Choice(
            "attention",
            "attention maps (Zagoruyko & Komodakis 2017)",
            needs_teacher=True,
            needs_features=True,
        ),
        Choice("similarity", "batch similarity matrix (Tung & Mori 2019)", needs_teacher=True),
        Choice("rkd_distance", "relational distances (Park et al. 2019)", needs_teacher=True),
        Choice("rkd_angle", "relational angles (Park et al. 2019)", needs_teacher=True),
    ),
)

QAT_INIT = ChoiceSet(
    "quantizer initialisation",
    (
        Choice("minmax", "the observed range", needs_data=True),
        Choice("percentile", "the 99.99th percentile of the observed range", needs_data=True),
        Choice("mse", "the clipping that minimises the quantization MSE", needs_data=True),
    ),
)

PTQ_CALIBRATION = ChoiceSet(
    "PTQ calibration",
    (
        Choice("minmax", "ONNX Runtime MinMax", needs_data=True),
        Choice("entropy", "ONNX Runtime Entropy (KL)", needs_data=True),
        Choice("percentile", "ONNX Runtime Percentile", needs_data=True),
    ),
)

MERGE_RULES = ChoiceSet(
    "merge rule",
    (
        Choice("drop_noops", "remove identities and dropout"),
        Choice("bn_into_previous", "fold BatchNorm into the conv/linear before it"),
        Choice("bn_into_next", "fold BatchNorm into the conv after it"),
        Choice("sum_branches", "parallel convs on one input, summed: one conv"),
        Choice("stack_concat", "parallel convs on one input, concatenated: one conv"),
        Choice("compose_linear", "consecutive linear layers: one"),
        Choice("fold_scale_shift", "per-channel scale and shift into the conv before"),
        Choice("swap_relu_pool", "max-pool before ReLU (fewer elements activated)"),
        Choice("streamline_pool", "pooling absorbed into the conv before it", exact=False),
        Choice("drop_lrn", "local response normalisation removed", exact=False),
        Choice("pool_branch_to_conv", "a pooling branch replaced by a conv", exact=False),
        Choice("drop_small_branch", "the weakest branch of a block removed", exact=False),
    ),
)

EXACT_RULES = tuple(c for c in MERGE_RULES.names() if MERGE_RULES.get(c).exact)
APPROXIMATE_RULES = tuple(c for c in MERGE_RULES.names() if not MERGE_RULES.get(c).exact)
