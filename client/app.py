"""Flower ClientApp of a hospital: a thin shell around client.site_worker.SiteWorker.

The run config (flat keys, shared/run_config.py) names the run's config; the site's own settings come
from its node config (simulation: the partition id picks the site) and win.
Every reply passes the outgoing-message guard, so only whitelisted content leaves the site; every
message in and reply out is written to the site's security log; a run the site policy does not approve,
or that weakens its privacy floor, gets a refusal ({"refused": 1} and a reason code) instead of weights.
What the center is told is always a code (shared/privacy/reason_codes.py): a data error is `data_error`,
anything unexpected `internal_error`; the message, with its paths and values, goes to the security log.

With `secure_aggregation.enabled` the train messages are Flower's SecAgg+ stages (legacy format), handled
by client/secure_aggregation.py (protocol guard, signed keys, budget at setup, masking).
Each train and evaluate message leaves a timing line in the site's own state folder (shared/timings.py).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.replies import outcome_content
from client.secure_aggregation import secure_aggregation_mod, secure_train
from client.security_log_mod import make_security_log_mod
from client.site_settings import site_settings
from client.site_worker import Refusal, RoundOutcome, SiteDataError, SiteWorker
from shared import timings
from shared.config import TRAIN_PHASE
from shared.content_packing import content_packing_mod
from shared.privacy import accountant
from shared.privacy.whitelist import outgoing_guard_mod
from shared.run_config import parse_run_config

_WORKERS: dict[tuple[int, int], SiteWorker] = {}  # one per (Flower run, node) in this process: data loads once
LEGACY_FIT_PARAMETERS = "fitins.parameters"  # a SecAgg+ collect-stage request (legacy fit instructions)


def _worker(context: Context, bound_run_config: Mapping[str, Any] | None) -> SiteWorker:
    """This node's worker in this run: the run config is parsed once, when the node's first message arrives."""
    key = (context.run_id, context.node_id)
    if key not in _WORKERS:
        spec = parse_run_config(bound_run_config or context.run_config, context.run_id)
        torch.set_num_threads(max(1, int(spec.cfg.federation.cpus_per_site)))
        _WORKERS[key] = SiteWorker(spec.cfg, site_settings(spec, context.node_config), spec.run_id)
    # the per-step RDP vectors of this message's site live in its state folder: a fresh process (deployment) or
    # an actor new to the site (simulation) reads them; one message at a time per process, so one folder
    accountant.use_disk_cache(_WORKERS[key].settings.state_dir / "accounting_cache")
    return _WORKERS[key]


def _site_error(err: Exception) -> Refusal:
    """A failure while answering, as the center sees it (a code) and as the site logs it (the detail)."""
    if isinstance(err, SiteDataError):
        return Refusal("data_error", err.detail)
    return Refusal("internal_error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")


def _reply(msg: Message, worker: SiteWorker, outcome: RoundOutcome) -> Message:
    with timings.part("serialise"):
        return Message(content=outcome_content(worker, outcome), reply_to=msg)


class SiteClientApp(ClientApp):
    """The site's ClientApp, which pickles as the call that builds it. Flower's simulation ships the app to a Ray
    worker with every message; by value (its mods' and handlers' closures) that took ~4.4 ms of each message's
    ~10 ms dispatch (issue 23). The worker builds it once per run config and reuses it (`_client_app_for`)."""

    def __init__(self, bound_run_config: Mapping[str, Any] | None, mods: list) -> None:
        super().__init__(mods=mods)
        self._bound_run_config = dict(bound_run_config) if bound_run_config is not None else None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _client_app_for, (self._bound_run_config,)


_BUILT: dict[str, SiteClientApp] = {}  # run config (canonical JSON) -> the app built from it in this process


def _client_app_for(bound_run_config: dict[str, Any] | None) -> SiteClientApp:
    key = json.dumps(bound_run_config, sort_keys=True)
    if key not in _BUILT:
        _BUILT[key] = build_client_app(bound_run_config)
    return _BUILT[key]


def build_client_app(bound_run_config: Mapping[str, Any] | None = None) -> SiteClientApp:
    """`bound_run_config`: the run config of an in-process simulation (`fedcare simulate`), else the context's."""
    security_log_mod = make_security_log_mod(lambda context: _worker(context, bound_run_config).security_log)
    # the log sees what arrived and the reply the guard let out (both unpacked: the packing outside it only
    # re-encodes records, shared/content_packing.py); SecAgg+ masks inside the guard
    secure = secure_aggregation_mod(lambda context: _worker(context, bound_run_config))
    app = SiteClientApp(bound_run_config, mods=[content_packing_mod, security_log_mod, outgoing_guard_mod, secure])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        worker = _worker(context, bound_run_config)
        if LEGACY_FIT_PARAMETERS in msg.content:
            return secure_train(msg, worker)
        config = msg.content["config"]
        server_round = int(config["server-round"])
        with timings.message(worker.settings.state_dir, worker.run_id, "train", server_round):
            refusal = worker.policy_refusal()
            if refusal is not None:
                return _reply(msg, worker, worker.refuse("train", server_round, refusal))
            with timings.part("deserialise"):
                global_state = msg.content["arrays"].to_torch_state_dict()
            try:
                with timings.part("train"):
                    outcome = worker.train_round(
                        server_round, global_state, proximal_mu=float(config.get("proximal-mu", 0.0)),
                        phase=str(config.get("phase", TRAIN_PHASE)),
                    )
            except Exception as err:
                outcome = worker.refuse("train", server_round, _site_error(err))
            return _reply(msg, worker, outcome)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        worker = _worker(context, bound_run_config)
        server_round = msg.content["config"].get("server-round") if "config" in msg.content else None
        with timings.message(worker.settings.state_dir, worker.run_id, "evaluate", server_round):
            refusal = worker.policy_refusal()
            if refusal is not None:
                return _reply(msg, worker, worker.refuse("evaluate", server_round, refusal))
            with timings.part("deserialise"):
                global_state = msg.content["arrays"].to_torch_state_dict()
            phase = str(msg.content["config"].get("phase", TRAIN_PHASE)) if "config" in msg.content else TRAIN_PHASE
            try:
                with timings.part("evaluate"):
                    outcome = worker.evaluate_round(global_state, None if server_round is None else int(server_round), phase)
            except Exception as err:
                return _reply(msg, worker, worker.refuse("evaluate", server_round, _site_error(err)))
            return _reply(msg, worker, outcome)

    return app


app = build_client_app()
