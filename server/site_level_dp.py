"""Site-level (client-level) DP at the coordinating center, and its epsilon per round.

Flower's new-API wrappers (`DifferentialPrivacyServerSideFixedClipping` / `...AdaptiveClipping`) clip
each site's update to an L2 norm C and add Gaussian noise of std `noise_multiplier x C / m` to the
aggregate (m = number of sites the wrapper was told are sampled). Their own accountant only covers
uniform FedAvg with equal weights, so `SiteLevelDPAccounting` accounts for what really happened:

- Mechanism per round: one Gaussian mechanism on the weighted mean of the trained sites' clipped
  updates (add/remove one site). One site moves that mean by at most C x max_i w_i / sum_i w_i (the
  weights, num-examples, are public to the center), so the noise multiplier the accountant sees is
  `noise_std / (C x max w / sum w)` = noise_multiplier x sum w / (m x max w) <= noise_multiplier: fewer or
  unequal sites weaken the guarantee, and the record says by how much.
- Sampling rate q = 1.0 (every available site is asked each round; no amplification is claimed),
  steps = rounds with an aggregate, delta = privacy.delta.
- Adaptive mode: Flower clips round t at C_t, then updates the norm and noises the aggregate with
  C_{t+1}; the sensitivity is C_t, so the effective multiplier uses both. Its noisy clipped-count query
  (sensitivity 1: the bits are not centred, std `clipped_count_stddev`) is composed as a second
  Gaussian mechanism rather than folded in by Flower's formula, which assumes sensitivity 1/2.
- Epsilon by Opacus's RDP accountant (what sites use) and by dp-accounting (independent) beside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.supercore.differential_privacy import compute_stdv

from server.history import RunHistory
from shared.privacy.accountant import Mechanism, epsilon_independent, epsilon_opacus

SITE_SAMPLE_RATE = 1.0


class SiteLevelDPAccounting:
    """Mixed in front of a Flower DP wrapper; records the site-level epsilon after every aggregate."""

    history: RunHistory
    noise_multiplier: float
    clipping_norm: float
    num_sampled_clients: int
    clipped_count_stddev: float  # adaptive wrappers only

    def _init_site_level_accounting(self, history: RunHistory, delta: float, accountant: str, mode: str) -> None:
        self.history, self.site_dp_delta, self.site_dp_accountant, self.site_dp_mode = history, delta, accountant, mode
        self.site_dp_mechanisms: list[Mechanism] = []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        weights = [float(m.content["metrics"].get("num-examples", 0)) for m in replies if "metrics" in m.content]
        clip_applied = self.clipping_norm  # adaptive mode changes it inside aggregate_train
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is not None and weights and sum(weights) > 0:
            self._account_round(server_round, weights, clip_applied)
        return arrays, metrics

    def _account_round(self, server_round: int, weights: list[float], clip_applied: float) -> None:
        noise_std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        sensitivity = clip_applied * max(weights) / sum(weights)
        effective = noise_std / sensitivity
        round_mechanisms = [Mechanism(effective, SITE_SAMPLE_RATE, 1)]
        if self.site_dp_mode == "adaptive":
            round_mechanisms.append(Mechanism(float(self.clipped_count_stddev), SITE_SAMPLE_RATE, 1))
        self.site_dp_mechanisms.extend(round_mechanisms)
        record: dict[str, Any] = {
            "epsilon": epsilon_opacus(self.site_dp_mechanisms, self.site_dp_delta, self.site_dp_accountant),
            "epsilon_independent": epsilon_independent(self.site_dp_mechanisms, self.site_dp_delta, self.site_dp_accountant),
            "delta": self.site_dp_delta,
            "accountant": self.site_dp_accountant,
            "mode": self.site_dp_mode,
            "noise_multiplier": self.noise_multiplier,
            "effective_noise_multiplier": effective,
            "clipping_norm": clip_applied,
            "noise_std": noise_std,
            "sites_aggregated": len(weights),
            "sample_rate": SITE_SAMPLE_RATE,
            "mechanisms": [m.__dict__ for m in round_mechanisms],
        }
        self.history.record_site_level_dp(server_round, record)
