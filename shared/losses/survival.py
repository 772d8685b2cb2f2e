"""Cox proportional-hazards loss: the negative partial log-likelihood, Breslow or Efron ties.

For risks r_i (log relative hazards, higher = earlier event), times t_i and event flags d_i, with
risk set R(t) = {j : t_j >= t} and D(t) = {j : t_j = t, d_j = 1} the events at time t:

    Breslow:  loss = -(1 / n_events) * sum_{i: d_i = 1} [ r_i - log sum_{j in R(t_i)} exp(r_j) ]
    Efron:    loss = -(1 / n_events) * sum over distinct event times t, with m = |D(t)|, of
                  sum_{i in D(t)} r_i
                  - sum_{l=0}^{m-1} log[ sum_{j in R(t)} exp(r_j) - (l/m) sum_{j in D(t)} exp(r_j) ]

Censored samples (d_i = 0) enter only the risk sets. With no tied event times both are equal.
A batch without events gives a loss of 0 (still attached to the graph).

Unlike the classification losses, the partial likelihood ties samples together through their
risk sets: a sample's gradient depends on the other samples in the batch. This is inherent to
Cox regression; under DP-SGD each sample's gradient is still clipped, but the risk set is the
batch (a common approximation), so larger batches approximate the full-data likelihood better.
"""

from __future__ import annotations

from torch import Tensor, nn

TIES = ("breslow", "efron")


def cox_ph_loss(risk: Tensor, time: Tensor, event: Tensor, ties: str = "breslow") -> Tensor:
    """Negative Cox partial log-likelihood averaged over events; risk, time, event: (B,)."""
    if ties not in TIES:
        raise ValueError(f"unknown ties method {ties!r}; known: {', '.join(TIES)}")
    risk = risk.reshape(-1)
    time = time.reshape(-1).to(risk.device)
    event = event.reshape(-1).to(device=risk.device, dtype=bool)
    n_events = event.sum()
    if n_events == 0:
        return risk.sum() * 0.0

    at_risk = time.unsqueeze(0) >= time.unsqueeze(1)  # (B, B): row i = risk set of time t_i
    masked_risk = risk.unsqueeze(0).masked_fill(~at_risk, float("-inf"))  # (B, B)
    # shift each row by its max (always finite: i is in its own risk set); exact, so no gradient
    shift = masked_risk.max(dim=1).values.detach()  # (B,)
    exp_risk = (masked_risk - shift.unsqueeze(1)).exp()  # (B, B), 0 outside the risk set
    risk_set_sum = exp_risk.sum(dim=1)  # (B,)

    if ties == "breslow":
        log_denominator = shift + risk_set_sum.log()
    else:
        same_time_events = (time.unsqueeze(0) == time.unsqueeze(1)) & event.unsqueeze(0)  # (B, B)
        tied_sum = (exp_risk * same_time_events).sum(dim=1)  # (B,) sum over D(t_i)
        group_size = same_time_events.sum(dim=1).clamp(min=1).to(risk.dtype)  # (B,) m of each event's group
        # each event of a group takes one l in 0..m-1: its rank among the group's earlier indices
        earlier = same_time_events.tril(diagonal=-1).sum(dim=1).to(risk.dtype)  # (B,)
        fraction = earlier / group_size
        log_denominator = shift + (risk_set_sum - fraction * tied_sum).log()

    per_event = (risk - log_denominator)[event]
    return -per_event.sum() / n_events


def multi_cox_ph_loss(risks: Tensor, times: Tensor, events: Tensor, ties: str = "breslow") -> Tensor:
    """Mean of `cox_ph_loss` over the K tasks (columns) that have at least one event; (B, K) each.

    A batch in which no task has an event gives 0 (still attached to the graph).
    """
    losses = [
        cox_ph_loss(risks[:, k], times[:, k], events[:, k], ties)
        for k in range(risks.shape[1])
        if bool(events[:, k].bool().any())
    ]
    if not losses:
        return risks.sum() * 0.0
    return sum(losses) / len(losses)


class CoxPHLoss(nn.Module):
    """`cox_ph_loss` for risk (B,) and `multi_cox_ph_loss` for risks (B, K), as a module."""

    def __init__(self, ties: str = "breslow") -> None:
        super().__init__()
        if ties not in TIES:
            raise ValueError(f"unknown ties method {ties!r}; known: {', '.join(TIES)}")
        self.ties = ties

    def forward(self, risk: Tensor, time: Tensor, event: Tensor) -> Tensor:
        if risk.dim() == 2 and risk.shape[1] > 1:
            return multi_cox_ph_loss(risk, time, event, self.ties)
        return cox_ph_loss(risk, time, event, self.ties)
