"""The center's side of a run with secure aggregation (SecAgg+), through Flower's legacy workflow.

Flower 1.41's SecAgg+ exists only for the legacy API: a legacy `flwr.server.strategy` strategy in a
`LegacyContext`, run by `DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`. The center then only
ever holds each site's *masked* integer vector and the unmasked weighted sum; `SecureFedAvg` receives
the aggregate (every result carries the same one), casts it back to the model's dtypes and returns it.
Around that, the run keeps the same outputs as the Message-API path: per-round history (train status
from the protocol replies, evaluation through the tracked Message-API strategy and plain evaluate
messages), one checkpoint per round, the summary and the sites' ledgers.

A site without budget declines at the setup stage (an error reply naming its status): it is not in the
round's masking graph, so the sum holds only real updates and the threshold counts only real ones.

`AuthenticatedSecAggPlus` forwards each site's signed SecAgg+ keys with the keys (the sites check them
against their roster: shared/privacy/secagg_auth.py), stops the run before any site trains when a site states
another mask expansion or protocol version, and checks the unmasked sum against the bounds the derived
parameters imply before the strategy sees it: a round that fails is recorded as failed and the run stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import import_module
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.common import FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

import shared.privacy.secagg_masks  # noqa: F401  (full-strength masks; checks the Flower version)
from server.history import RunHistory
from server.strategy import SiteTracking, error_reason, site_status
from shared.config_schema import RunConfig
from shared.errors import InputError
from shared.privacy.reason_codes import as_reason_code
from shared.privacy.secagg_auth import AUTH_RECORD, version_problem
from shared.privacy.secagg_guard import parse_site_decline
from shared.privacy.secagg_params import SecAggParameters, aggregate_problem, derive_secagg_parameters
from shared.privacy.whitelist import SIGNED_KEYS

SITE_NAME_KEY, SITE_STATUS_KEY, SITE_REASON_KEY = "site.name", "site.status", "site.reason"
FIT_METRICS_RECORD = "fitres.metrics"
Checkpoint = Callable[[int, ArrayRecord], Any]
_flower_workflow = import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")


class SecureFedAvg(LegacyFedAvg):
    """Legacy FedAvg for the SecAgg+ workflow: skips sites without budget, takes the securely summed
    aggregate as it is (cast to the model's dtypes) and checkpoints through the central-evaluation hook."""

    def __init__(self, *, tracker: SiteTracking, dtypes: list[np.dtype], params: SecAggParameters, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tracker, self.dtypes, self.params = tracker, dtypes, params
        self.aggregated_rounds: set[int] = set()
        self.rounds_failed: list[int] = []  # rounds the protocol started with >= 2 sites and that gave no aggregate
        self.failure: str | None = None  # why the run stopped early (one line), if it did

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        chosen = super().configure_fit(server_round, parameters, client_manager)
        return [(proxy, ins) for proxy, ins in chosen if proxy.node_id not in self.tracker.exhausted_nodes]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Any]]:
        if not results:
            return None, {}
        aggregate = parameters_to_ndarrays(results[0][1].parameters)  # the workflow put the sum in every result
        cast_back = [np.asarray(a).astype(dtype, copy=False) for a, dtype in zip(aggregate, self.dtypes)]
        self.aggregated_rounds.add(server_round)
        return ndarrays_to_parameters(cast_back), {}


class SecAggPlusWithEarlyDropouts(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, except that a site that declines or drops out before it has sent its key
    shares leaves the round instead of failing it. Flower 1.41 keeps such a node in the sampled set, so
    the unmask stage asks every other site for shares of it that they never received (each fails with a
    KeyError) and then cannot rebuild its key: one site without budget would stop every round."""

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        completed = super().setup_stage(grid, context, state)
        return self._forget_nodes_without_shares(state) if state.nid_to_neighbours else completed

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        super().share_keys_stage(grid, context, state)
        return self._forget_nodes_without_shares(state)

    def _forget_nodes_without_shares(self, state: WorkflowState) -> bool:
        state.sampled_node_ids = set(state.active_node_ids)
        return len(state.sampled_node_ids) >= 2 and self._check_threshold(state)


class SecureAggregationStopped(Exception):
    """The run stops: a mixed-version federation before training, or an unmasked sum outside the bounds."""


class _OutOfBounds(Exception):
    pass


class _GridHook:
    """The grid the workflow talks through, with `on_send(messages)` / `on_reply(replies)` around each exchange."""

    def __init__(self, grid: Grid, on_send: Callable[[list[Message]], None] = lambda m: None,
                 on_reply: Callable[[list[Message]], None] = lambda r: None) -> None:
        self._grid, self._on_send, self._on_reply = grid, on_send, on_reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self._on_send(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._on_reply(replies)
        return replies


class AuthenticatedSecAggPlus(SecAggPlusWithEarlyDropouts):
    """`SecAggPlusWithEarlyDropouts` for sites that sign their SecAgg+ keys:
    - keeps each site's setup-reply `signed_keys` and forwards them with the keys at the share-keys stage
      (record `fedcare_secagg_auth`, node id -> [statement, signature]); the sites verify them;
    - `check_versions`: stops the round at setup, before any site trains, when a site states another mask
      expansion or protocol version than this center (one line naming the site and its version, `failure`);
    - checks the unmasked sum against the bounds the protocol parameters imply before the strategy sees it
      (shared.privacy.secagg_params.aggregate_problem); outside them the round fails (`failure`)."""

    def __init__(self, params: SecAggParameters, *, timeout: float | None = None, check_versions: bool = True) -> None:
        super().__init__(**params.workflow_kwargs(), timeout=timeout)
        self.params, self.check_versions = params, check_versions
        self.signed: dict[int, Any] = {}
        self.willing = 0  # sites that answered setup (did not decline) in the current round
        self.failure: str | None = None  # why the current round failed, when the workflow knows

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        self.signed, self.willing, self.failure = {}, 0, None

        def keep(replies: list[Message]) -> None:
            for reply in replies:
                if not reply.has_error():
                    self.signed[reply.metadata.src_node_id] = reply.content.config_records[RECORD_KEY_CONFIGS].get(SIGNED_KEYS)

        completed = super().setup_stage(_GridHook(grid, on_reply=keep), context, state)
        self.willing = len(state.active_node_ids)
        if self.check_versions and state.active_node_ids:
            problem = version_problem({nid: self.signed.get(nid) for nid in state.active_node_ids})
            if problem is not None:
                self.failure = f"secure aggregation stopped before training: {problem}"
                return False
        return completed

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        def forward(messages: list[Message]) -> None:
            for msg in messages:
                neighbours = [k for k in msg.content.config_records[RECORD_KEY_CONFIGS] if k != Key.STAGE]
                msg.content[AUTH_RECORD] = ConfigRecord({k: self.signed[int(k)] for k in neighbours
                                                         if self.signed.get(int(k)) is not None})

        return super().share_keys_stage(_GridHook(grid, on_send=forward), context, state)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        num_examples = [int(fitres.num_examples) for _, fitres in state.legacy_results]
        original = _flower_workflow.factor_extract

        def checked(parameters: list[np.ndarray]) -> tuple[Any, list[np.ndarray]]:  # Flower calls it on the unmasked sum
            total, values = original(parameters)
            problem = aggregate_problem(self.params, int(total), values, num_examples)
            if problem is not None:
                raise _OutOfBounds(problem)
            return total, values

        _flower_workflow.factor_extract = checked
        try:
            return super().unmask_stage(grid, context, state)
        except _OutOfBounds as err:
            self.failure = f"the unmasked aggregate is outside the protocol's bounds ({err}); the round failed"
            return False
        finally:
            _flower_workflow.factor_extract = original


class ProtocolReplyTracker:
    """Wraps the grid the SecAgg+ workflow talks through and records, per round and site, what each
    protocol reply says: trained (masked update sent, with its whitelisted metrics), declined (no budget)
    or failed (error or no reply, with the stage). It sees masked integers only, like the workflow."""

    def __init__(self, grid: Grid, tracker: SiteTracking, history: RunHistory) -> None:
        self._grid, self.tracker, self.history = grid, tracker, history

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self.tracker._learn_registered_names(self._grid)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for msg in messages:
            configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
            stage = str(configs.get(Key.STAGE, "")) if configs is not None else ""
            self._record(int(msg.metadata.group_id), stage, msg.metadata.dst_node_id, replies)
        return replies

    def _site(self, node: int) -> str:
        return self.tracker.node_sites.get(node, f"node-{node}")

    def _record(self, server_round: int, stage: str, node: int, replies: list[Message]) -> None:
        reply = next((r for r in replies if r.metadata.src_node_id == node), None)
        if reply is None:
            self.history.record_failure(server_round, self._site(node), "train", f"no reply at the SecAgg+ {stage} stage")
        elif reply.has_error():
            declined = parse_site_decline(reply.error.reason)
            if declined is not None:
                claimed, status, reason = declined[0], site_status(declined[1]), as_reason_code(declined[2])
                site = self.tracker.site_for(node, claimed)  # the registered name, never the reply's (deployment)
                self.tracker.node_sites[node] = site
                self.history.record_train(server_round, site, status, reason, {})
                if status == "budget_exhausted":
                    self.tracker.exhausted_nodes.add(node)
            else:
                self.history.record_failure(server_round, self._site(node), "train",
                                            f"SecAgg+ {stage} stage: {error_reason(reply.error)}")
        elif stage == Stage.COLLECT_MASKED_VECTORS and FIT_METRICS_RECORD in reply.content.config_records:
            metrics = dict(reply.content.config_records[FIT_METRICS_RECORD])
            site = self.tracker.site_for(node, str(metrics.pop(SITE_NAME_KEY, self._site(node))))
            status = site_status(metrics.pop(SITE_STATUS_KEY, "trained"))
            reason = as_reason_code(metrics.pop(SITE_REASON_KEY, ""))
            head = str(metrics.pop("site.ledger_head", ""))
            self.tracker.node_sites[node] = site
            self.history.record_train(server_round, site, status, reason,
                                      {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, ledger_head=head)


def _arrays(keys: list[str], ndarrays: list[np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in zip(keys, ndarrays)})


def _evaluate_workflow(tracker: SiteTracking, keys: list[str], timeout: float | None) -> Callable[[Grid, Context], None]:
    """Federated evaluation as in the Message-API path: plain evaluate messages with the global arrays."""

    def evaluate(grid: Grid, context: Context) -> None:
        server_round = int(cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND]))
        arrays = _arrays(keys, context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays())
        messages = list(tracker.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        replies = grid.send_and_receive(messages, timeout=timeout) if messages else []
        tracker.aggregate_evaluate(server_round, replies)

    return evaluate


def check_initial_weights(cfg: RunConfig, params: SecAggParameters, state: dict[str, torch.Tensor]) -> None:
    peak = max((float(t.abs().max()) for t in state.values() if t.numel()), default=0.0)
    if peak > params.weight_bound:
        raise InputError(cfg.source, "secure_aggregation.weight_bound",
                         f"the initial model already has |weight| {peak:.4g} > {params.weight_bound:g}; raise the bound")


def run_secure_federation(grid: Grid, context: Context, cfg: RunConfig, model: torch.nn.Module, tracker: SiteTracking,
                          history: RunHistory, checkpoint: Checkpoint) -> SecureFedAvg:
    """Run all rounds with SecAgg+; returns the legacy strategy (its `aggregated_rounds` say which rounds aggregated)."""
    params = derive_secagg_parameters(cfg)
    state = model.state_dict()
    check_initial_weights(cfg, params, state)
    keys = list(state)
    mu = float(cfg.strategy.params.get("proximal_mu", 0.0))
    n = cfg.strategy.min_sites
    strategy = SecureFedAvg(
        tracker=tracker, dtypes=[t.numpy().dtype for t in state.values()], params=params,
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_evaluate_clients=n, min_available_clients=n,
        initial_parameters=ndarrays_to_parameters([t.numpy() for t in state.values()]),
        on_fit_config_fn=lambda server_round: {"server-round": server_round, "proximal-mu": mu},
        evaluate_fn=lambda server_round, ndarrays, _: checkpoint(server_round, _arrays(keys, ndarrays)),
    )
    timeout = cfg.secure_aggregation.timeout_s or cfg.federation.round_timeout_s
    secagg = AuthenticatedSecAggPlus(params, timeout=timeout)

    def fit_round(fit_grid: Grid, legacy: Context) -> None:
        secagg(ProtocolReplyTracker(fit_grid, tracker, history), legacy)
        server_round = int(cast(int, legacy.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND]))
        if server_round in strategy.aggregated_rounds:
            return
        if secagg.failure is not None:  # a mixed federation or a sum outside the bounds: every later round would too
            strategy.rounds_failed.append(server_round)
            raise SecureAggregationStopped(f"round {server_round}: {secagg.failure}; the run stops")
        if secagg.willing >= 2:
            strategy.rounds_failed.append(server_round)
            history.note(f"round {server_round}: secure aggregation failed (sites refused or dropped out after setup); "
                         "the global model is unchanged")
        else:
            history.note(f"round {server_round}: secure aggregation did not start (fewer than 2 sites took part); "
                         "the global model is unchanged")

    legacy_context = LegacyContext(context, config=ServerConfig(num_rounds=cfg.train.rounds, round_timeout=timeout),
                                   strategy=strategy, client_manager=SimpleClientManager())
    try:
        DefaultWorkflow(fit_workflow=fit_round, evaluate_workflow=_evaluate_workflow(tracker, keys, timeout))(
            grid, legacy_context)
    except SecureAggregationStopped as stop:
        strategy.failure = str(stop)
        history.note(strategy.failure)
    return strategy
