"""Symmetric InfoNCE (CLIP-style) between paired embeddings, and its multi-modality average.

For L2-normalized z_a, z_b (B, E) and temperature T, logits = z_a z_b^T / T (B, B); row i's
positive is column i and the other B - 1 samples of the batch are its negatives:

    loss = 1/2 * [ CE(logits, arange(B)) + CE(logits^T, arange(B)) ]

In-batch negatives tie samples together (each sample's gradient depends on the batch), so a
clipped per-sample gradient no longer bounds a sample's influence. `within_sample_info_nce` takes
its negatives from the same sample (other time steps of one recording) instead: every sample's
loss is its own, as sample-level DP-SGD assumes.
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


def within_sample_info_nce(
    embeddings: Tensor, present: Tensor, valid: Tensor, names: tuple[str, ...] | list[str], temperature: float = 0.07
) -> Tensor:
    """Per-sample multi-modality InfoNCE, averaged over samples: `multi_modal_info_nce` run on each
    sample's own steps, so a step's positive is the other modality at the same step and its
    negatives are the sample's other steps (no other sample enters a sample's loss: what
    sample-level DP-SGD needs).

    embeddings (B, M, N, E): modality m of step n. present (B, M) bool: the sample has modality m.
    valid (B, N) bool: real steps. names: the M modality names. A sample with fewer than two
    present modalities or fewer than two valid steps adds 0 (attached to the graph), as does an
    empty batch (Poisson sampling can draw one).
    """
    if embeddings.shape[0] == 0:
        return embeddings.sum() * 0.0
    losses = []
    for b in range(embeddings.shape[0]):
        steps = valid[b]
        sample = {name: embeddings[b, m][steps] for m, name in enumerate(names) if bool(present[b, m])}
        if len(sample) < 2:
            losses.append(embeddings[b].sum() * 0.0)
            continue
        losses.append(multi_modal_info_nce(sample, temperature=temperature))
    return torch.stack(losses).mean()
