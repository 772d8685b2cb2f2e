"""Clinical event transformer (seed 002): ICU event sequence + static features -> mortality logit.

Per event [one-hot type | text embedding | scaled time | value z | value present] -> Linear(d_model)
(optionally plus text x time and text x value bilinear terms) + sinusoidal positions -> transformer
encoder with padding mask (0 layers allowed) -> multi-head attention pooling and a parameter-free max
pooling (optionally standardised per sample) -> concat statics -> MLP, plus a linear read-out of
[max-pooled events | statics] added to the MLP's logit. Under DP-SGD the linear read-out learns the static risk and the
"recent X was charted" terms from the first steps, where the MLP alone lags (DESIGN-NOTES.md).
Seed sizes: d_model 256, 4 layers, 8 heads, ff 512, 4 pooling heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from shared.data.event_schema import EVENT_TYPES
from shared.models.attention import AttentionPooling, TransformerStack, sinusoidal_positions
from shared.models.registry import params_schema, register_model

N_EVENT_TYPES = len(EVENT_TYPES)


@dataclass
class EventTransformerConfig:
    event_dim: int
    static_dim: int
    d_model: int = 256
    layers: int = 4
    heads: int = 8
    ff: int = 512
    pooling_heads: int = 4
    mlp_hidden: int = 128
    dropout: float = 0.1
    # Also max-pool the encoded events (no parameters): "was there any X" is then one linear
    # read-out, which DP-SGD finds far sooner than attention scores (see DESIGN-NOTES.md).
    max_pooling: bool = True
    # A linear read-out of [max-pooled events | statics] added to the MLP's logit (wide & deep):
    # the static risk and "recent X" terms are then linear from the first step (DESIGN-NOTES.md).
    linear_skip: bool = True
    # Per-event bilinear terms text x time and text x value: "Lactate" with a high value, a vasopressor
    # charted recently, are then linear in the weights instead of needing large text weights to win the max.
    text_interactions: bool = False
    # The max-pooled vector standardised over its own channels (a layer norm without parameters, so per
    # sample and DP-safe): the read-outs see it at one scale however the projection's weights grow at a
    # large DP-SGD step (DESIGN-NOTES.md, "what lifted the demo").
    normalize_max_pool: bool = False


class EventTransformer(nn.Module):
    def __init__(self, cfg: EventTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_proj = nn.Linear(cfg.event_dim, cfg.d_model)
        text_dim = cfg.event_dim - N_EVENT_TYPES - 3  # per event: [type one-hot | text | time, value z, present]
        self.text_by_time = nn.Linear(text_dim, cfg.d_model, bias=False) if cfg.text_interactions else None
        self.text_by_value = nn.Linear(text_dim, cfg.d_model, bias=False) if cfg.text_interactions else None
        self.encoder = TransformerStack(cfg.d_model, cfg.heads, cfg.ff, cfg.layers, cfg.dropout)
        self.pooling = AttentionPooling(cfg.d_model, cfg.pooling_heads)
        self.head = nn.Sequential(
            nn.Linear((cfg.pooling_heads + int(cfg.max_pooling)) * cfg.d_model + cfg.static_dim, cfg.mlp_hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.mlp_hidden, 1),
        )
        self.skip = nn.Linear(int(cfg.max_pooling) * cfg.d_model + cfg.static_dim, 1) if cfg.linear_skip else None

    def forward(
        self, events: torch.Tensor, valid: torch.Tensor, statics: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """events (B, L, event_dim), valid (B, L) bool, statics (B, static_dim) -> logits (B,)."""
        x = self.input_proj(events)  # (B, L, D)
        if self.text_by_time is not None and self.text_by_value is not None:
            text = events[..., N_EVENT_TYPES:-3]
            x = x + self.text_by_time(text) * events[..., -3:-2] + self.text_by_value(text) * events[..., -2:-1]
        x = x + sinusoidal_positions(x.shape[-2], x.shape[-1], x.device).to(x.dtype)
        x, layer_maps = self.encoder(x, valid, need_weights=return_attention)  # (B, L, D)
        pooled, pool_weights = self.pooling(x, valid)  # (B, H*D), (B, H, L)
        statics = statics.to(pooled.dtype)
        maxed = pooled[..., :0]  # (B, 0) without max pooling
        if self.cfg.max_pooling:
            masked = x.masked_fill(~valid[..., None], float("-inf")).amax(dim=-2)  # (B, D)
            maxed = torch.where(valid.any(-1, keepdim=True), masked, 0.0)
            if self.cfg.normalize_max_pool:
                maxed = nn.functional.layer_norm(maxed, maxed.shape[-1:])
        logits = self.head(torch.cat([pooled, maxed, statics], dim=-1)).squeeze(-1)  # (B,)
        if self.skip is not None:
            logits = logits + self.skip(torch.cat([maxed, statics], dim=-1)).squeeze(-1)  # (B,)
        if return_attention:
            return logits, {"pooling": pool_weights, "layers": layer_maps}
        return logits


PARAMS = params_schema("EventTransformerParams", EventTransformerConfig, exclude=("event_dim", "static_dim"))


@register_model("event_transformer", PARAMS)
def build_event_transformer(event_dim: int, static_dim: int, **params: Any) -> EventTransformer:
    return EventTransformer(EventTransformerConfig(event_dim=event_dim, static_dim=static_dim, **params))
