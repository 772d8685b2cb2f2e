"""Client-side guard that checks every SecAgg+ request against the protocol before Flower's mod answers it.

Flower's `secaggplus_mod` (1.41) answers an unmask request with whatever shares it names: a curious
center that lists a site as both active and dropped gets both its private-seed share and its key
share and rebuilds that site's update; one that pads the active list with duplicates passes the
threshold check while isolating one site; a request that fails (e.g. a node outside the neighbour set)
leaves the mod waiting for another try. The guard refuses, before the mod runs:
- a stage out of order (setup may restart a round at any time: it draws fresh keys);
- setup parameters other than the run's (threshold below the configured one or not a majority of
  the shares, other clipping/quantisation/modulus ranges or max weight);
- a neighbour set without this node, larger than the shares or smaller than the threshold;
- forwarded shares from nodes outside the neighbour set, or too few of them;
- an unmask request naming a node as both active and dropped, a node twice, a node outside the
  neighbour set or whose shares this site does not hold, this site as dropped, or fewer distinct
  active nodes than the threshold;
- a plain training request while the run requires secure aggregation (a downgrade).
With `auth` (shared/privacy/secagg_auth.py: signed SecAgg+ keys) it also signs the site's keys at setup,
refuses a share-keys request whose neighbours' signed keys fail the roster (`secagg_peer_refused`, with the
reason code `roster_refused` or `version_mismatch`), and a collect request whose shares do not decrypt.
A refusal is an error reply, one line in the site's security log, and from then on the site answers
nothing else in this run (every later message gets an error reply and another log line).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import ERROR
from typing import Any, Protocol

from flwr.app import ConfigRecord, Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore import log

from shared.privacy.secagg_params import SecAggParameters
from shared.privacy.security_log import SecurityLog

GUARD_STATE_KEY = "fedcare_secagg_guard"
CallNext = Callable[[Message, Context], Message]
_PREVIOUS_STAGE = {Stage.SHARE_KEYS: Stage.SETUP, Stage.COLLECT_MASKED_VECTORS: Stage.SHARE_KEYS,
                   Stage.UNMASK: Stage.COLLECT_MASKED_VECTORS}


def site_decline_reason(site: str, status: str, reason: str) -> str:
    """The error text of a site that declines a round (no budget, no data, an update SecAgg+ would clip);
    the center reads it back with `parse_site_decline` to record the site's status."""
    return json.dumps({"fedcare_site": site, "status": status, "reason": reason})


def parse_site_decline(text: str) -> tuple[str, str, str] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "fedcare_site" not in obj:
        return None
    return str(obj["fedcare_site"]), str(obj.get("status", "")), str(obj.get("reason", ""))


class ProtocolViolation(Exception):
    """A SecAgg+ request this site must not answer (`code`: the reason code the site sends, if any)."""

    code: str = ""


@dataclass
class GuardState:
    stage: str = ""  # last stage this site answered in the current protocol instance
    round: str = ""  # the group id (round) of the current protocol instance, set at setup
    node_id: int = 0
    share_num: int = 0
    threshold: int = 0
    neighbours: list[int] = field(default_factory=list)
    share_holders: list[int] = field(default_factory=list)  # nodes whose shares this site holds (incl. itself)
    refused: str = ""  # why this site stopped answering in this run ("" = it did not)

    @classmethod
    def load(cls, context: Context) -> GuardState:
        record = context.state.config_records.get(GUARD_STATE_KEY)
        if record is None:
            return cls()
        return cls(**{k: (list(v) if isinstance(v, list) else v) for k, v in record.items()})

    def save(self, context: Context) -> None:
        context.state.config_records[GUARD_STATE_KEY] = ConfigRecord(
            {k: v for k, v in self.__dict__.items() if not (isinstance(v, list) and not v)}
        )


class StageHooks(Protocol):
    """Extra checks around the stages (shared.privacy.secagg_auth.KeyAuthenticator)."""

    def before(self, stage: str, msg: Message, context: Context, state: GuardState) -> None: ...  # may raise

    def after(self, stage: str, msg: Message, context: Context, reply: Message) -> None: ...  # may edit the reply


def _ints(configs: ConfigRecord, key: str) -> list[int]:
    value = configs.get(key, [])
    if not isinstance(value, list) or any(type(v) is not int for v in value):
        raise ProtocolViolation(f"'{key}' must be a list of node ids")
    if len(set(value)) != len(value):
        raise ProtocolViolation(f"'{key}' names a node more than once: {sorted(value)}")
    return value


def _check_setup(state: GuardState, configs: ConfigRecord, expected: SecAggParameters | None) -> None:
    share_num, threshold = configs.get(Key.SHARE_NUMBER), configs.get(Key.THRESHOLD)
    if type(share_num) is not int or type(threshold) is not int:
        raise ProtocolViolation("setup without integer share number and threshold")
    if threshold < 2 or 2 * threshold <= share_num:
        raise ProtocolViolation(f"threshold {threshold} is not a majority of {share_num} shares")
    if expected is None:
        return
    if threshold < expected.reconstruction_threshold or share_num != expected.num_shares:
        raise ProtocolViolation(
            f"setup asks for {share_num} shares with threshold {threshold}; the run configures "
            f"{expected.num_shares} with threshold {expected.reconstruction_threshold}"
        )
    announced = {Key.CLIPPING_RANGE: expected.clipping_range, Key.TARGET_RANGE: expected.quantization_range,
                 Key.MOD_RANGE: expected.modulus_range, Key.MAX_WEIGHT: expected.max_weight}
    for key, value in announced.items():
        if configs.get(key) != value:
            raise ProtocolViolation(f"setup sets {key}={configs.get(key)!r}; the run configures {value!r}")


def _check_share_keys(state: GuardState, configs: ConfigRecord) -> list[int]:
    try:
        neighbours = sorted(int(k) for k in configs if k != Key.STAGE)
    except ValueError:
        raise ProtocolViolation("share_keys names a node that is not a node id") from None
    if state.node_id not in neighbours:
        raise ProtocolViolation("share_keys neighbour set does not contain this node")
    if not state.threshold <= len(neighbours) <= state.share_num:
        raise ProtocolViolation(
            f"share_keys names {len(neighbours)} neighbours; allowed {state.threshold}..{state.share_num}"
        )
    return neighbours


def _check_collect(state: GuardState, configs: ConfigRecord) -> list[int]:
    sources = _ints(configs, Key.SOURCE_LIST)
    outside = sorted(set(sources) - (set(state.neighbours) - {state.node_id}))
    if outside:
        raise ProtocolViolation(f"forwarded shares from nodes outside the neighbour set: {outside}")
    if len(sources) + 1 < state.threshold:
        raise ProtocolViolation(f"shares from {len(sources) + 1} nodes, fewer than the threshold {state.threshold}")
    return sorted(set(sources) | {state.node_id})


def _check_unmask(state: GuardState, configs: ConfigRecord) -> None:
    active, dropped = _ints(configs, Key.ACTIVE_NODE_ID_LIST), _ints(configs, Key.DEAD_NODE_ID_LIST)
    both = sorted(set(active) & set(dropped))
    if both:
        raise ProtocolViolation(f"unmask names nodes as both active and dropped: {both}")
    outside = sorted(set(active + dropped) - set(state.neighbours))
    if outside:
        raise ProtocolViolation(f"unmask names nodes outside this site's neighbour set: {outside}")
    unheld = sorted(set(active + dropped) - set(state.share_holders))
    if unheld:
        raise ProtocolViolation(f"unmask names nodes whose shares this site never received: {unheld}")
    if state.node_id not in active:
        raise ProtocolViolation("unmask lists this site as dropped although it sent its masked update")
    if len(active) < state.threshold:
        raise ProtocolViolation(f"unmask with {len(active)} surviving nodes, fewer than the threshold {state.threshold}")


def check_request(state: GuardState, stage: Any, configs: ConfigRecord, node_id: int,
                  expected: SecAggParameters | None) -> None:
    """Raise ProtocolViolation unless this stage message may be answered now."""
    if stage not in Stage.all():
        raise ProtocolViolation(f"unknown SecAgg+ stage {stage!r}")
    if stage == Stage.SETUP:
        _check_setup(state, configs, expected)
        return
    if state.stage != _PREVIOUS_STAGE[stage]:
        raise ProtocolViolation(f"stage {stage} out of order (the last stage answered was {state.stage or 'none'})")
    if stage == Stage.SHARE_KEYS:
        _check_share_keys(state, configs)
    elif stage == Stage.COLLECT_MASKED_VECTORS:
        _check_collect(state, configs)
    else:
        _check_unmask(state, configs)


def _advance(state: GuardState, stage: str, configs: ConfigRecord, node_id: int, server_round: str) -> None:
    if stage == Stage.SETUP:
        state.node_id, state.round = node_id, server_round
        state.share_num, state.threshold = int(configs[Key.SHARE_NUMBER]), int(configs[Key.THRESHOLD])
        state.neighbours, state.share_holders = [], []
    elif stage == Stage.SHARE_KEYS:
        state.neighbours = _check_share_keys(state, configs)
    elif stage == Stage.COLLECT_MASKED_VECTORS:
        state.share_holders = _check_collect(state, configs)
    state.stage = stage


def _refuse(msg: Message, context: Context, state: GuardState, security_log: SecurityLog, reason: str, stage: Any,
            event: str, code: str = "") -> Message:
    if not state.refused:
        state.refused = reason
    state.save(context)
    security_log.append({
        "kind": event, "reason": reason, "stage": str(stage), "run_id": context.run_id,
        "node_id": msg.metadata.dst_node_id, "round": msg.metadata.group_id, "message_type": msg.metadata.message_type,
        **({"code": code} if code else {}),
    })
    text = f"secure aggregation guard refused the {stage} request: {reason}"
    log(ERROR, f"{security_log.site}: {text}")
    if code:  # the center learns the reason code; the detail stays in the site's log
        text = site_decline_reason(security_log.site, "refused", code)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=text), reply_to=msg)


def secagg_guard(msg: Message, context: Context, call_next: CallNext, *, security_log: SecurityLog,
                 expected: SecAggParameters | None, auth: StageHooks | None = None) -> Message:
    """Mod body: check `msg` against the protocol (and `auth`'s checks), then let `call_next` (the SecAgg+ mod
    chain) answer it.

    Place it before `secaggplus_mod` in a run that requires secure aggregation."""
    state = GuardState.load(context)
    kind = msg.metadata.message_type
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS) if msg.has_content() else None
    stage = configs.get(Key.STAGE) if configs is not None else None
    if state.refused:
        return _refuse(msg, context, state, security_log, f"already refused earlier in this run ({state.refused})",
                       stage or kind, "secagg_message_blocked")
    if kind != MessageType.TRAIN:
        return call_next(msg, context)
    if configs is None:
        return _refuse(msg, context, state, security_log, "a plain training request while the run requires secure "
                       "aggregation (the update would leave in clear)", "train", "secagg_request_refused")
    node_id = msg.metadata.dst_node_id
    try:
        check_request(state, stage, configs, node_id, expected)
        if auth is not None and stage != Stage.SETUP:
            auth.before(str(stage), msg, context, state)
    except ProtocolViolation as violation:
        kind = "secagg_peer_refused" if violation.code else "secagg_request_refused"
        return _refuse(msg, context, state, security_log, str(violation), stage, kind, violation.code)
    snapshot = ConfigRecord(dict(configs))  # Flower's mod pops the stage key
    reply = call_next(msg, context)
    if not reply.has_error():
        if auth is not None:
            auth.after(str(stage), msg, context, reply)
        _advance(state, str(stage), snapshot, node_id, msg.metadata.group_id)
        state.save(context)
    return reply
