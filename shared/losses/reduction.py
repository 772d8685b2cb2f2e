"""The one reduction every fedcare loss ends with (a plain mean keeps Opacus per-sample gradients valid)."""

from __future__ import annotations

from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def reduce_loss(per_sample: Tensor, reduction: str) -> Tensor:
    """"mean" (the default everywhere), "sum", or "none" (return the per-sample losses)."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r}; known: {', '.join(REDUCTIONS)}")
