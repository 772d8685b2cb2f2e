"""Classification losses on logits: focal (binary and multiclass), weighted BCE, per-sample CE.

DP-SGD compatibility: every loss here computes one value per sample from that sample alone and
reduces with a plain mean over samples at the end, so Opacus' per-sample gradients (which assume
`loss = mean_i loss_i`) stay independent across samples. This is why class weights are never
renormalized by the batch's total weight (torch's weighted `cross_entropy` with reduction="mean"
divides by the sum of the batch's target weights, which ties each sample's gradient to the others).

Shapes: binary losses take logits and targets of the same shape, (B,) or (B, K) for K labels;
multiclass losses take logits (B, C) with targets (B,), or per-step logits (B, S, C) with targets
(B, S) where `ignore_index` marks padded steps (a sample's loss is then the mean over its valid
steps; a sample without valid steps contributes 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.losses.reduction import reduce_loss

IGNORE_INDEX = -100


class WeightedBCEWithLogits(nn.Module):
    """BCE on logits with positives weighted by `pos_weight` (scalar or one per label column)."""

    def __init__(self, pos_weight: float | Tensor, reduction: str = "mean") -> None:
        super().__init__()
        self.register_buffer("pos_weight", torch.as_tensor(pos_weight, dtype=torch.float32))
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        per_element = F.binary_cross_entropy_with_logits(
            logits, targets.to(logits.dtype), pos_weight=self.pos_weight, reduction="none"
        )
        return reduce_loss(per_element, self.reduction)


class FocalLoss(nn.Module):
    """Binary focal loss on logits (Lin et al. 2017).

    loss = -alpha_t * (1 - p_t)^gamma * log(p_t), with p_t = sigmoid(logit) for a positive target
    and 1 - sigmoid(logit) for a negative one; alpha_t = alpha for positives and 1 - alpha for
    negatives, or 1 when alpha is None. gamma = 0 and alpha = None give plain BCE.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, reduction: str = "mean") -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        targets = targets.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # -log(p_t)
        p_t = torch.exp(-bce)
        loss = (1.0 - p_t).pow(self.gamma) * bce
        if self.alpha is not None:
            loss = (self.alpha * targets + (1.0 - self.alpha) * (1.0 - targets)) * loss
        return reduce_loss(loss, self.reduction)


def _as_class_weight(weight: Tensor | Sequence[float] | None) -> Tensor | None:
    return None if weight is None else torch.as_tensor(weight, dtype=torch.float32)


def _per_sample_mean_over_steps(per_step: Tensor, valid: Tensor) -> Tensor:
    """(B, S) step losses -> (B,) mean over each sample's valid steps; (B,) passes through."""
    if per_step.dim() == 1:
        return per_step
    valid = valid.to(per_step.dtype)
    return (per_step * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)


def _class_log_probs(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """log p of each target class, the valid mask and the targets with padding replaced by 0."""
    valid = targets != IGNORE_INDEX
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets)).long()
    log_probs = F.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1), valid, safe_targets


class CrossEntropy(nn.Module):
    """Cross-entropy with optional class weights, reduced per sample, then a plain mean.

    loss_i = weight[y_i] * -log softmax(logits_i)[y_i] (per-step logits: mean over valid steps).
    Unlike torch's weighted mean, the batch mean is not divided by the batch's total weight.
    """

    def __init__(
        self,
        weight: Tensor | Sequence[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.register_buffer("weight", _as_class_weight(weight))
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        per_step = F.cross_entropy(  # (B,) or (B, S); 0 at ignored steps
            logits.movedim(-1, 1),  # classes to dim 1, as torch wants
            targets.long(),
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction="none",
        )
        per_sample = _per_sample_mean_over_steps(per_step, targets != self.ignore_index)
        return reduce_loss(per_sample, self.reduction)


class MultiClassFocalLoss(nn.Module):
    """Multiclass focal loss on logits: loss = -weight[y] * (1 - p_y)^gamma * log p_y.

    `weight` is an optional per-class tensor (public, from the config); per-step logits
    are averaged over each sample's valid steps as in `CrossEntropy`.
    """

    def __init__(
        self, gamma: float = 2.0, weight: Tensor | Sequence[float] | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", _as_class_weight(weight))
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p, valid, safe_targets = _class_log_probs(logits, targets)
        loss = -(1.0 - log_p.exp()).pow(self.gamma) * log_p
        if self.weight is not None:
            loss = self.weight.to(loss.dtype)[safe_targets] * loss
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        return reduce_loss(_per_sample_mean_over_steps(loss, valid), self.reduction)


def public_pos_weight(loss_params: dict, source: str) -> float:
    """weighted_bce's pos_weight, from the run config (`train.loss_params.pos_weight`): a public number.
    A site's own n_negative / n_positive is a statistic of its training labels, outside the DP guarantee
    (issue 17), so "auto" or no value is refused with one line naming the field."""
    import math

    from shared.errors import InputError

    value = loss_params.get("pos_weight", "auto")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InputError(source, "train.loss_params.pos_weight",
                         f"weighted_bce needs a public pos_weight > 0 in the run config (the n_negative/n_positive "
                         f"you expect), got {value!r}: a site's own label counts are outside the DP guarantee")
    return float(value)
