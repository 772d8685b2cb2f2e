"""Recurrent pieces for left-aligned padded sequences that Opacus can privatise.

Sequences are left-aligned: the valid steps of a sample come first, padding fills the end.
A forward-in-time RNN then never sees padding before a valid step. To run an RNN backwards
in time (RETAIN's reverse-time GRUs, the backward half of a BiLSTM) each sample is reversed
within its own valid length, so the RNN starts at the last valid step, not at the padding.

Opacus' DPLSTM / DPGRU are used directly (nn.LSTM / nn.GRU fail its validator). PackedSequence
is avoided on purpose: Opacus keeps the per-sample gradients of a packed RNN in the packed
(length-sorted) order, not the batch order, so they would be clipped against the wrong samples.
"""

from __future__ import annotations

import torch
from opacus.layers import DPLSTM
from torch import nn


def reverse_valid_prefix(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Reverse each sample's valid prefix along dim 1; padding stays where it is.

    x: (B, T, ...); valid: (B, T) bool, True on a prefix of each row. Self-inverse.
    """
    steps = x.shape[1]
    lengths = valid.sum(dim=1, keepdim=True)  # (B, 1)
    t = torch.arange(steps, device=x.device)[None, :]  # (1, T)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (B, T)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class MaskedBiLSTM(nn.Module):
    """Bidirectional LSTM over left-aligned padded sequences: two DPLSTMs, the backward one run
    on per-sample reversed sequences, so padding never changes the output at a valid step.

    x: (B, T, D), valid (B, T) -> (B, T, 2 * hidden), zero on padding.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.forward_lstm = DPLSTM(input_size, hidden_size, batch_first=True)
        self.backward_lstm = DPLSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = torch.where(valid[..., None], x, 0.0)  # NaN-safe: padding values never enter
        ahead, _ = self.forward_lstm(x)  # (B, T, H)
        behind, _ = self.backward_lstm(reverse_valid_prefix(x, valid))  # (B, T, H), reversed time
        out = torch.cat([ahead, reverse_valid_prefix(behind, valid)], dim=-1)  # (B, T, 2H)
        return torch.where(valid[..., None], out, 0.0)
