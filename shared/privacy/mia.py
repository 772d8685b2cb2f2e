"""Empirical privacy audit at a site: a loss-threshold membership-inference test (Yeom et al. 2018).

An attacker who sees the model guesses "member" when an example's loss is below a threshold. Sweeping
the threshold over the site's own training examples (members) and its held-out validation examples
(non-members) gives a ROC curve; its AUC is 0.5 when the model leaks nothing this attack can see.
Beside it: the largest AUC any membership test can reach against an (epsilon, delta)-DP model
(hypothesis-testing view of DP: TPR <= e^eps FPR + delta and 1 - TPR >= e^-eps (1 - delta - FPR)).
A measured AUC above that bound means the recorded epsilon is wrong; one far below says only that this
attack is weak, not that the model is private. Runs at the site: losses and labels never leave it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn
from torch.utils.data import DataLoader, Dataset

OutputsFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]
TargetsFn = Callable[[Sequence[torch.Tensor]], torch.Tensor]
LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class MembershipAudit:
    auc: float
    advantage: float  # max over thresholds of TPR - FPR
    members: int
    non_members: int
    member_loss_mean: float
    non_member_loss_mean: float
    epsilon: float | None = None  # the site's recorded sample-level epsilon for this model
    delta: float | None = None
    auc_bound: float | None = None  # the largest AUC an (epsilon, delta)-DP model allows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def per_example_losses(model: nn.Module, dataset: Dataset, kind: str, outputs: OutputsFn, targets: TargetsFn,
                       loss: LossFn, batch_size: int = 256) -> np.ndarray:
    """One loss per example: cross-entropy from the outputs for binary / multiclass tasks (extra dims such
    as per-epoch labels are averaged), the task's own loss on one-example batches otherwise."""
    model.eval()
    out: list[np.ndarray] = []
    with torch.inference_mode():
        if kind in ("binary", "multiclass"):
            for batch in DataLoader(dataset, batch_size=batch_size):
                logits, y = outputs(model, batch).float(), targets(batch)
                if kind == "binary":
                    each = nn.functional.binary_cross_entropy_with_logits(logits, y.float(), reduction="none")
                else:
                    each = nn.functional.cross_entropy(logits.movedim(-1, 1), y.long(), reduction="none")
                out.append(each.reshape(len(y), -1).mean(dim=1).numpy())
        else:
            for batch in DataLoader(dataset, batch_size=1):
                out.append(np.array([float(loss(model, batch))]))
    return np.concatenate(out) if out else np.zeros(0)


def loss_threshold_attack(member_losses: np.ndarray, non_member_losses: np.ndarray) -> tuple[float, float]:
    """(AUC, advantage) of guessing "member" for losses below a threshold."""
    labels = np.r_[np.ones(len(member_losses)), np.zeros(len(non_member_losses))]
    scores = -np.r_[member_losses, non_member_losses]
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(roc_auc_score(labels, scores)), float(np.max(tpr - fpr))


def dp_auc_bound(epsilon: float, delta: float, grid: int = 100_001) -> float:
    """The area under the most powerful ROC curve an (epsilon, delta)-DP mechanism allows."""
    fpr = np.linspace(0.0, 1.0, grid)
    tpr = np.minimum.reduce([
        np.ones_like(fpr),
        np.exp(epsilon) * fpr + delta,
        1.0 - np.exp(-epsilon) * (1.0 - delta - fpr),
    ])
    return float(np.trapezoid(np.clip(tpr, 0.0, 1.0), fpr))


def membership_audit(member_losses: np.ndarray, non_member_losses: np.ndarray, epsilon: float | None = None,
                     delta: float | None = None) -> MembershipAudit:
    auc, advantage = loss_threshold_attack(member_losses, non_member_losses)
    bound = dp_auc_bound(epsilon, delta) if epsilon is not None and delta is not None else None
    return MembershipAudit(
        auc=auc, advantage=advantage, members=len(member_losses), non_members=len(non_member_losses),
        member_loss_mean=float(np.mean(member_losses)), non_member_loss_mean=float(np.mean(non_member_losses)),
        epsilon=epsilon, delta=delta, auc_bound=bound,
    )


def membership_table(audit: MembershipAudit) -> str:
    lines = [
        "membership inference by loss threshold",
        f"  members (training split) {audit.members}, non-members (validation split) {audit.non_members}",
        f"  mean loss {audit.member_loss_mean:.4f} vs {audit.non_member_loss_mean:.4f}; "
        f"attack AUC {audit.auc:.3f}, advantage {audit.advantage:.3f}",
    ]
    if audit.epsilon is None:
        lines.append("  no privacy ledger at this site: no epsilon to compare with")
    elif audit.auc_bound is not None:
        verdict = "EXCEEDS it: the recorded epsilon is wrong" if audit.auc > audit.auc_bound else "within it"
        lines.append(f"  site epsilon {audit.epsilon:.3f} at delta {audit.delta:g} allows AUC <= {audit.auc_bound:.3f}: "
                     f"{verdict}")
    return "\n".join(lines)
