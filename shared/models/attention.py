"""Attention blocks that Opacus can privatise.

Every parameter lives in an nn.Linear or nn.LayerNorm, and the attention itself is
F.scaled_dot_product_attention (no parameters), so Opacus' hooks give per-sample gradients
and GPUs run fused kernels. nn.MultiheadAttention / nn.TransformerEncoderLayer are avoided on
purpose (see DESIGN-NOTES.md). All blocks accept any leading dimensions before (S, E), with the
sample dimension first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _safe_mask(valid: torch.Tensor) -> torch.Tensor:
    """A row with no valid position would softmax to NaN: let it attend everywhere instead
    (its output is ignored by the caller's own mask)."""
    return valid | ~valid.any(dim=-1, keepdim=True)


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (..., S, E) -> (..., H, S, Dh)
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(-2, -3)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (..., S, E); valid: (..., S) bool, True for real positions.

        Returns (output (..., S, E), weights (..., H, S, S) or None)."""
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        mask = None if valid is None else _safe_mask(valid)[..., None, None, :]  # (..., 1, 1, S)
        weights = None
        if need_weights:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (..., H, S, S)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, self.dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        out = out.transpose(-2, -3).flatten(-2)  # (..., S, E)
        return self.out_proj(out), weights


class TransformerBlock(nn.Module):
    """Pre-norm encoder layer: x + MHSA(LN(x)); x + FF(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadSelfAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, w = self.attn(self.norm1(x), valid, need_weights)
        x = x + self.drop(a)
        x = x + self.drop(self.ff(self.norm2(x)))
        return x, w


class TransformerStack(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, n_layers: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = []
        for layer in self.layers:
            x, w = layer(x, valid, need_weights)
            if w is not None:
                maps.append(w)
        return self.norm(x), maps


class AttentionPooling(nn.Module):
    """Multi-head attention pooling over a set/sequence.

    The learned query of each head is an nn.Linear scoring layer (equivalent, and Opacus
    gives it per-sample gradients; a bare nn.Parameter query would not work under hooks).
    Returns the per-head pooled vectors concatenated, and the weights (..., H, S): they sum to
    1 over valid positions and are exactly 0 on padding.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.score = nn.Linear(d_model, n_heads)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(x).transpose(-1, -2)  # (..., H, S)
        if valid is not None:
            scores = scores.masked_fill(~_safe_mask(valid)[..., None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        if valid is not None:
            weights = weights * valid[..., None, :].to(weights.dtype)  # all-padding rows -> 0
        pooled = weights @ x  # (..., H, E)
        return pooled.flatten(-2), weights


def sinusoidal_positions(length: int, d_model: int, device: torch.device | None = None) -> torch.Tensor:
    """(length, d_model) fixed sinusoidal encoding (Vaswani et al.); no parameters."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
    return pe
