"""Site-level (client-level) DP at the coordinating center, and its epsilon per round.

Neighbouring relation: **add or remove one site** (its whole update and its weight). The released object
is each round's global model.

Flower's new-API wrappers (`DifferentialPrivacyServerSideFixedClipping` / `...AdaptiveClipping`) clip
each site's update to an L2 norm C and add Gaussian noise of std `noise_multiplier x C / m` to the
aggregate (m = number of configured sites). Their inner FedAvg divides by the total weight of the sites
that trained, and that denominator depends on which sites trained: adding a site j to a set S moves the
mean by w_j / (W_S + w_j) x (u_j - mean_S), up to **2** x C x w_j / W (u_j opposite to the others' mean),
not C x w_j / W. (The old accounting used the latter: in tests/server/test_site_level_dp.py's example,
one round cost epsilon 41.3, not the 16.4 recorded.)

Fix: a **fixed denominator** (McMahan et al. 2018, "Learning differentially private recurrent language
models", the fixed-denominator estimator). Each site gets a public, bounded weight
w_i = min(n_i, max_site_weight) / max_site_weight in [0, 1] (w_i = 1 when `max_site_weight` is unset:
uniform weights), and the aggregate is g + sum_{i in S} w_i x clip_C(u_i) / m. Adding or removing one
site moves it by w_j x ||clip_C(u_j)|| / m <= C / m, whatever the other sites sent: the sensitivity is
C / m, so Flower's noise std `noise_multiplier x C / m` gives exactly `noise_multiplier` per round.
It is implemented by handing Flower's FedAvg the capped weights and, after Flower clipped the replies,
one "phantom" reply holding the current global model with weight m - sum w_i (`FixedDenominator`: a
weighted mean with denominator m; the phantom's update is zero). Fewer or smaller sites shrink the step
towards the current model; they no longer weaken the guarantee. `tests/server/test_site_level_dp.py`
checks the sensitivity by brute force over every neighbouring pair of site sets. Under
**replace-one-site** the sensitivity is 2 C / m (epsilon as for noise_multiplier / 2); this module
accounts add/remove.

- Only FedAvg/FedProx (a weighted mean) are allowed with site-level DP (shared/config.py): FedAdam/
  FedYogi noise the output of a server optimiser, median/Krum are not means.
- Sampling rate q = 1.0 (every available site is asked each round; no amplification is claimed),
  steps = rounds with an aggregate, delta = privacy.delta.
- Adaptive mode: Flower clips round t at C_t, then updates the norm and noises the aggregate with
  C_{t+1}; the sensitivity is C_t / m, so the effective multiplier is noise_multiplier x C_{t+1} / C_t. Its
  noisy clipped-count query (sensitivity 1: the bits are not centred, std `clipped_count_stddev`) is
  composed as a second Gaussian mechanism rather than folded in by Flower's formula, which assumes
  sensitivity 1/2.
- Epsilon by Opacus's RDP accountant (what sites use) and by dp-accounting (independent) beside it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore.differential_privacy import compute_stdv

from server.history import RunHistory
from shared.privacy.accountant import Mechanism, epsilon_independent, epsilon_opacus

SITE_SAMPLE_RATE = 1.0
WEIGHT_KEY = "num-examples"  # what Flower's FedAvg weights by


def site_weights(num_examples: Sequence[float], max_site_weight: float | None) -> list[float]:
    """The public, bounded aggregation weight of each site: min(n, cap) / cap in [0, 1]; 1 without a cap."""
    if max_site_weight is None:
        return [1.0 for _ in num_examples]
    return [min(max(float(n), 0.0), max_site_weight) / max_site_weight for n in num_examples]


def fixed_denominator_mean(
    current: Sequence[Any], clipped: Sequence[Sequence[Any]], weights: Sequence[float], num_sites: int
) -> list[Any]:
    """g + sum_i w_i (x_i - g) / m: what the phantom-reply FedAvg computes (before noise); one array per layer."""
    return [g + sum(w * (x[k] - g) for w, x in zip(weights, clipped)) / num_sites for k, g in enumerate(current)]


def sensitivity(clipping_norm: float, num_sites: int) -> float:
    """L2 sensitivity of the fixed-denominator mean to adding or removing one site (weight <= 1, update <= C)."""
    return clipping_norm / num_sites


class FixedDenominator:
    """Mixed in front of the FedAvg/FedProx that a site-level DP wrapper wraps: after the wrapper clipped
    the replies, one more "phantom" reply holding the current global model (a zero update) with weight
    m - sum w_i makes FedAvg's weighted mean divide by m, the number of configured sites. Never sent."""

    fixed_denominator: int
    fixed_denominator_base: ArrayRecord

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        missing = self.fixed_denominator - sum(float(m.content["metrics"][WEIGHT_KEY]) for m in replies)
        if replies and missing > 1e-12:
            replies.append(self._phantom(replies[0], missing))
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]

    def _phantom(self, like: Message, weight: float) -> Message:
        # Flower's FedAvg wants the same metric keys in every reply: the first reply's values, its own weight
        metrics = MetricRecord({**dict(like.content["metrics"].items()), WEIGHT_KEY: weight})
        content = RecordDict({"arrays": ArrayRecord(dict(self.fixed_denominator_base.items())), "metrics": metrics})
        meta = like.metadata
        metadata = Metadata(run_id=meta.run_id, message_id="", src_node_id=0, dst_node_id=meta.dst_node_id,
                            reply_to_message_id="", group_id=meta.group_id, created_at=time.time(), ttl=meta.ttl,
                            message_type=meta.message_type)
        return Message(metadata=metadata, content=content)


class SiteLevelDPAccounting:
    """Mixed in front of a Flower DP wrapper: aggregates with a fixed denominator (the number of configured
    sites) and records the site-level epsilon after every aggregate."""

    history: RunHistory
    noise_multiplier: float
    clipping_norm: float
    num_sampled_clients: int
    current_arrays: ArrayRecord
    clipped_count_stddev: float  # adaptive wrappers only

    def _init_site_level_accounting(
        self, history: RunHistory, delta: float, accountant: str, mode: str, max_site_weight: float | None = None
    ) -> None:
        self.history, self.site_dp_delta, self.site_dp_accountant, self.site_dp_mode = history, delta, accountant, mode
        self.max_site_weight = max_site_weight
        self.site_dp_mechanisms: list[Mechanism] = []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [m for m in replies if not m.has_error() and "metrics" in m.content]
        counts = [float(m.content["metrics"].get(WEIGHT_KEY, 0)) for m in replies]
        weights = site_weights(counts, self.max_site_weight)
        m = self.num_sampled_clients
        if len(replies) > m:
            raise RuntimeError(f"{len(replies)} sites replied, but site-level DP was set up for {m}")
        for msg, w in zip(replies, weights):
            msg.content["metrics"][WEIGHT_KEY] = w
        self.strategy.fixed_denominator_base = self.current_arrays  # type: ignore[attr-defined]
        clip_applied = self.clipping_norm  # adaptive mode changes it inside aggregate_train
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is not None and counts:
            self._account_round(server_round, weights, clip_applied)
        return arrays, metrics

    def _account_round(self, server_round: int, weights: list[float], clip_applied: float) -> None:
        noise_std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        effective = noise_std / sensitivity(clip_applied, self.num_sampled_clients)
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
            "neighbouring": "add/remove one site",
            "noise_multiplier": self.noise_multiplier,
            "effective_noise_multiplier": effective,
            "clipping_norm": clip_applied,
            "sensitivity": sensitivity(clip_applied, self.num_sampled_clients),
            "noise_std": noise_std,
            "sites_aggregated": len(weights),
            "site_weights": weights,
            "denominator": self.num_sampled_clients,
            "sample_rate": SITE_SAMPLE_RATE,
            "mechanisms": [m.__dict__ for m in round_mechanisms],
        }
        self.history.record_site_level_dp(server_round, record)
