"""Sleep SetTransformer encoder (seed 001): multichannel PSG patches -> embeddings.

A night (or a window of it) is x (B, C, S, P): C channels (a set, any order, some missing),
S patches of P = 640 samples (5 s at 128 Hz). Each (channel, patch) becomes a token through
a CNN tokenizer; an attention pooling over the channel set (masked) gives one token per patch;
sinusoidal positions and a temporal transformer run over the patches; an attention pooling over
the patches gives the embedding.

Opacus: the tokenizer keeps the sample dim first, running Conv2d with (1, k) kernels over
(B, 1, C*S, P) instead of folding channels/patches into the batch. Its GroupNorm statistics are
taken per token (per (channel, patch) row, as the seed's per-row GroupNorm did), so a padded
channel or patch never shifts the tokens of the real ones; the normalisation itself is
parameter-free and its affine part is a depthwise 1x1 Conv2d, which Opacus privatises.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shared.models.attention import AttentionPooling, TransformerStack, sinusoidal_positions


@dataclass
class SetTransformerConfig:
    patch_samples: int = 640  # 5 s at 128 Hz
    conv_channels: tuple[int, ...] = (32, 64, 64, 128, 128, 128)  # 1 -> ... -> 128, each k5 s2
    kernel_size: int = 5
    norm_groups: int = 8
    norm_affine: bool = True  # per-channel scale/shift after each token norm (False: ~35% faster on CPU)
    d_model: int = 128
    channel_heads: int = 8
    n_heads: int = 8
    n_layers: int = 6
    d_ff: int = 2048
    pool_heads: int = 8
    dropout: float = 0.1

    @classmethod
    def small(cls, **overrides: Any) -> SetTransformerConfig:
        """A few-hundred-k-parameter preset for tests and CPU runs."""
        small = {
            "conv_channels": (16, 32, 64),
            "norm_groups": 4,
            "d_model": 64,
            "channel_heads": 2,
            "n_heads": 4,
            "n_layers": 2,
            "d_ff": 128,
            "pool_heads": 2,
        }
        return cls(**(small | overrides))

    @classmethod
    def from_dict(cls, model_cfg: dict[str, Any]) -> SetTransformerConfig:
        """`preset: seed|small` plus any field overrides; other keys are ignored."""
        known = {f.name for f in fields(cls)}
        overrides = {k: v for k, v in model_cfg.items() if k in known}
        if "conv_channels" in overrides:
            overrides["conv_channels"] = tuple(overrides["conv_channels"])
        if model_cfg.get("preset", "seed") == "small":
            return cls.small(**overrides)
        return cls(**overrides)

    def token_length(self) -> int:
        """Samples left per patch after the stride-2 convolutions."""
        length = self.patch_samples
        for _ in self.conv_channels:
            length = (length + 2 * (self.kernel_size // 2) - self.kernel_size) // 2 + 1
        return length


class TokenGroupNorm(nn.Module):
    """GroupNorm whose statistics are per (sample, row) of a (B, C, R, L) map: each row (one
    (channel, patch) token) is normalised over its group's channels and L on its own."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.affine: nn.Module = nn.Identity()
        if affine:  # a depthwise 1x1 conv: Opacus privatises it; slow on CPU (mkldnn), hence optional
            self.affine = nn.Conv2d(num_channels, num_channels, kernel_size=1, groups=num_channels)
            nn.init.ones_(self.affine.weight)
            nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, r, length = x.shape
        rows = x.transpose(1, 2).reshape(b * r, c, length)  # parameter-free, so folding is safe
        rows = F.group_norm(rows, self.num_groups, eps=self.eps)
        # contiguous: Opacus' conv grad sampler (unfold2d, as_strided) silently computes wrong
        # per-sample gradients for a non-contiguous input to an unpadded conv.
        x = rows.reshape(b, r, c, length).transpose(1, 2).contiguous()  # (B, C, R, L)
        return self.affine(x)


class SetTransformer(nn.Module):
    def __init__(self, cfg: SetTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        in_ch = 1
        for out_ch in cfg.conv_channels:
            layers += [
                nn.Conv2d(
                    in_ch, out_ch, (1, cfg.kernel_size), stride=(1, 2), padding=(0, cfg.kernel_size // 2)
                ),
                TokenGroupNorm(min(cfg.norm_groups, out_ch), out_ch, affine=cfg.norm_affine),
                nn.ELU(),
            ]
            in_ch = out_ch
        self.tokenizer = nn.Sequential(*layers)
        self.token_proj = nn.Linear(in_ch * cfg.token_length(), cfg.d_model)
        self.channel_pool = AttentionPooling(cfg.d_model, cfg.channel_heads)
        self.channel_proj = nn.Linear(cfg.channel_heads * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.temporal = TransformerStack(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.n_layers, cfg.dropout)
        self.temporal_pool = AttentionPooling(cfg.d_model, cfg.pool_heads)
        self.temporal_proj = nn.Linear(cfg.pool_heads * cfg.d_model, cfg.d_model)

    def tokenize(
        self, x: torch.Tensor, channel_valid: torch.Tensor, patch_valid: torch.Tensor
    ) -> torch.Tensor:
        """x (B, C, S, P) -> tokens (B, S, C, E); padded channels/patches are zeroed first."""
        b, c, s, p = x.shape
        keep = channel_valid[:, :, None] & patch_valid[:, None, :]  # (B, C, S)
        x = torch.where(keep[..., None], x, 0.0)  # NaN-safe: padding values never enter
        h = self.tokenizer(x.reshape(b, 1, c * s, p))  # (B, K, C*S, L)
        h = h.permute(0, 2, 1, 3).flatten(2)  # (B, C*S, K*L)
        tokens = self.token_proj(h)  # (B, C*S, E)
        return tokens.view(b, c, s, self.cfg.d_model).transpose(1, 2)  # (B, S, C, E)

    def pool_channels(
        self, tokens: torch.Tensor, channel_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, ..., S, C, E), channel_valid (B, ..., C) ->
        pooled (B, ..., S, E), weights (B, ..., S, H, C)."""
        valid = channel_valid.unsqueeze(-2).expand(tokens.shape[:-1])  # (B, ..., S, C)
        pooled, weights = self.channel_pool(tokens, valid)  # (B, ..., S, H*E), (B, ..., S, H, C)
        return self.channel_proj(pooled), weights

    def encode_sequence(
        self, patches: torch.Tensor, patch_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """patches (B, ..., S, E), patch_valid (B, ..., S) ->
        pooled (B, ..., E), sequence (B, ..., S, E) (0 on padding), weights (B, ..., H, S)."""
        s, e = patches.shape[-2:]
        h = self.drop(patches + sinusoidal_positions(s, e, patches.device).to(patches.dtype))
        h, _ = self.temporal(h, patch_valid)  # (B, ..., S, E)
        h = torch.where(patch_valid[..., None], h, 0.0)
        pooled, weights = self.temporal_pool(h, patch_valid)  # (B, ..., H*E), (B, ..., H, S)
        return self.temporal_proj(pooled), h, weights

    def forward(
        self, x: torch.Tensor, channel_valid: torch.Tensor, patch_valid: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """x (B, C, S, P), channel_valid (B, C), patch_valid (B, S) ->
        pooled (B, E), sequence (B, S, E), channel_weights (B, S, H, C), temporal_weights (B, H, S)."""
        tokens = self.tokenize(x, channel_valid, patch_valid)  # (B, S, C, E)
        patches, channel_weights = self.pool_channels(tokens, channel_valid)  # (B, S, E)
        pooled, sequence, temporal_weights = self.encode_sequence(patches, patch_valid)
        return {
            "pooled": pooled,
            "sequence": sequence,
            "channel_weights": channel_weights,
            "temporal_weights": temporal_weights,
        }

    def encode_epochs(
        self, x: torch.Tensor, channel_valid: torch.Tensor, epoch_valid: torch.Tensor, patches_per_epoch: int
    ) -> dict[str, torch.Tensor]:
        """Encode each 30-s epoch on its own: x (B, C, N*k, P), epoch_valid (B, N) ->
        pooled (B, N, E), channel_weights (B, N*k, H, C), temporal_weights (B, N, H, k).

        Epochs stay on the patch axis (sample dim first); the temporal transformer and pooling
        then run over (B, N, k, E), i.e. within each epoch."""
        b, _, s, _ = x.shape
        n = s // patches_per_epoch
        patch_valid = epoch_valid.repeat_interleave(patches_per_epoch, dim=1)  # (B, N*k)
        tokens = self.tokenize(x, channel_valid, patch_valid)  # (B, N*k, C, E)
        patches, channel_weights = self.pool_channels(tokens, channel_valid)  # (B, N*k, E)
        patches = patches.view(b, n, patches_per_epoch, self.cfg.d_model)  # (B, N, k, E)
        pooled, _, temporal_weights = self.encode_sequence(
            patches, patch_valid.view(b, n, patches_per_epoch)
        )  # (B, N, E), _, (B, N, H, k)
        pooled = torch.where(epoch_valid[..., None], pooled, 0.0)
        return {"pooled": pooled, "channel_weights": channel_weights, "temporal_weights": temporal_weights}
