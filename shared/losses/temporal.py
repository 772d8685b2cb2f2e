"""Temporal-aware BCE: stays whose events happened close to the prediction time weigh more."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.losses.reduction import reduce_loss


def recency_weights(event_hours: Tensor, event_mask: Tensor, lam: float = 1.0, tau: float = 24.0) -> Tensor:
    """Per-sample weights w_i = 1 + lam * mean over i's events e of exp(-max(h_ie, 0) / tau).

    event_hours (B, E): hours from each event to the end of the stay (0 = at the end); event_mask
    (B, E): True for real events, False for padding. A sample without events gets w = 1. Returns
    (B,) weights in [1, 1 + lam], computed without gradient (they come from data, not the model).
    """
    with torch.no_grad():
        mask = event_mask.to(torch.float32)
        recency = torch.exp(-event_hours.to(torch.float32).clamp(min=0.0) / tau) * mask  # (B, E)
        mean_recency = recency.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B,)
        return 1.0 + lam * mean_recency


class TemporalAwareBCE(nn.Module):
    """Binary cross-entropy on logits, each sample weighted by how recent its events are.

    For sample i with logit z_i, label y_i and real events e = 1..n_i at h_ie hours before the
    end of the stay (the prediction time):

        w_i    = 1 + lam * (1 / n_i) * sum_e exp(-max(h_ie, 0) / tau)      (w_i = 1 if n_i = 0)
        loss_i = w_i * BCE(z_i, y_i) = -w_i * [y_i log sigmoid(z_i) + (1 - y_i) log(1 - sigmoid(z_i))]
        loss   = (1 / B) * sum_i loss_i

    So 1 <= w_i <= 1 + lam: a stay whose events all happened at the end weighs 1 + lam, one whose
    events lie many tau in the past weighs about 1. An event's contribution halves every
    tau * ln 2 hours (about 16.6 h for the default tau = 24 h). Defaults: lam = 1.0, tau = 24 h.
    The weights depend on each sample's own events only and the batch is reduced by a plain mean,
    so Opacus' per-sample gradients stay valid.

    forward(logits (B,) or (B, K), targets like logits, event_hours (B, E), event_mask (B, E) bool)
    """

    def __init__(self, lam: float = 1.0, tau: float = 24.0, reduction: str = "mean") -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive hours, got {tau}")
        self.lam = lam
        self.tau = tau
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor, event_hours: Tensor, event_mask: Tensor) -> Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
        weights = recency_weights(event_hours, event_mask, self.lam, self.tau).to(bce.dtype)  # (B,)
        weights = weights.reshape(-1, *([1] * (bce.dim() - 1)))  # broadcast over label columns
        return reduce_loss(weights * bce, self.reduction)
