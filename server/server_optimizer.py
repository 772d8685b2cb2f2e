"""Server-side optimisers: the center treats Δ_t = FedAvg(site weights) - x_t as a pseudo-gradient step and
applies its own optimiser to it (Reddi et al. 2021, "Adaptive Federated Optimization"; Hsu et al. 2019 for
FedAvgM). Pure post-processing of the aggregate: no privacy cost, nothing else leaves the center.

- ``fedavgm``: m_t = μ m_{t-1} + Δ_t,  x_{t+1} = x_t + η m_t.
- ``fedadam``: m_t = β1 m + (1-β1) Δ_t,  v_t = β2 v + (1-β2) Δ_t²,  x_{t+1} = x_t + η m̂_t / (sqrt(v̂_t) + τ)
  (bias-corrected m̂, v̂).
- ``fedyogi``: as fedadam with v_t = v - (1-β2) Δ_t² sign(v - Δ_t²) (v starts at the first Δ²).

Why the defaults differ from the papers': with DP-SGD at the sites every coordinate of Δ_t carries Gaussian
noise, and Adam's per-coordinate normalisation turns a coordinate that is pure noise into a full-size step
(at τ -> 0 the first step is η·sign(Δ)). A τ at the scale of a typical update keeps small, noisy coordinates
on a FedAvg-like step η/τ·Δ, and warm-up rounds (plain FedAvg steps while m and v gather samples) keep
the first adaptive steps from resting on a v of one or two noisy samples. The defaults (`DEFAULTS`) were
chosen with benchmarks/server_optimizers.py: at epsilon 8 they match FedAvg (Flower's FedAdam defaults lose
~0.01 AUROC on heart disease), none beats it beyond seed noise; FedAvg stays the default strategy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SERVER_OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi")
# name -> (server_lr, server_momentum (μ for fedavgm, β1 for adam/yogi), tau, warmup_rounds)
DEFAULTS: dict[str, tuple[float, float, float, int]] = {
    "fedavgm": (0.5, 0.5, 0.0, 0),  # lr = 1 - momentum: FedAvg's long-run step size, the noise averaged over rounds
    # tau = lr: a coordinate whose update is small against tau (noise, mostly) gets about FedAvg's step, one with
    # large consistent updates at most ~lr per round
    "fedadam": (0.3, 0.9, 0.3, 3),
    "fedyogi": (0.3, 0.9, 0.3, 3),
}
BETA_2 = 0.99


@dataclass
class ServerOptimizer:
    name: str
    lr: float
    momentum: float
    tau: float = 0.0
    warmup_rounds: int = 0
    beta_2: float = BETA_2
    steps: int = 0
    _m: dict[str, np.ndarray] = field(default_factory=dict)
    _v: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def create(cls, name: str, lr: float | None = None, momentum: float | None = None, tau: float | None = None,
               warmup_rounds: int | None = None) -> ServerOptimizer:
        """`name` with its DEFAULTS for every setting left None."""
        if name not in SERVER_OPTIMIZERS:
            raise ValueError(f"unknown server optimiser {name!r}; one of {', '.join(SERVER_OPTIMIZERS)}")
        d_lr, d_mom, d_tau, d_warm = DEFAULTS[name]
        return cls(name, d_lr if lr is None else lr, d_mom if momentum is None else momentum,
                   d_tau if tau is None else tau, d_warm if warmup_rounds is None else warmup_rounds)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "momentum": self.momentum, "tau": self.tau,
                "warmup_rounds": self.warmup_rounds, "beta_2": self.beta_2}

    def step(self, current: dict[str, np.ndarray], averaged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The next global weights from the current ones and the sites' weighted mean. Non-float arrays
        (counters) take the mean's value."""
        self.steps += 1
        t = self.steps
        warming_up = t <= self.warmup_rounds  # plain FedAvg steps while m and v gather their first samples
        out = {}
        for key, new in averaged.items():
            old = current[key]
            if not np.issubdtype(np.asarray(new).dtype, np.floating):
                out[key] = new
                continue
            delta = np.asarray(new, dtype=np.float64) - np.asarray(old, dtype=np.float64)
            if self.name == "fedavgm":
                m = self._m[key] = self.momentum * self._m.get(key, np.zeros_like(delta)) + delta
                update = delta if warming_up else self.lr * m
            else:
                m = self._m[key] = self.momentum * self._m.get(key, np.zeros_like(delta)) + (1 - self.momentum) * delta
                sq = delta**2
                if self.name == "fedadam":
                    v = self._v[key] = self.beta_2 * self._v.get(key, np.zeros_like(delta)) + (1 - self.beta_2) * sq
                    v_hat = v / (1 - self.beta_2**t)
                else:  # yogi: additive, sign-controlled change of v; starts at the first squared update
                    prev = self._v.get(key, sq)
                    v = self._v[key] = prev - (1 - self.beta_2) * sq * np.sign(prev - sq)
                    v_hat = v
                m_hat = m / (1 - self.momentum**t) if self.momentum < 1 else m
                update = delta if warming_up else self.lr * m_hat / (np.sqrt(np.maximum(v_hat, 0.0)) + self.tau)
            out[key] = (np.asarray(old, dtype=np.float64) + update).astype(np.asarray(old).dtype)
        return out


class ServerOptimized:
    """Mixed in front of Flower's FedAvg: the aggregate becomes the server optimiser's step from the
    weights this round was sent (kept by `configure_train`)."""

    server_optimizer: ServerOptimizer
    _sent_arrays: dict[str, np.ndarray] | None = None

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Any:
        self._sent_arrays = {k: a.numpy() for k, a in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(self, server_round: int, replies: Any) -> tuple[Any, Any]:
        from flwr.app import Array, ArrayRecord

        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is None or self._sent_arrays is None:
            return arrays, metrics
        stepped = self.server_optimizer.step(self._sent_arrays, {k: a.numpy() for k, a in arrays.items()})
        return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in stepped.items()}), metrics
