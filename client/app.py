"""Flower ClientApp of a hospital: a thin shell around client.site_worker.SiteWorker.

The run's resolved config travels in the run config (key `fedcare-config`); the site's own
settings come from its node config (simulation: the partition id picks the site) and win.
Every reply passes the outgoing-message guard, so only whitelisted content leaves the site; every
message in and reply out is written to the site's security log; a run the site policy does not approve,
or that weakens its privacy floor, gets a refusal ({"refused": 1} and the reason) instead of weights.

With `secure_aggregation.enabled` the train messages are Flower's SecAgg+ stages (legacy format):
the protocol guard checks each one, a site without budget declines at setup, and Flower's
`secaggplus_mod` masks the update the train handler returns as a legacy fit result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from client.security_log_mod import make_security_log_mod
from client.site_settings import site_settings_from_context
from client.site_worker import RoundOutcome, SiteWorker
from shared.config import TRAIN_PHASE, config_from_json
from shared.privacy.whitelist import check_outgoing, outgoing_guard_mod

_WORKERS: dict[tuple[str, str], SiteWorker] = {}  # one per (run, site) in this process: data loads once
LEGACY_FIT_PARAMETERS = "fitins.parameters"


class RoundDeclined(Exception):
    """This site sends no update this round (no budget, no data, or an update SecAgg+ would clip)."""

    def __init__(self, outcome: RoundOutcome) -> None:
        super().__init__(f"{outcome.status}: {outcome.reason}")
        self.outcome = outcome


def _worker(context: Context, bound_run_config: dict[str, Any] | None) -> SiteWorker:
    rc = bound_run_config or dict(context.run_config)
    settings = site_settings_from_context(context, rc)
    key = (str(rc["run-id"]), settings.site)
    if key not in _WORKERS:
        torch.set_num_threads(max(1, int(float(rc.get("cpus-per-site", 1)))))
        _WORKERS[key] = SiteWorker(config_from_json(str(rc["fedcare-config"])), settings, str(rc["run-id"]))
    return _WORKERS[key]


def _reply(msg: Message, worker: SiteWorker, outcome: RoundOutcome) -> Message:
    return Message(content=_content(worker, outcome), reply_to=msg)


def _content(worker: SiteWorker, outcome: RoundOutcome) -> RecordDict:
    content = RecordDict(
        {
            "metrics": MetricRecord(outcome.metrics),
            "site": ConfigRecord({"name": worker.settings.site, "status": outcome.status, "reason": outcome.reason}),
        }
    )
    if outcome.arrays is not None:
        content["arrays"] = ArrayRecord(outcome.arrays)
    return content


def _secure_train(msg: Message, worker: SiteWorker) -> Message:
    """SecAgg+ collect stage: train, check, and answer with a legacy fit result for `secaggplus_mod` to mask."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    assert worker.secagg is not None
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    keys = list(worker.task.build_model().state_dict())
    global_state = {k: torch.from_numpy(a.copy()) for k, a in zip(keys, parameters_to_ndarrays(fitins.parameters))}
    outcome = worker.train_round(
        int(fitins.config["server-round"]), global_state, proximal_mu=float(fitins.config.get("proximal-mu", 0.0))
    )
    if outcome.arrays is None:
        raise RoundDeclined(outcome)
    check_outgoing(_content(worker, outcome), set(keys))  # the same whitelist as a plain reply
    # float64: Flower quantises in the dtype it is given, and float32 cannot hold ~1e9 quantisation levels
    arrays = [outcome.arrays[k].numpy().astype(np.float64) for k in keys]
    num_examples = int(outcome.metrics["num-examples"])
    problem = worker.secagg.update_problem(arrays, num_examples)
    if problem is not None:
        raise RoundDeclined(RoundOutcome("refused", f"not sent: {problem}"))
    site = {"site.name": worker.settings.site, "site.status": outcome.status, "site.reason": outcome.reason}
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples, {**outcome.metrics, **site})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


def _secure_aggregation_mod(bound_run_config: dict[str, Any] | None):  # noqa: ANN202 (a Flower mod)
    """In a run with secure aggregation: the protocol guard, the budget check at setup, then Flower's SecAgg+ mod."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        worker = _worker(context, bound_run_config)
        if worker.secagg is None:
            return call_next(msg, context)
        from flwr.client.mod import secaggplus_mod
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

        import shared.privacy.secagg_masks  # noqa: F401  (full-strength masks; checks the Flower version)
        from shared.privacy.secagg_guard import secagg_guard, site_decline_reason

        def decline(reply_to: Message, outcome: RoundOutcome) -> Message:
            reason = site_decline_reason(worker.settings.site, outcome.status, outcome.reason)
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=reply_to)

        def budget_then_secaggplus(m: Message, c: Context) -> Message:
            configs = m.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is None:  # not a SecAgg+ stage (evaluation): the guard let it through
                return call_next(m, c)
            if configs.get(Key.STAGE) == Stage.SETUP:
                server_round = int(m.metadata.group_id)
                policy_refusal = worker.policy_refusal()
                if policy_refusal is not None:
                    return decline(m, worker.refuse("train", server_round, policy_refusal))
                refusal = worker.round_refusal(server_round)
                if refusal is not None:
                    return decline(m, refusal)
            try:
                return secaggplus_mod(m, c, call_next)
            except RoundDeclined as declined:
                return decline(m, declined.outcome)

        return secagg_guard(msg, context, budget_then_secaggplus, security_log=worker.security_log,
                            expected=worker.secagg)

    return mod


def build_client_app(bound_run_config: dict[str, Any] | None = None) -> ClientApp:
    """`bound_run_config` is set by `fedcare simulate` (the simulation API has no run config)."""
    security_log_mod = make_security_log_mod(lambda context: _worker(context, bound_run_config).security_log)
    # the log sees what arrived and the reply the guard let out; SecAgg+ masks inside the guard
    app = ClientApp(mods=[security_log_mod, outgoing_guard_mod, _secure_aggregation_mod(bound_run_config)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        worker = _worker(context, bound_run_config)
        if LEGACY_FIT_PARAMETERS in msg.content:
            return _secure_train(msg, worker)
        config = msg.content["config"]
        refusal = worker.policy_refusal()
        if refusal is not None:
            return _reply(msg, worker, worker.refuse("train", int(config["server-round"]), refusal))
        global_state = msg.content["arrays"].to_torch_state_dict()
        outcome = worker.train_round(
            int(config["server-round"]), global_state, proximal_mu=float(config.get("proximal-mu", 0.0)),
            phase=str(config.get("phase", TRAIN_PHASE)),
        )
        return _reply(msg, worker, outcome)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        worker = _worker(context, bound_run_config)
        server_round = msg.content["config"].get("server-round") if "config" in msg.content else None
        refusal = worker.policy_refusal()
        if refusal is not None:
            return _reply(msg, worker, worker.refuse("evaluate", server_round, refusal))
        global_state = msg.content["arrays"].to_torch_state_dict()
        phase = str(msg.content["config"].get("phase", TRAIN_PHASE)) if "config" in msg.content else TRAIN_PHASE
        outcome = worker.evaluate_round(global_state, None if server_round is None else int(server_round), phase)
        return _reply(msg, worker, outcome)

    return app


app = build_client_app()
