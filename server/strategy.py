"""Strategy factory (config name -> Flower strategy) with fedcare's site tracking on top.

`SiteTracking` is mixed in front of any Message-API strategy: it reads each reply's site name
and status, records it in the run history, keeps sites that sent no weights (budget exhausted,
refused, failed) out of the aggregation, stops asking a budget-exhausted site to train, and
names sites that did not answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fl

from server.history import RunHistory
from server.site_level_dp import SiteLevelDPAccounting
from shared.config import RunConfig


def _site_of(msg: Message) -> tuple[str, str, str]:
    site = msg.content["site"] if "site" in msg.content else ConfigRecord()
    return str(site.get("name", f"node-{msg.metadata.src_node_id}")), str(site.get("status", "")), str(site.get("reason", ""))


class SiteTracking:
    history: RunHistory
    total_rounds: int

    def _init_tracking(self, history: RunHistory, total_rounds: int) -> None:
        self.history, self.total_rounds = history, total_rounds
        self.exhausted_nodes: set[int] = set()
        self.node_sites: dict[int, str] = {}
        self._asked: dict[str, set[int]] = {"train": set(), "evaluate": set()}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        msgs = [m for m in super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]
                if m.metadata.dst_node_id not in self.exhausted_nodes]
        self._asked["train"] = {m.metadata.dst_node_id for m in msgs}
        return msgs

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        msgs = list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]
        self._asked["evaluate"] = {m.metadata.dst_node_id for m in msgs}
        return msgs

    def _note_missing(self, server_round: int, phase: str, replies: list[Message]) -> None:
        answered = {m.metadata.src_node_id for m in replies}
        for node in sorted(self._asked[phase] - answered):
            site = self.node_sites.get(node, f"node-{node}")
            self.history.record_failure(server_round, site, phase, "no reply (site offline or timed out)")

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._note_missing(server_round, "train", replies)
        usable = []
        for msg in replies:
            if msg.has_error():
                site = self.node_sites.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")
                self.history.record_failure(server_round, site, "train", msg.error.reason)
                continue
            site, status, reason = _site_of(msg)
            self.node_sites[msg.metadata.src_node_id] = site
            metrics = dict(msg.content["metrics"]) if "metrics" in msg.content else {}
            self.history.record_train(server_round, site, status, reason, metrics)
            if status == "trained" and "arrays" in msg.content:
                usable.append(msg)
            elif status == "budget_exhausted":
                self.exhausted_nodes.add(msg.metadata.src_node_id)
        if not usable:
            self.history.note(f"round {server_round}: no site trained; the global model is unchanged")
            return None, None
        return super().aggregate_train(server_round, usable)  # type: ignore[misc]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self._note_missing(server_round, "evaluate", replies)
        usable = []
        for msg in replies:
            if msg.has_error():
                site = self.node_sites.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")
                self.history.record_failure(server_round, site, "evaluate", msg.error.reason)
                continue
            site, status, reason = _site_of(msg)
            self.node_sites[msg.metadata.src_node_id] = site
            if status == "refused":
                self.history.note(f"round {server_round}: {site} refused to evaluate ({reason})")
                continue
            self.history.record_evaluate(server_round, site, dict(msg.content["metrics"]))
            usable.append(msg)
        self.history.print_round(server_round, self.total_rounds)
        self.history.save()
        # Sites may report different keys (a calibration bin is sent only with >= 10 patients), which
        # Flower's aggregation refuses; the history's size-weighted means are the run's numbers anyway.
        weighted = {m: self.history.weighted(server_round, m) for m in self.history.weighted_metrics()}
        return MetricRecord({m: v for m, v in weighted.items() if v is not None}) if usable else None


_BASES: dict[str, type] = {
    "fedavg": fl.FedAvg,
    "fedprox": fl.FedProx,
    "fedadam": fl.FedAdam,
    "fedyogi": fl.FedYogi,
    "fedmedian": fl.FedMedian,
    "trimmed_mean": fl.FedTrimmedAvg,
    "krum": fl.Krum,
}


def make_strategy(cfg: RunConfig, history: RunHistory) -> fl.Strategy:
    """The configured strategy with site tracking in front; with site-level DP, Flower's server-side DP
    wrapper sits between the tracking (which keeps replies without weights out) and the strategy."""
    base = _BASES[cfg.strategy.name]
    n = cfg.strategy.min_sites
    kwargs: dict[str, Any] = dict(
        fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n
    )
    kwargs.update(cfg.strategy.params)
    dp = cfg.privacy.site_level_dp
    if not dp.enabled:
        strategy = type(f"Tracked{base.__name__}", (SiteTracking, base), {})(**kwargs)
    else:
        strategy = _site_level_dp_strategy(cfg, base(**kwargs))
        strategy._init_site_level_accounting(history, cfg.privacy.delta, cfg.privacy.accountant, dp.mode)
    strategy._init_tracking(history, cfg.train.rounds)
    return strategy


def _site_level_dp_strategy(cfg: RunConfig, inner: fl.Strategy) -> Any:
    dp, sites = cfg.privacy.site_level_dp, len(cfg.data.sites)
    if dp.mode == "fixed":
        wrapper: type = fl.DifferentialPrivacyServerSideFixedClipping
        args: dict[str, Any] = dict(
            noise_multiplier=dp.noise_multiplier, clipping_norm=dp.clipping_norm, num_sampled_clients=sites
        )
    else:
        wrapper = fl.DifferentialPrivacyServerSideAdaptiveClipping
        args = dict(
            noise_multiplier=dp.noise_multiplier, num_sampled_clients=sites, initial_clipping_norm=dp.clipping_norm,
            target_clipped_quantile=dp.target_clipped_quantile, clip_norm_lr=dp.clip_norm_lr,
            clipped_count_stddev=dp.clipped_count_stddev,
        )
    cls = type(f"Tracked{wrapper.__name__}", (SiteTracking, SiteLevelDPAccounting, wrapper), {})
    return cls(inner, **args)
