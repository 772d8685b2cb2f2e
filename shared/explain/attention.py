"""Attention maps and built-in decompositions the models expose, extracted in eval mode.

Attention weights say where a model looked, not what changed its output (see the attribution
modules for that); reports show both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EventAttention:
    pooling: torch.Tensor  # (B, H, L) pooling weights per head: sum to 1 over valid events, 0 on padding
    layers: list[torch.Tensor]  # per encoder layer (B, heads, L, L): row = query event, column = key event
    logits: torch.Tensor  # (B,)

    def pooling_per_event(self) -> torch.Tensor:
        """(B, L) mean pooling weight over heads."""
        return self.pooling.mean(1)


@torch.no_grad()
def event_transformer_attention(
    model: nn.Module, events: torch.Tensor, valid: torch.Tensor, statics: torch.Tensor
) -> EventAttention:
    model.eval()
    logits, maps = model(events.float(), valid.bool(), statics.float(), return_attention=True)
    return EventAttention(maps["pooling"], list(maps["layers"]), logits)


@dataclass
class RetainAttention:
    alpha: torch.Tensor  # (B, T) visit attention: sums to 1 over valid visits
    beta: torch.Tensor  # (B, T, E) variable attention per visit (tanh gate on the embedding)
    contributions: torch.Tensor  # (B, T, F) logit contribution of each lab at each visit (RETAIN eq. 5)
    logits: torch.Tensor  # (B,) or (B, K)
    lab_weights: torch.Tensor  # (B, T, F) alpha_t * w_out . (beta_t * W_emb[:, k]): logit per unit of lab k at visit t


@torch.no_grad()
def retain_attention(model: nn.Module, x: torch.Tensor, valid: torch.Tensor, output: int = 0) -> RetainAttention:
    model.eval()
    valid = valid.bool()
    x = torch.where(valid[..., None], x.float(), 0.0)
    logits, alpha, beta = model.forward_with_attention(x, valid)
    weights = model.lab_weights(x, valid, output)
    return RetainAttention(alpha, beta, weights * x, logits, weights)


@dataclass
class SleepAttention:
    channel_weights: torch.Tensor  # (B, N*k, H, C) channel pooling weights per 5-s patch and head
    temporal_weights: torch.Tensor  # (B, N, H, k) patch weights within each 30-s epoch
    channel_by_epoch: torch.Tensor  # (B, C, N) channel weight averaged over heads and the epoch's patches
    epoch_weights: torch.Tensor | None  # (B, H, N) diagnosis head only
    outputs: torch.Tensor  # staging (B, N, classes); diagnosis (B, K)


@torch.no_grad()
def sleep_attention(
    model: nn.Module, x: torch.Tensor, channel_valid: torch.Tensor, epoch_valid: torch.Tensor,
    demographics: torch.Tensor | None = None,
) -> SleepAttention:
    model.eval()
    masks = (channel_valid.bool(), epoch_valid.bool())
    if demographics is None:
        outputs, maps = model.forward_with_attention(x.float(), *masks)
    else:
        outputs, maps = model.forward_with_attention(x.float(), *masks, demographics.float())
    channel = maps["channel_weights"]  # (B, N*k, H, C)
    b, patches, _, c = channel.shape
    n = epoch_valid.shape[1]
    per_epoch = channel.mean(2).view(b, n, patches // n, c).mean(2)  # (B, N, C)
    per_epoch = torch.where(masks[1][..., None], per_epoch, 0.0)
    return SleepAttention(channel, maps["temporal_weights"], per_epoch.transpose(1, 2), maps.get("epoch_weights"), outputs)


@torch.no_grad()
def multimodal_contributions(
    model: nn.Module, omics: torch.Tensor, text: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """(B, 2) in (omics, text) order: output minus the output with that modality removed."""
    model.eval()
    present = present.bool()
    omics = torch.where(present[:, :1], omics.float(), 0.0)
    text = torch.where(present[:, 1:], text.float(), 0.0)
    return model.modality_contributions(omics, text, present)
