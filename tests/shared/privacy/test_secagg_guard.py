import time

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from shared.privacy.secagg_guard import (
    GuardState,
    ProtocolViolation,
    check_request,
    parse_site_decline,
    secagg_guard,
    site_decline_reason,
)
from shared.privacy.secagg_params import SecAggParameters
from shared.privacy.security_log import SECURITY_LOG_FILE, SecurityLog

ME, A, B = 7, 11, 13
PARAMS = SecAggParameters(num_sites=3, num_shares=3, reconstruction_threshold=2, weight_bound=4.0, max_num_examples=100,
                          clipping_range=4.0, max_weight=100.0, quantization_range=(2**32 - 1) // 3, modulus_range=2**32)
SETUP = {"stage": "setup", "sample_num": 3, "share_num": 3, "threshold": 2, "clipping_range": 4.0,
         "target_range": (2**32 - 1) // 3, "mod_range": 2**32, "max_weight": 100.0}


def _log(folder) -> SecurityLog:
    return SecurityLog(folder / SECURITY_LOG_FILE, "hospital_a")


def _state(stage: str) -> GuardState:
    return GuardState(stage=stage, node_id=ME, share_num=3, threshold=2, neighbours=[ME, A, B], share_holders=[ME, A, B])


def _message(configs: dict | None, message_type: str = "train") -> Message:
    metadata = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=ME, reply_to_message_id="", group_id="3",
                        created_at=time.time(), ttl=60.0, message_type=message_type)
    content = RecordDict({"secaggplus_configs": ConfigRecord(configs)} if configs is not None else {})
    return Message(metadata=metadata, content=content)


def _context() -> Context:
    return Context(run_id=1, node_id=ME, node_config={}, state=RecordDict(), run_config={})


def test_stages_must_come_in_order_but_setup_may_restart():
    with pytest.raises(ProtocolViolation, match="out of order"):
        check_request(_state("setup"), "unmask", ConfigRecord({"active_nids": [ME, A], "dead_nids": []}), ME, PARAMS)
    with pytest.raises(ProtocolViolation, match="out of order"):
        check_request(_state("unmask"), "share_keys", ConfigRecord({}), ME, PARAMS)
    check_request(_state("share_keys"), "setup", ConfigRecord(SETUP), ME, PARAMS)  # a restart draws fresh keys


@pytest.mark.parametrize("change, match", [
    ({"threshold": 1}, "not a majority"),
    ({"share_num": 4, "threshold": 2}, "not a majority"),
    ({"threshold": 3, "share_num": 5}, "the run configures 3 with threshold 2"),
    ({"clipping_range": 8.0}, "clipping_range"),
    ({"target_range": 2**22}, "target_range"),
    ({"max_weight": 30.0}, "max_weight"),
])
def test_setup_must_carry_the_runs_parameters(change, match):
    with pytest.raises(ProtocolViolation, match=match):
        check_request(GuardState(), "setup", ConfigRecord({**SETUP, **change}), ME, PARAMS)


def test_share_keys_neighbour_set():
    keys = {str(n): [b"pk1", b"pk2"] for n in (ME, A)}
    state = GuardState(stage="setup", node_id=ME, share_num=3, threshold=2)
    check_request(state, "share_keys", ConfigRecord({"stage": "share_keys", **keys}), ME, PARAMS)
    with pytest.raises(ProtocolViolation, match="does not contain this node"):
        check_request(state, "share_keys", ConfigRecord({str(A): [b"1", b"2"], str(B): [b"3", b"4"]}), ME, PARAMS)
    four = {str(n): [b"x", b"y"] for n in (ME, A, B, 99)}
    with pytest.raises(ProtocolViolation, match="4 neighbours"):
        check_request(state, "share_keys", ConfigRecord(four), ME, PARAMS)


def test_collect_stage_sources():
    state = _state("share_keys")
    check_request(state, "collect_masked_vectors", ConfigRecord({"srcs": [A, B], "ctxts": [b"1", b"2"]}), ME, PARAMS)
    with pytest.raises(ProtocolViolation, match="outside the neighbour set: \\[99\\]"):
        check_request(state, "collect_masked_vectors", ConfigRecord({"srcs": [A, 99]}), ME, PARAMS)
    with pytest.raises(ProtocolViolation, match="fewer than the threshold"):
        check_request(state, "collect_masked_vectors", ConfigRecord({"srcs": []}), ME, PARAMS)
    with pytest.raises(ProtocolViolation, match="more than once"):
        check_request(state, "collect_masked_vectors", ConfigRecord({"srcs": [A, A]}), ME, PARAMS)


@pytest.mark.parametrize("active, dead, match", [
    ([ME, A, B], [A], "both active and dropped: \\[11\\]"),
    ([ME, A, 99], [], "outside this site's neighbour set: \\[99\\]"),
    ([ME, A, A], [B], "more than once"),
    ([ME], [A, B], "fewer than the threshold"),
    ([A, B], [ME], "lists this site as dropped"),
])
def test_unmask_requests_that_would_leak_are_refused(active, dead, match):
    with pytest.raises(ProtocolViolation, match=match):
        check_request(_state("collect_masked_vectors"), "unmask",
                      ConfigRecord({"active_nids": active, "dead_nids": dead}), ME, PARAMS)


def test_unmask_for_a_node_whose_shares_never_arrived_is_refused():
    state = _state("collect_masked_vectors")
    state.share_holders = [ME, A]  # B dropped before forwarding its shares
    with pytest.raises(ProtocolViolation, match="never received: \\[13\\]"):
        check_request(state, "unmask", ConfigRecord({"active_nids": [ME, A], "dead_nids": [B]}), ME, PARAMS)
    check_request(state, "unmask", ConfigRecord({"active_nids": [ME, A], "dead_nids": []}), ME, PARAMS)


def test_refusal_is_an_error_reply_a_log_line_and_the_end_of_the_run(tmp_path):
    ctx = _context()
    _state("collect_masked_vectors").save(ctx)
    called = []

    def answer(msg, c):
        called.append(msg)
        return Message(RecordDict({"secaggplus_configs": ConfigRecord({"shares": [b"s"]})}), reply_to=msg)

    trick = _message({"stage": "unmask", "active_nids": [ME, A, B], "dead_nids": [A]})
    reply = secagg_guard(trick, ctx, answer, security_log=_log(tmp_path), expected=PARAMS)
    assert reply.has_error() and reply.error.reason == "secagg_refused" and not called  # a code, the why is logged
    evaluate = secagg_guard(_message(None, "evaluate"), ctx, answer, security_log=_log(tmp_path), expected=PARAMS)
    assert evaluate.has_error() and evaluate.error.reason == "secagg_refused" and not called
    log = _log(tmp_path).events()
    assert [e["kind"] for e in log] == ["secagg_request_refused", "secagg_message_blocked"]
    assert "both active and dropped" in log[0]["reason"] and "already refused" in log[1]["reason"]
    assert log[0]["stage"] == "unmask" and log[0]["node_id"] == ME and log[0]["round"] == "3"
    assert GuardState.load(ctx).refused.startswith("unmask names nodes as both active and dropped")


def test_a_plain_training_request_in_a_secure_run_is_a_downgrade(tmp_path):
    plain = Message(metadata=_message(None).metadata, content=RecordDict({"config": ConfigRecord({"server-round": 1})}))
    reply = secagg_guard(plain, _context(), lambda m, c: pytest.fail("answered"), security_log=_log(tmp_path), expected=PARAMS)
    assert reply.has_error() and reply.error.reason == "secagg_refused"
    assert _log(tmp_path).events()[0]["kind"] == "secagg_request_refused"
    assert "plain training request" in _log(tmp_path).events()[0]["reason"]


def test_an_answered_stage_advances_the_state(tmp_path):
    ctx = _context()
    ok = secagg_guard(_message(dict(SETUP)), ctx, lambda m, c: Message(RecordDict(), reply_to=m), security_log=_log(tmp_path),
                      expected=PARAMS)
    assert not ok.has_error()
    state = GuardState.load(ctx)
    assert (state.stage, state.node_id, state.share_num, state.threshold) == ("setup", ME, 3, 2)
    assert _log(tmp_path).events() == []


def test_decline_reason_round_trip():
    text = site_decline_reason("hospital_a", "budget_exhausted", "epsilon 8.1 > 8")
    assert parse_site_decline(text) == ("hospital_a", "budget_exhausted", "epsilon 8.1 > 8")
    assert parse_site_decline("KeyError('x')") is None
