"""Loss registry: a config name (train.loss) -> a loss module built from keyword arguments.

    build_loss("focal", gamma=2.0)          -> FocalLoss(gamma=2.0)
    build_loss("weighted_ce", weight=w)     -> CrossEntropy(weight=w)
    build_loss("coxph", ties="efron")       -> CoxPHLoss(ties="efron")

Keyword arguments go to the constructor unchanged (a wrong one raises TypeError there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from shared.errors import InputError
from shared.losses import classification
from shared.losses.survival import CoxPHLoss
from shared.losses.temporal import TemporalAwareBCE


def _weighted_ce(weight: Tensor | Sequence[float], **kwargs: Any) -> nn.Module:
    """CrossEntropy that insists on class weights (public weights from the config)."""
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


def build_configured_loss(name: str, loss_params: dict[str, Any], source: str) -> nn.Module:
    """`train.loss` with `train.loss_params` as a task uses them: weighted_bce's pos_weight must be a public number
    from the config (classification.public_pos_weight), and bad parameters are one line naming the field."""
    params = dict(loss_params)
    if name == "weighted_bce":
        params["pos_weight"] = classification.public_pos_weight(params, source)
    try:
        with torch.inference_mode(False):  # first use may be an evaluation; its buffers must serve training too
            return build_loss(name, **params)
    except (TypeError, ValueError) as err:
        raise InputError(source, "train.loss_params", str(err)) from None
