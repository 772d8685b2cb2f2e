"""Strategy factory (config name -> Flower strategy) with fedcare's site tracking on top.

`SiteTracking` is mixed in front of any Message-API strategy: it reads each reply's site name
and status, records it in the run history, keeps sites that sent no weights (budget exhausted,
refused, failed) out of the aggregation, stops asking a budget-exhausted site to train, and
names sites that did not answer. In deployment the site of a node is the name the center
registered with the node's key, never the name a reply gives; a reply claiming another site's
name is dropped. Of a site's status and reason only known values are stored
(shared/privacy/reason_codes.py): free text a site might send (an exception's message naming a file
and a cell) never reaches the history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fl
from flwr.serverapp.strategy import Result

from server.history import RunHistory
from server.server_optimizer import SERVER_OPTIMIZERS, ServerOptimized, ServerOptimizer
from server.site_level_dp import FixedDenominator, SiteLevelDPAccounting
from shared.config_schema import RunConfig
from shared.privacy.reason_codes import as_reason_code, is_reason_code

SITE_STATUSES = frozenset({"trained", "evaluated", "budget_exhausted", "refused"})
# errors Flower itself makes (the SuperLink, or the SuperNode about its app process): by a fixed name
FLOWER_ERRORS = {ErrorCode.MESSAGE_UNAVAILABLE: "message_unavailable", ErrorCode.REPLY_MESSAGE_UNAVAILABLE: "reply_unavailable",
                 ErrorCode.NODE_UNAVAILABLE: "node_unavailable", ErrorCode.CLIENT_APP_CRASHED: "clientapp_crashed",
                 ErrorCode.INVALID_FAB: "invalid_fab"}


def site_status(value: object) -> str:
    return value if isinstance(value, str) and value in SITE_STATUSES else "failed"


def error_reason(error: Error) -> str:
    """What the center keeps of an error reply: the site's reason code, or the name of a Flower-made
    error; never the error's text (`internal_error` for anything else)."""
    if error.reason and is_reason_code(error.reason):
        return error.reason
    return FLOWER_ERRORS.get(error.code, "internal_error")


def _site_of(msg: Message) -> tuple[str, str, str]:
    site = msg.content["site"] if "site" in msg.content else ConfigRecord()
    return (str(site.get("name", f"node-{msg.metadata.src_node_id}")), site_status(site.get("status", "")),
            as_reason_code(site.get("reason", "")))


class SiteTracking:
    history: RunHistory
    total_rounds: int

    def _init_tracking(self, history: RunHistory, total_rounds: int, round_offset: int = 0,
                       wait_for_nodes_s: float = 3600.0, evaluated_rounds: set[int] | None = None,
                       overlap_phases: bool = False) -> None:
        """`round_offset`: rounds already done before this start (a resumed run). Flower's
        Strategy.start counts from 1; every round number that reaches the clients, the history
        and the checkpoints is shifted by it. `wait_for_nodes_s`: how long a round waits for
        enough connected sites before it is skipped (Flower itself would wait forever).
        `evaluated_rounds`: the global rounds whose model the sites are asked to evaluate (None: every
        round); in the others no evaluate message is sent (it would cost a message round trip per site
        for an empty reply). `overlap_phases`: send a round's evaluation and the next round's training together
        (`start`), on a Grid whose sites answer in order (`overlaps_phases`)."""
        self.history, self.total_rounds, self.round_offset = history, total_rounds, round_offset
        self.overlap_phases = overlap_phases
        # (round, its aggregated model): writes the round's checkpoint, its evaluation still out, before the next
        # round's training is sent (run_federation sets it; without it `start` does not overlap)
        self.checkpoint_before_evaluation: Callable[[int, ArrayRecord], None] | None = None
        self.wait_for_nodes_s = wait_for_nodes_s
        self.evaluated_rounds = evaluated_rounds
        self.exhausted_nodes: set[int] = set()
        self.node_sites: dict[int, str] = {}  # learned from replies
        self.registered_names: dict[int, str] = {}  # deployment: the name the center registered with the node's key
        # the phase's requests; once sent, each one's metadata holds the id the Grid gave it, which a reply the
        # SuperLink makes (node unavailable, reply expired) names instead of a site
        self._sent: dict[str, list[Message]] = {"train": [], "evaluate": []}

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Flower's `Strategy.start`; with `overlap_phases` on a Grid that sends and receives separately
        (server.prompt_grid.PromptGrid) whose sites answer their requests one at a time in the order sent
        (`sites_answer_in_order`), round r's evaluate requests and round r+1's train requests are sent together, in
        that order, as soon as round r's model is aggregated. A site then evaluates round r's model and finds
        round r+1's request already there instead of waiting for its evaluation reply to travel to the center
        and the next request back (a deployment round paid two such trips, issue 23). What each site computes,
        and the order in which the center aggregates and records it, are those of Flower's loop. Round r's model
        is checkpointed (`checkpoint_before_evaluation`) before round r+1's training is sent with round r's
        evaluation: a center that dies while the evaluations are out resumes from round r, the model the sites
        trained round r+1 on (a resume from round r-1 would aggregate round r again, perhaps from other sites, and
        the sites would refuse round r+1). A round without evaluation is checkpointed as in Flower's loop."""
        kwargs = dict(num_rounds=num_rounds, timeout=timeout, train_config=train_config,
                      evaluate_config=evaluate_config, evaluate_fn=evaluate_fn)
        if not (getattr(self, "overlap_phases", False) and getattr(self, "checkpoint_before_evaluation", None) is not None
                and getattr(grid, "sites_answer_in_order", False)):
            return super().start(grid=grid, initial_arrays=initial_arrays, **kwargs)  # type: ignore[misc]
        return self._overlapped_start(grid, initial_arrays, **kwargs)

    def _overlapped_start(self, grid: Any, initial_arrays: ArrayRecord, num_rounds: int, timeout: float,
                          train_config: ConfigRecord | None, evaluate_config: ConfigRecord | None,
                          evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None) -> Result:
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result, arrays = Result(), initial_arrays
        if evaluate_fn and (res := evaluate_fn(0, initial_arrays)) is not None:
            result.evaluate_metrics_serverapp[0] = res
        train_ids = grid.send(self.configure_train(1, arrays, train_config, grid))
        for current_round in range(1, num_rounds + 1):
            agg_arrays, agg_train_metrics = self.aggregate_train(current_round, grid.receive(train_ids, timeout=timeout))
            if agg_arrays is not None:
                result.arrays = arrays = agg_arrays
            if agg_train_metrics is not None:
                result.train_metrics_clientapp[current_round] = agg_train_metrics
            evaluate_ids = grid.send(self.configure_evaluate(current_round, arrays, evaluate_config, grid))
            train_ids = []
            if current_round < num_rounds:
                if evaluate_ids:
                    self.checkpoint_before_evaluation(current_round, arrays)  # type: ignore[misc]
                train_ids = grid.send(self.configure_train(current_round + 1, arrays, train_config, grid))
            agg_evaluate_metrics = self.aggregate_evaluate(current_round, grid.receive(evaluate_ids, timeout=timeout))
            if agg_evaluate_metrics is not None:
                result.evaluate_metrics_clientapp[current_round] = agg_evaluate_metrics
            if evaluate_fn and (res := evaluate_fn(current_round, arrays)) is not None:
                result.evaluate_metrics_serverapp[current_round] = res
        return result

    def _learn_registered_names(self, grid: Grid) -> None:
        try:
            nodes = list(grid.get_nodes())
        except (AttributeError, NotImplementedError):
            return
        for node in nodes:
            if getattr(node, "name", ""):
                self.registered_names[node.node_id] = node.name
                self.node_sites[node.node_id] = node.name

    def site_for(self, node: int, claimed: str) -> str:
        """The name a node's reply is recorded under. Deployment: the name the center registered with the
        node's key (a node without one is `node-<id>`), never the reply's claim; simulation (no
        registered names): the claim."""
        registered = self.registered_names.get(node)
        if registered is not None:
            return registered
        return f"node-{node}" if self.registered_names else claimed

    def _site_name(self, node: int) -> str:
        return self.node_sites.get(node, f"node-{node}")

    def _min_nodes(self, phase_key: str) -> int:
        # a site-level DP wrapper keeps the node minimums on the strategy it wraps
        inner = getattr(self, "strategy", self)
        return max(getattr(inner, "min_available_nodes", 1), getattr(inner, phase_key, 1))

    def _enough_nodes(self, grid: Grid, server_round: int, phase: str, needed: int) -> bool:
        deadline = time.time() + self.wait_for_nodes_s
        while (online := len(list(grid.get_node_ids()))) < needed:
            if time.time() > deadline:
                self.history.note(f"round {server_round}: {phase} skipped: {online} sites connected, {needed} needed")
                return False
            time.sleep(1.0)
        return True

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._learn_registered_names(grid)
        self._sent["train"] = []
        needed = self._min_nodes("min_train_nodes")
        if not self._enough_nodes(grid, server_round + self.round_offset, "training", needed):
            return []
        msgs = [m for m in super().configure_train(server_round + self.round_offset, arrays, config, grid)  # type: ignore[misc]
                if m.metadata.dst_node_id not in self.exhausted_nodes]
        self._sent["train"] = msgs
        return msgs

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._sent["evaluate"] = []
        if self.evaluated_rounds is not None and server_round + self.round_offset not in self.evaluated_rounds:
            return []  # before any call to the SuperLink: a skipped round costs nothing
        self._learn_registered_names(grid)
        needed = self._min_nodes("min_evaluate_nodes")
        if not self._enough_nodes(grid, server_round + self.round_offset, "evaluation", needed):
            return []
        msgs = list(super().configure_evaluate(server_round + self.round_offset, arrays, config, grid))  # type: ignore[misc]
        self._sent["evaluate"] = msgs
        return msgs

    def _node_of(self, phase: str, msg: Message) -> int:
        """The node a reply is about: error replies made by the SuperLink (node unavailable,
        reply expired) come from the SuperLink itself, so look up the message they answer."""
        for sent in self._sent[phase]:
            if sent.metadata.message_id == msg.metadata.reply_to_message_id:
                return sent.metadata.dst_node_id
        return msg.metadata.src_node_id

    def _usable_replies(self, server_round: int, phase: str, replies: list[Message]) -> list[tuple[Message, str]]:
        """Replies with content, each with its site name; failures and silent sites go to the history."""
        answered = {self._node_of(phase, m) for m in replies}
        for node in sorted({m.metadata.dst_node_id for m in self._sent[phase]} - answered):
            self.history.record_failure(server_round, self._site_name(node), phase, "no reply (site offline or timed out)")
        usable = []
        for msg in replies:
            node = self._node_of(phase, msg)
            if msg.has_error():
                self.history.record_failure(server_round, self._site_name(node), phase, error_reason(msg.error))
                continue
            claimed, _, _ = _site_of(msg)
            site = self.site_for(node, claimed)
            if claimed != site:
                claim = f"reply names site {claimed!r}, but the node's key is registered as {site!r}"
                self.history.record_failure(server_round, site, phase, claim)
                continue
            self.node_sites[node] = site
            usable.append((msg, site))
        return usable

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        usable = []
        for msg, site in self._usable_replies(server_round, "train", list(replies)):
            _, status, reason = _site_of(msg)
            metrics = dict(msg.content["metrics"]) if "metrics" in msg.content else {}
            head = str(msg.content["site"].get("ledger_head", "")) if "site" in msg.content else ""
            self.history.record_train(server_round, site, status, reason, metrics, ledger_head=head)
            if status == "trained" and "arrays" in msg.content:
                usable.append(msg)
            elif status == "budget_exhausted":
                self.exhausted_nodes.add(self._node_of("train", msg))
        if not usable:
            self.history.note(f"round {server_round}: no site trained; the global model is unchanged")
            return None, None
        return super().aggregate_train(server_round, usable)  # type: ignore[misc]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        usable = []
        for msg, site in self._usable_replies(server_round, "evaluate", list(replies)):
            _, status, reason = _site_of(msg)
            if status == "refused":
                self.history.note(f"round {server_round}: {site} refused to evaluate ({reason})")
                continue
            self.history.record_evaluate(server_round, site, dict(msg.content["metrics"]))
            usable.append(msg)
        self.history.publish_round(server_round, self.total_rounds)
        # Sites may report different keys (a calibration bin is sent only with >= 10 patients), which
        # Flower's aggregation refuses; the history's size-weighted means are the run's numbers anyway.
        weighted = {m: self.history.weighted(server_round, m) for m in self.history.weighted_metrics()}
        return MetricRecord({m: v for m, v in weighted.items() if v is not None}) if usable else None


_BASES: dict[str, type] = {
    "fedavg": fl.FedAvg,
    "fedprox": fl.FedProx,
    "fedmedian": fl.FedMedian,
    "trimmed_mean": fl.FedTrimmedAvg,
    "krum": fl.Krum,
}


def make_strategy(cfg: RunConfig, history: RunHistory, round_offset: int = 0) -> fl.Strategy:
    """The configured strategy with site tracking in front; with site-level DP, Flower's server-side DP
    wrapper sits between the tracking (which keeps replies without weights out) and the strategy.
    `round_offset`: rounds already done (a resumed run)."""
    base = _BASES.get(cfg.strategy.name, fl.FedAvg)
    n = cfg.strategy.min_sites
    kwargs: dict[str, Any] = dict(
        fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n
    )
    kwargs.update(cfg.strategy.params)
    dp = cfg.privacy.site_level_dp
    if cfg.strategy.name in SERVER_OPTIMIZERS:  # FedAvg's weighted mean, then the center's optimiser step
        sc = cfg.strategy
        strategy = type(f"Tracked{sc.name}", (SiteTracking, ServerOptimized, fl.FedAvg), {})(**kwargs)
        strategy.server_optimizer = ServerOptimizer.create(sc.name, sc.server_lr, sc.server_momentum, sc.server_tau,
                                                           sc.server_warmup_rounds)
    elif not dp.enabled:
        strategy = type(f"Tracked{base.__name__}", (SiteTracking, base), {})(**kwargs)
    else:
        inner = type(f"FixedDenominator{base.__name__}", (FixedDenominator, base), {})(**kwargs)
        inner.fixed_denominator = len(cfg.data.sites)
        strategy = _site_level_dp_strategy(cfg, inner)
        strategy._init_site_level_accounting(history, cfg.privacy.delta, cfg.privacy.accountant, dp.mode,
                                            dp.max_site_weight)
    strategy._init_tracking(history, cfg.total_rounds, round_offset, cfg.federation.round_timeout_s,
                            evaluated_rounds(cfg), overlap_phases=overlaps_phases(cfg))
    return strategy


def overlaps_phases(cfg: RunConfig) -> bool:
    """Whether the center may send round r+1's training with round r's evaluation (SiteTracking.start, on a Grid
    whose sites answer in order): only when aggregating the same replies again gives the same model. A center
    that resumes from an older checkpoint than round r's (round r's did not load) repeats round r, and each site
    answers the repeated round r+1 with its saved update only if the new global model is the one it trained on;
    the center's site-level DP noise and a server optimiser's state (not in the checkpoint) would change that
    model, and the sites would refuse the repeated round."""
    return not cfg.privacy.site_level_dp.enabled and cfg.strategy.name not in SERVER_OPTIMIZERS


def evaluated_rounds(cfg: RunConfig) -> set[int] | None:
    """The rounds the center asks for an evaluation: with DP at every site, the rounds in which sites release
    one (`privacy.evaluation.rounds`; in the others a DP site answers with nothing); else every round."""
    if all(cfg.dp_enabled(site) for site in cfg.data.sites):
        return set(cfg.evaluation_rounds())
    return None


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
