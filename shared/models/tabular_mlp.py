"""A small MLP for tabular rows (e.g. UCI heart disease: 10 clinical variables per patient).

Input: x (B, F) standardised numeric features. Each hidden block is Linear -> LayerNorm -> ReLU ->
Dropout (LayerNorm, not BatchNorm: per-sample gradients under Opacus). Output: logits (B,) for one
output, (B, K) for K > 1 (classes, or K hazards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from shared.models.registry import params_schema, register_model


@dataclass
class TabularMLPConfig:
    n_features: int
    hidden: list[int] = field(default_factory=lambda: [32, 16])
    dropout: float = 0.1
    n_outputs: int = 1


class TabularMLP(nn.Module):
    def __init__(self, cfg: TabularMLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        blocks: list[nn.Module] = []
        width = cfg.n_features
        for size in cfg.hidden:
            blocks += [nn.Linear(width, size), nn.LayerNorm(size), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = size
        self.body = nn.Sequential(*blocks)
        self.out = nn.Linear(width, cfg.n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)  # (B, H)
        logits = self.out(h)  # (B, K)
        return logits.squeeze(-1) if self.cfg.n_outputs == 1 else logits  # (B,) or (B, K)


@register_model("tabular_mlp", params_schema("TabularMLPParams", TabularMLPConfig, exclude=("n_features",)))
def build_tabular_mlp(n_features: int, **params: Any) -> TabularMLP:
    if "hidden" in params:
        params["hidden"] = [int(h) for h in params["hidden"]]
    return TabularMLP(TabularMLPConfig(n_features=n_features, **params))
