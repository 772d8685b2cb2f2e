"""A linear model for tabular rows: logistic regression (binary, with an intercept) or the linear
predictor of a Cox model (survival, no intercept: the baseline hazard absorbs any constant, and an
intercept would only take a random walk under DP noise since the partial likelihood ignores it).

Input: x (B, F) standardised / one-hot covariates. Output: (B,) logits or log relative hazards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from shared.models.registry import params_schema, register_model


@dataclass
class LinearModelConfig:
    n_features: int
    bias: bool = True


class LinearModel(nn.Module):
    def __init__(self, cfg: LinearModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out = nn.Linear(cfg.n_features, 1, bias=cfg.bias)
        nn.init.zeros_(self.out.weight)  # start from "no covariate matters" (a convex model: any start works)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x).squeeze(-1)  # (B,)


@register_model("linear", params_schema("LinearParams", LinearModelConfig, exclude=("n_features",)))
def build_linear(n_features: int, bias: bool = True) -> LinearModel:
    return LinearModel(LinearModelConfig(n_features=n_features, bias=bool(bias)))
