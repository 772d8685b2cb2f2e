"""Heads on the sleep SetTransformer (seed 001): staging, diagnosis, contrastive pretraining.

A night is x (B, C, N*k, P): N 30-s epochs of k = 6 patches of P = 640 samples, on the patch
axis so the sample dim stays first; channel_valid (B, C) and epoch_valid (B, N) mark real data
(epochs left-aligned, padding at the end). The encoder embeds each epoch on its own
(SetTransformer.encode_epochs) -> (B, N, E).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import nn

from shared.models.attention import AttentionPooling, TransformerStack, sinusoidal_positions
from shared.models.recurrent import MaskedBiLSTM
from shared.models.registry import params_schema, register_model
from shared.models.set_transformer import SetTransformer, SetTransformerConfig

SLEEP_STAGES = ("Wake", "N1", "N2", "N3", "REM")
SLEEP_MODALITIES = ("BAS", "RESP", "EKG", "EMG")  # index = value in a channel_modality tensor
PATCHES_PER_EPOCH = 6  # 30 s / 5 s


class SleepStagingModel(nn.Module):
    """Epoch embeddings -> epoch-level transformer -> BiLSTM -> stage logits (B, N, n_classes)."""

    def __init__(
        self,
        encoder_cfg: SetTransformerConfig,
        n_classes: int = len(SLEEP_STAGES),
        lstm_hidden: int = 128,
        epoch_layers: int = 2,
        epoch_heads: int = 4,
        epoch_ff: int = 256,
        dropout: float = 0.1,
        patches_per_epoch: int = PATCHES_PER_EPOCH,
    ) -> None:
        super().__init__()
        self.patches_per_epoch = patches_per_epoch
        d = encoder_cfg.d_model
        self.encoder = SetTransformer(encoder_cfg)
        self.epoch_transformer = TransformerStack(d, epoch_heads, epoch_ff, epoch_layers, dropout)
        self.bilstm = MaskedBiLSTM(d, lstm_hidden)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * lstm_hidden, n_classes)

    def forward_with_attention(
        self, x: torch.Tensor, channel_valid: torch.Tensor, epoch_valid: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> logits (B, N, n_classes), {channel_weights (B, N*k, H, C), temporal_weights (B, N, H, k)}."""
        encoded = self.encoder.encode_epochs(x, channel_valid, epoch_valid, self.patches_per_epoch)
        epochs = encoded.pop("pooled")  # (B, N, E)
        n, d = epochs.shape[-2:]
        h = epochs + sinusoidal_positions(n, d, epochs.device).to(epochs.dtype)
        h, _ = self.epoch_transformer(self.drop(h), epoch_valid)  # (B, N, E)
        h = self.bilstm(h, epoch_valid)  # (B, N, 2H)
        return self.classifier(self.drop(h)), encoded  # (B, N, n_classes)

    def forward(
        self, x: torch.Tensor, channel_valid: torch.Tensor, epoch_valid: torch.Tensor
    ) -> torch.Tensor:
        return self.forward_with_attention(x, channel_valid, epoch_valid)[0]


class SleepDiagnosisModel(nn.Module):
    """Epoch embeddings -> BiLSTM -> attention pooling, + demographics (age, sex) -> K hazard
    logits (B, K), one per outcome, for a CoxPH loss."""

    def __init__(
        self,
        encoder_cfg: SetTransformerConfig,
        n_outcomes: int,
        lstm_hidden: int = 128,
        epoch_pool_heads: int = 1,
        n_demographics: int = 2,
        hidden: int = 128,
        dropout: float = 0.1,
        patches_per_epoch: int = PATCHES_PER_EPOCH,
    ) -> None:
        super().__init__()
        self.patches_per_epoch = patches_per_epoch
        self.encoder = SetTransformer(encoder_cfg)
        self.bilstm = MaskedBiLSTM(encoder_cfg.d_model, lstm_hidden)
        self.epoch_pool = AttentionPooling(2 * lstm_hidden, epoch_pool_heads)
        self.head = nn.Sequential(
            nn.Linear(epoch_pool_heads * 2 * lstm_hidden + n_demographics, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_outcomes),
        )

    def forward_with_attention(
        self,
        x: torch.Tensor,
        channel_valid: torch.Tensor,
        epoch_valid: torch.Tensor,
        demographics: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """demographics (B, n_demographics), already scaled -> hazard logits (B, K) and
        {channel_weights, temporal_weights, epoch_weights (B, H, N)}."""
        encoded = self.encoder.encode_epochs(x, channel_valid, epoch_valid, self.patches_per_epoch)
        h = self.bilstm(encoded.pop("pooled"), epoch_valid)  # (B, N, 2H)
        pooled, epoch_weights = self.epoch_pool(h, epoch_valid)  # (B, heads*2H), (B, heads, N)
        logits = self.head(torch.cat([pooled, demographics.to(pooled.dtype)], dim=-1))  # (B, K)
        return logits, {**encoded, "epoch_weights": epoch_weights}

    def forward(
        self,
        x: torch.Tensor,
        channel_valid: torch.Tensor,
        epoch_valid: torch.Tensor,
        demographics: torch.Tensor,
    ) -> torch.Tensor:
        return self.forward_with_attention(x, channel_valid, epoch_valid, demographics)[0]


class ContrastivePretrainer(nn.Module):
    """One embedding per modality (BAS, RESP, EKG, EMG) of the same window, for InfoNCE between
    modalities. The tokenizer runs once; channel pooling and the temporal encoder run per
    modality on a modality axis (B, M, ...). A modality with no valid channel in a sample gets
    a zero embedding (see `modality_present`).

    DP caveat: InfoNCE with in-batch negatives (`forward`, one embedding per window) couples
    samples in one loss, so a sample's clipped gradient no longer bounds its influence. The
    federated pretraining phase uses `epoch_embeddings` with negatives from the same recording
    (shared.losses.contrastive.within_sample_info_nce): each sample's loss is its own.
    """

    def __init__(
        self,
        encoder_cfg: SetTransformerConfig,
        modalities: tuple[str, ...] = SLEEP_MODALITIES,
        projection_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.modalities = modalities
        d = encoder_cfg.d_model
        self.encoder = SetTransformer(encoder_cfg)
        self.projection = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, projection_dim or d))

    @staticmethod
    def modality_channel_valid(
        channel_valid: torch.Tensor, channel_modality: torch.Tensor, n_modalities: int
    ) -> torch.Tensor:
        """(B, C), (C,) -> (B, M, C): channel valid and of modality m."""
        ids = torch.arange(n_modalities, device=channel_modality.device)
        return channel_valid[:, None, :] & (channel_modality[None, None, :] == ids[None, :, None])

    def modality_present(self, channel_valid: torch.Tensor, channel_modality: torch.Tensor) -> torch.Tensor:
        """(B, M) bool: the sample has at least one valid channel of that modality."""
        return self.modality_channel_valid(channel_valid, channel_modality, len(self.modalities)).any(-1)

    def forward(
        self,
        x: torch.Tensor,
        channel_valid: torch.Tensor,
        patch_valid: torch.Tensor,
        channel_modality: torch.Tensor,
    ) -> torch.Tensor:
        """x (B, C, S, P), channel_modality (C,) long -> projected embeddings (B, M, D)."""
        m = len(self.modalities)
        tokens = self.encoder.tokenize(x, channel_valid, patch_valid)  # (B, S, C, E)
        b, s, c, e = tokens.shape
        per_modality_valid = self.modality_channel_valid(channel_valid, channel_modality, m)  # (B, M, C)
        patches, _ = self.encoder.pool_channels(
            tokens[:, None].expand(b, m, s, c, e), per_modality_valid
        )  # (B, M, S, E)
        pooled, _, _ = self.encoder.encode_sequence(
            patches, patch_valid[:, None, :].expand(b, m, s)
        )  # (B, M, E)
        present = per_modality_valid.any(-1)  # (B, M)
        return torch.where(present[..., None], self.projection(pooled), 0.0)  # (B, M, D)

    def epoch_embeddings(
        self,
        x: torch.Tensor,
        channel_valid: torch.Tensor,
        epoch_valid: torch.Tensor,
        channel_modality: torch.Tensor,
        patches_per_epoch: int = PATCHES_PER_EPOCH,
    ) -> torch.Tensor:
        """One embedding per modality and 30-s epoch: x (B, C, N*k, P), epoch_valid (B, N) ->
        projected (B, M, N, D), zero where the sample lacks the modality or the epoch is padding.
        For a per-recording contrastive objective (positives: two modalities of one epoch;
        negatives: the recording's other epochs), which keeps every sample's loss its own under DP."""
        m = len(self.modalities)
        b, _, s, _ = x.shape
        n = s // patches_per_epoch
        patch_valid = epoch_valid.repeat_interleave(patches_per_epoch, dim=1)  # (B, N*k)
        tokens = self.encoder.tokenize(x, channel_valid, patch_valid)  # (B, N*k, C, E)
        c, e = tokens.shape[-2:]
        per_modality_valid = self.modality_channel_valid(channel_valid, channel_modality, m)  # (B, M, C)
        patches, _ = self.encoder.pool_channels(
            tokens[:, None].expand(b, m, s, c, e), per_modality_valid
        )  # (B, M, N*k, E)
        patches = patches.view(b, m, n, patches_per_epoch, e)  # (B, M, N, k, E)
        epoch_patch_valid = patch_valid.view(b, 1, n, patches_per_epoch).expand(b, m, n, patches_per_epoch)
        pooled, _, _ = self.encoder.encode_sequence(patches, epoch_patch_valid)  # (B, M, N, E)
        keep = per_modality_valid.any(-1)[:, :, None] & epoch_valid[:, None, :]  # (B, M, N)
        return torch.where(keep[..., None], self.projection(pooled), 0.0)  # (B, M, N, D)

    def modality_embeddings(
        self,
        x: torch.Tensor,
        channel_valid: torch.Tensor,
        patch_valid: torch.Tensor,
        channel_modality: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """-> {modality name: (B, D)}; zero rows where the sample lacks that modality."""
        stacked = self(x, channel_valid, patch_valid, channel_modality)  # (B, M, D)
        return {name: stacked[:, i] for i, name in enumerate(self.modalities)}


# The encoder's fields, `preset: seed|small` (the sizes the fields override) and the head's keyword arguments.
# `dropout` is the encoder's and the head's.
PRESET = Literal["seed", "small"]
STAGING_PARAMS = params_schema("SleepStagingParams", SetTransformerConfig, SleepStagingModel, preset=(PRESET, "seed"))
DIAGNOSIS_PARAMS = params_schema("SleepDiagnosisParams", SetTransformerConfig, SleepDiagnosisModel, preset=(PRESET, "seed"),
                                 exclude=("n_outcomes",))
CONTRASTIVE_PARAMS = params_schema("SleepContrastiveParams", SetTransformerConfig, ContrastivePretrainer,
                                   preset=(PRESET, "seed"))


def _head_kwargs(params: dict[str, Any], head: type) -> dict[str, Any]:
    names = set(inspect.signature(head.__init__).parameters)
    return {k: v for k, v in params.items() if k in names}


@register_model("set_transformer_staging", STAGING_PARAMS)
def build_sleep_staging(**params: Any) -> SleepStagingModel:
    return SleepStagingModel(SetTransformerConfig.from_dict(params), **_head_kwargs(params, SleepStagingModel))


@register_model("set_transformer_diagnosis", DIAGNOSIS_PARAMS)
def build_sleep_diagnosis(n_outcomes: int, **params: Any) -> SleepDiagnosisModel:
    return SleepDiagnosisModel(SetTransformerConfig.from_dict(params), n_outcomes, **_head_kwargs(params, SleepDiagnosisModel))


@register_model("set_transformer_contrastive", CONTRASTIVE_PARAMS)
def build_sleep_contrastive(**params: Any) -> ContrastivePretrainer:
    head = _head_kwargs(params, ContrastivePretrainer)
    if "modalities" in head:
        head["modalities"] = tuple(head["modalities"])
    return ContrastivePretrainer(SetTransformerConfig.from_dict(params), **head)
