"""RETAIN (Choi et al., NeurIPS 2016), seed 000: AKI prediction from a patient's visit sequence.

Each visit is a vector of numeric lab features. Visits are embedded, two GRUs run backwards in
time (from the last valid visit to the first) and give a visit-level attention alpha and a
variable-level attention beta; the context sum_t alpha_t * beta_t * v_t feeds a linear output.
Because the embedding has no bias and the output is linear, every logit splits exactly into
per-(visit, feature) contributions (paper eq. 5), which the explain step plots.

Input: x (B, T, F) visits in chronological order, LEFT-aligned (padding at the end), and
valid (B, T) bool. The GRUs are Opacus DPGRUs (nn.GRU fails Opacus' validator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from opacus.layers import DPGRU
from torch import nn

from shared.models.recurrent import reverse_valid_prefix
from shared.models.registry import params_schema, register_model


@dataclass
class RetainConfig:
    n_features: int
    emb_dim: int = 64
    alpha_hidden: int = 64
    beta_hidden: int = 64
    dropout: float = 0.1
    n_outputs: int = 1


class Retain(nn.Module):
    def __init__(self, cfg: RetainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # No bias: v_t = W_emb x_t, so contributions (variable_contributions) are exact.
        self.embed = nn.Linear(cfg.n_features, cfg.emb_dim, bias=False)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.alpha_gru = DPGRU(cfg.emb_dim, cfg.alpha_hidden, batch_first=True)
        self.beta_gru = DPGRU(cfg.emb_dim, cfg.beta_hidden, batch_first=True)
        self.alpha_score = nn.Linear(cfg.alpha_hidden, 1)
        self.beta_gate = nn.Linear(cfg.beta_hidden, cfg.emb_dim)
        self.context_drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.emb_dim, cfg.n_outputs)

    def _attention(
        self, x: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns v (B, T, E), alpha (B, T), beta (B, T, E)."""
        x = torch.where(valid[..., None], x, 0.0)  # padding values never enter (NaN-safe)
        v = self.embed_drop(self.embed(x))  # (B, T, E)
        v_reversed = reverse_valid_prefix(v, valid)  # (B, T, E), last valid visit first
        g, _ = self.alpha_gru(v_reversed)  # (B, T, Ha), reversed time
        h, _ = self.beta_gru(v_reversed)  # (B, T, Hb), reversed time
        g, h = reverse_valid_prefix(g, valid), reverse_valid_prefix(h, valid)  # chronological again
        scores = self.alpha_score(g).squeeze(-1)  # (B, T)
        any_valid = valid.any(dim=1, keepdim=True)
        scores = scores.masked_fill(~(valid | ~any_valid), float("-inf"))  # no-visit rows stay finite
        alpha = scores.softmax(dim=-1) * valid.to(scores.dtype)  # (B, T): sums to 1, 0 on padding
        beta = torch.tanh(self.beta_gate(h))  # (B, T, E)
        return v, alpha, beta

    def forward_with_attention(
        self, x: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns logits (B,) or (B, K), alpha (B, T), beta (B, T, E)."""
        v, alpha, beta = self._attention(x, valid)
        context = (alpha[..., None] * beta * v).sum(dim=1)  # (B, E)
        logits = self.out(self.context_drop(context))  # (B, K)
        if self.cfg.n_outputs == 1:
            logits = logits.squeeze(-1)  # (B,)
        return logits, alpha, beta

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x, valid)[0]

    def lab_weights(self, x: torch.Tensor, valid: torch.Tensor, output: int = 0) -> torch.Tensor:
        """alpha_t * w_out . (beta_t * W_emb[:, k]), (B, T, F): what the attention makes of one unit
        of feature k at visit t (logit per unit of x_tk); 0 on padding."""
        _, alpha, beta = self._attention(x, valid)
        w_out = self.out.weight[output]  # (E,)
        per_unit = (beta * w_out) @ self.embed.weight  # (B, T, F): w_out . (beta_t * W_emb[:, k])
        return alpha[..., None] * per_unit  # (B, T, F)

    def variable_contributions(self, x: torch.Tensor, valid: torch.Tensor, output: int = 0) -> torch.Tensor:
        """omega(y, x_tk) = alpha_t * w_out . (beta_t * W_emb[:, k]) * x_tk, (B, T, F).

        In eval mode the contributions plus the output bias sum to the logit of `output`.
        """
        return self.lab_weights(x, valid, output) * torch.where(valid[..., None], x, 0.0)  # (B, T, F)


@register_model("retain", params_schema("RetainParams", RetainConfig, exclude=("n_features",)))
def build_retain(n_features: int, **params: Any) -> Retain:
    return Retain(RetainConfig(n_features=n_features, **params))
