"""Symmetric InfoNCE (CLIP-style) between paired embeddings, and its multi-modality average.

For L2-normalized z_a, z_b (B, E) and temperature T, logits = z_a z_b^T / T (B, B); row i's
positive is column i and the other B - 1 samples of the batch are its negatives:

    loss = 1/2 * [ CE(logits, arange(B)) + CE(logits^T, arange(B)) ]

In-batch negatives tie samples together (each sample's gradient depends on the batch), which is
inherent to contrastive learning; under DP-SGD each sample's gradient is still clipped.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(z_a: Tensor, z_b: Tensor, temperature: float = 0.07) -> Tensor:
    """Symmetric InfoNCE between rows of z_a (B, E) and z_b (B, E); row i of each is a pair."""
    z_a = F.normalize(z_a, dim=-1)
    z_b = F.normalize(z_b, dim=-1)
    logits = z_a @ z_b.T / temperature  # (B, B)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def multi_modal_info_nce(
    embeddings: dict[str, Tensor], masks: dict[str, Tensor] | None = None, temperature: float = 0.07
) -> Tensor:
    """Mean of `info_nce` over modality pairs, each on the samples that have both modalities.

    embeddings: modality name -> (B, E). masks: modality name -> (B,) bool presence (a modality
    missing from `masks`, or masks=None, is present in every sample). A pair enters the mean when
    at least 2 samples have both modalities (one sample has no negative). Returns 0 (attached to
    the graph) when no pair qualifies.
    """
    masks = masks or {}
    losses = []
    for name_a, name_b in itertools.combinations(sorted(embeddings), 2):
        z_a, z_b = embeddings[name_a], embeddings[name_b]
        both = torch.ones(z_a.shape[0], dtype=torch.bool, device=z_a.device)
        for name in (name_a, name_b):
            if name in masks:
                both = both & masks[name].to(device=z_a.device, dtype=torch.bool)
        if int(both.sum()) >= 2:
            losses.append(info_nce(z_a[both], z_b[both], temperature))
    if not losses:
        return sum(z.sum() for z in embeddings.values()) * 0.0
    return torch.stack(losses).mean()
