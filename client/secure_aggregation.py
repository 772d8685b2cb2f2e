"""A site's side of secure aggregation (SecAgg+, Flower's legacy stages): the glue between Flower's
`secaggplus_mod`, fedcare's protocol guard, the signed SecAgg+ keys and the site's budget.

Order of one round at the site, and what can stop it:
  setup         site policy and budget (decline: nothing trained); keys drawn and signed with the site's
                identity key (shared/privacy/secagg_auth.py)
  share_keys    the guard checks the neighbour set; every neighbour's signed keys are checked against the
                roster, and its mask/protocol version against this site's, before any shared secret exists
  collect       the forwarded shares must decrypt and name their source, checked before training; then
                the site trains (budget spent, ledger), checks that SecAgg+ would not clip the update,
                and sends it masked
  unmask        the guard refuses requests that would leak a single update
Every check that does not need the trained update runs before training. What can still fail after it (the
update would clip, an unmask request is refused, the center never asks for the unmask shares) is written to
the ledger as a `no_aggregate` entry after the round's `trained` entry: the budget is spent, no aggregate
holds this site's update.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode

from client.replies import outcome_content
from client.site_worker import Refusal, RoundOutcome, SiteDataError, SiteWorker
from shared.privacy.keys import load_public_key
from shared.privacy.ledger import NO_AGGREGATE, TRAINED
from shared.privacy.roster import Roster, load_roster, roster_from_keys
from shared.privacy.whitelist import check_outgoing

UPDATE_WOULD_CLIP = "update_would_clip"


class RoundDeclined(Exception):
    """This site sends no update this round (no budget, no data, or an update SecAgg+ would clip)."""

    def __init__(self, outcome: RoundOutcome) -> None:
        super().__init__(f"{outcome.status}: {outcome.reason}")
        self.outcome = outcome


# -- the roster and the site's key authenticator ---------------------------------------------------
def simulation_roster(state_dir: Path, sites: list[str]) -> Roster:
    """In simulation: the simulated sites' own identity keys (state_root/<site>/keys/<site>.pub, written by each
    SiteWorker); a site that has not started yet is not on it. There the center is the test's adversary only."""
    keys = {}
    for site in sites:
        path = Path(state_dir).parent / site / "keys" / f"{site}.pub"
        if path.is_file():
            keys[site] = load_public_key(path)
    return roster_from_keys(keys)


def site_roster(worker: SiteWorker) -> Roster:
    if worker.settings.roster is not None:
        return load_roster(worker.settings.roster)
    return simulation_roster(worker.settings.state_dir, list(worker.cfg.data.sites))


def key_authenticator(worker: SiteWorker):  # noqa: ANN201 (a KeyAuthenticator; imported lazily: it patches Flower)
    from shared.privacy.secagg_auth import KeyAuthenticator

    hint = "" if worker.settings.roster is not None else " (no roster file: built from the simulated sites' key files)"
    return KeyAuthenticator(worker.settings.site, worker.ledger.signing_key, lambda: site_roster(worker), hint)


# -- budget spent without an aggregate -------------------------------------------------------------
def record_no_aggregate(worker: SiteWorker, server_round: int, reason: str, detail: str) -> bool:
    """After a round this site trained but whose aggregate cannot hold its update: a `no_aggregate` ledger entry
    (once per round) and a security-log line. Returns whether it wrote one."""
    mine = [e for e in worker.ledger.entries() if e.get("run_id") == worker.run_id and e.get("round") == server_round]
    if not any(e["status"] == TRAINED for e in mine) or any(e["status"] == NO_AGGREGATE for e in mine):
        return False
    p = worker.cfg.privacy
    spent = worker.ledger.spent_epsilon(p.accountant)
    worker.ledger.append(
        run_id=worker.run_id, round=server_round, status=NO_AGGREGATE, mechanism=None, delta=p.delta,
        max_grad_norm=p.max_grad_norm, accountant=p.accountant, cumulative_epsilon=spent,
        lifetime_epsilon=worker.lifetime_epsilon,
        extra={"reason": reason, "detail": detail[:200], "budget_spent": True},
    )
    worker.security_log.append({"kind": "round_without_aggregate", "run_id": worker.run_id, "round": server_round,
                                "reason": reason, "detail": detail[:200], "epsilon": spent})
    return True


def _sent_but_not_unmasked(worker: SiteWorker, context: Context, reason: str, detail: str) -> None:
    """The guard's last answered stage was the masked update: no unmask shares went out for that round."""
    from flwr.common.secure_aggregation.secaggplus_constants import Stage

    from shared.privacy.secagg_guard import GuardState

    state = GuardState.load(context)
    if state.stage == Stage.COLLECT_MASKED_VECTORS and state.round.isdigit():
        record_no_aggregate(worker, int(state.round), reason, detail)


# -- the collect stage: train, check, hand a legacy fit result to `secaggplus_mod` -------------------
def secure_train(msg: Message, worker: SiteWorker) -> Message:
    """SecAgg+ collect stage: train, check, and answer with a legacy fit result for `secaggplus_mod` to mask."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    assert worker.secagg is not None
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    keys = list(worker.task.build_model().state_dict())
    global_state = {k: torch.from_numpy(a.copy()) for k, a in zip(keys, parameters_to_ndarrays(fitins.parameters))}
    server_round = int(fitins.config["server-round"])
    outcome = worker.train_round(server_round, global_state, proximal_mu=float(fitins.config.get("proximal-mu", 0.0)))
    if outcome.arrays is None:
        raise RoundDeclined(outcome)
    check_outgoing(outcome_content(worker, outcome), set(keys))  # the same whitelist as a plain reply
    # float64: Flower quantises in the dtype it is given, and float32 cannot hold ~1e9 quantisation levels
    arrays = [outcome.arrays[k].numpy().astype(np.float64) for k in keys]
    # the run's noisy count (site_worker: released once, in the ledger, capped at the SecAgg+ max_weight)
    num_examples = int(outcome.metrics["num-examples"])
    problem = worker.secagg.update_problem(arrays, num_examples)
    if problem is not None:
        record_no_aggregate(worker, server_round, UPDATE_WOULD_CLIP, f"not sent: {problem}")
        raise RoundDeclined(RoundOutcome("refused", UPDATE_WOULD_CLIP))
    site = {"site.name": worker.settings.site, "site.status": outcome.status, "site.reason": outcome.reason,
            "site.ledger_head": worker.ledger.head()}
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples, {**outcome.metrics, **site})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


# -- the mod -------------------------------------------------------------------------------------------
def secure_aggregation_mod(worker_for: Callable[[Context], SiteWorker]) -> Mod:
    """In a run with secure aggregation: the protocol guard with signed keys, the budget check at setup, then
    Flower's SecAgg+ mod (which calls the train handler, i.e. `secure_train`, at the collect stage)."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        worker = worker_for(context)
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
            stage = configs.get(Key.STAGE)  # Flower's mod pops it
            if stage == Stage.SETUP:
                server_round = int(m.metadata.group_id)
                policy_refusal = worker.policy_refusal()
                if policy_refusal is not None:
                    return decline(m, worker.refuse("train", server_round, policy_refusal))
                try:
                    refusal = worker.round_refusal(server_round)
                except SiteDataError as err:  # the center learns `data_error`; the detail stays in the log
                    refusal = worker.refuse("train", server_round, Refusal("data_error", err.detail))
                if refusal is not None:
                    return decline(m, refusal)
            try:
                return secaggplus_mod(m, c, call_next)
            except RoundDeclined as declined:
                return decline(m, declined.outcome)
            except SiteDataError as err:
                return decline(m, worker.refuse("train", int(m.metadata.group_id), Refusal("data_error", err.detail)))
            except Exception as error:  # after training, the update never left: say so in the ledger
                if stage == Stage.COLLECT_MASKED_VECTORS and m.metadata.group_id.isdigit():
                    record_no_aggregate(worker, int(m.metadata.group_id), "internal_error", f"{type(error).__name__}: {error}")
                raise

        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS) if msg.has_content() else None
        if configs is not None and configs.get(Key.STAGE) == Stage.SETUP:  # a new round, the last one never unmasked
            _sent_but_not_unmasked(worker, context, "no_unmask", "the center never asked for this round's unmask shares")
        reply = secagg_guard(msg, context, budget_then_secaggplus, security_log=worker.security_log,
                             expected=worker.secagg, auth=key_authenticator(worker))
        if reply.has_error():
            _sent_but_not_unmasked(worker, context, "secagg_refused", reply.error.reason)
        return reply

    return mod
