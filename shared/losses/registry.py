"""Loss registry: a config name (train.loss) -> a loss module built from keyword arguments.

    build_loss("focal", gamma=2.0)          -> FocalLoss(gamma=2.0)
    build_loss("weighted_ce", weight=w)     -> CrossEntropy(weight=w)
    build_loss("coxph", ties="efron")       -> CoxPHLoss(ties="efron")

Keyword arguments go to the constructor unchanged (a wrong one raises TypeError there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from shared.losses import classification
from shared.losses.survival import CoxPHLoss
from shared.losses.temporal import TemporalAwareBCE


def _weighted_ce(weight: Tensor | Sequence[float], **kwargs: Any) -> nn.Module:
    """CrossEntropy that insists on class weights (see class_weights_from_labels)."""
    return classification.CrossEntropy(weight=weight, **kwargs)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "bce": nn.BCEWithLogitsLoss,
    "weighted_bce": classification.WeightedBCEWithLogits,
    "focal": classification.FocalLoss,
    "temporal_bce": TemporalAwareBCE,
    "ce": classification.CrossEntropy,
    "weighted_ce": _weighted_ce,
    "focal_ce": classification.MultiClassFocalLoss,
    "coxph": CoxPHLoss,
}


def loss_names() -> list[str]:
    return sorted(_BUILDERS)


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    if name not in _BUILDERS:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(loss_names())}")
    return _BUILDERS[name](**kwargs)
