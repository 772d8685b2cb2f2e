"""Multimodal omics + clinical-text model (seed 003).

Omics (B, G) go through an MLP; the text is a precomputed embedding (B, D) of a frozen,
cached text encoder, projected by a Linear. present (B, 2) flags (omics, text) per sample: a
missing modality's input never enters (replaced by zeros before its branch) and its embedding
is zeroed, so the output does not depend on whatever the missing input holds. In training,
modality dropout hides a present modality of a sample with probability `modality_dropout`,
never leaving a sample with none; the randomness is drawn in this module's own forward,
which owns no parameters directly (Opacus' functorch fallback cannot run random ops).

Fusion: "early" = MLP on [omics_emb, text_emb, flags]; "cross_attention" = masked attention
between the two modality tokens (each attends to the other), then masked attention pooling.
Class imbalance is handled in the loss (pos_weight / focal), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from shared.models.attention import AttentionPooling, TransformerBlock
from shared.models.registry import params_schema, register_model

MODALITIES = ("omics", "text")


@dataclass
class MultimodalConfig:
    omics_dim: int
    text_dim: int
    hidden: int = 128
    dropout: float = 0.2
    modality_dropout: float = 0.2
    n_outputs: int = 1
    fusion: str = "early"  # early | cross_attention
    attention_heads: int = 4

    def __post_init__(self) -> None:
        if self.fusion not in ("early", "cross_attention"):
            raise ValueError(f"fusion must be 'early' or 'cross_attention', got {self.fusion!r}")


class MultimodalModel(nn.Module):
    def __init__(self, cfg: MultimodalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.omics_encoder = nn.Sequential(
            nn.Linear(cfg.omics_dim, h),
            nn.LayerNorm(h),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(h, h),
            nn.LayerNorm(h),
            nn.GELU(),
        )
        self.text_encoder = nn.Sequential(nn.Linear(cfg.text_dim, h), nn.LayerNorm(h), nn.GELU())
        if cfg.fusion == "cross_attention":
            self.cross_attention = TransformerBlock(h, cfg.attention_heads, 2 * h, cfg.dropout)
            self.fusion_pool = AttentionPooling(h, cfg.attention_heads)
            fused_dim = cfg.attention_heads * h + len(MODALITIES)
        else:
            fused_dim = len(MODALITIES) * h + len(MODALITIES)
        self.head = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(fused_dim, h),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(h, cfg.n_outputs),
        )

    def _drop_modalities(self, present: torch.Tensor) -> torch.Tensor:
        """Hide each present modality with probability p; a sample never loses all of them."""
        hide = torch.rand(present.shape, device=present.device) < self.cfg.modality_dropout  # (B, 2)
        kept = present & ~hide
        return torch.where(kept.any(dim=1, keepdim=True), kept, present)

    def _fuse(self, omics: torch.Tensor, text: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """present (B, 2) bool -> logits (B,) or (B, K)."""
        has_omics, has_text = present[:, :1], present[:, 1:]  # (B, 1) each
        omics_emb = self.omics_encoder(torch.where(has_omics, omics, 0.0))  # (B, H)
        text_emb = self.text_encoder(torch.where(has_text, text, 0.0))  # (B, H)
        omics_emb = torch.where(has_omics, omics_emb, 0.0)
        text_emb = torch.where(has_text, text_emb, 0.0)
        flags = present.to(omics_emb.dtype)  # (B, 2)
        if self.cfg.fusion == "cross_attention":
            tokens = torch.stack([omics_emb, text_emb], dim=1)  # (B, 2, H)
            tokens, _ = self.cross_attention(tokens, present)  # (B, 2, H)
            fused, _ = self.fusion_pool(tokens, present)  # (B, heads*H)
        else:
            fused = torch.cat([omics_emb, text_emb], dim=-1)  # (B, 2H)
        logits = self.head(torch.cat([fused, flags], dim=-1))  # (B, K)
        return logits.squeeze(-1) if self.cfg.n_outputs == 1 else logits

    def forward(self, omics: torch.Tensor, text: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """omics (B, G), text (B, D), present (B, 2) bool/0-1 -> logits (B,) or (B, K)."""
        present = present.bool()
        if self.training and self.cfg.modality_dropout > 0:
            present = self._drop_modalities(present)
        return self._fuse(omics, text, present)

    def modality_contributions(
        self, omics: torch.Tensor, text: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        """Output minus the output with that modality removed: (B, 2) or (B, 2, K), in MODALITIES
        order; 0 where the modality is missing. No modality dropout; call in eval mode."""
        present = present.bool()
        full = self._fuse(omics, text, present)
        contributions = []
        for m in range(len(MODALITIES)):
            without = present.clone()
            without[:, m] = False
            contributions.append(full - self._fuse(omics, text, without))
        return torch.stack(contributions, dim=1)


@register_model("multimodal", params_schema("MultimodalParams", MultimodalConfig, exclude=("omics_dim", "text_dim")))
def build_multimodal(omics_dim: int, text_dim: int, **params: Any) -> MultimodalModel:
    return MultimodalModel(MultimodalConfig(omics_dim, text_dim, **params))
