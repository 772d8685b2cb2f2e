"""Signed SecAgg+ keys (shared/privacy/secagg_auth.py): what a site accepts at the share-keys stage, the center's
version check, the forwarded-share check, the whitelist of the signed reply and the center's bound on the sum."""

import time
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt, generate_shared_key
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat
from flwr.supercore.primitives.asymmetric import generate_key_pairs

from client.secure_aggregation import record_no_aggregate
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.audit import audit_ledger
from shared.privacy.ledger import SiteLedger
from shared.privacy.roster import roster_from_keys
from shared.privacy.secagg_auth import (
    AUTH_RECORD,
    PROTOCOL_VERSION,
    KeyAuthenticator,
    KeyStatement,
    PeerRefused,
    check_forwarded_shares,
    version_problem,
)
from shared.privacy.secagg_guard import GuardState, ProtocolViolation, secagg_guard
from shared.privacy.secagg_masks import MASK_ALGORITHM, STOCK_MASK_ALGORITHM
from shared.privacy.secagg_params import SecAggParameters, aggregate_problem
from shared.privacy.security_log import SECURITY_LOG_FILE, SecurityLog
from shared.privacy.whitelist import OutgoingMessageRefused, check_outgoing_secagg

RUN, ROUND, ME, A, B = 5, "2", 7, 11, 13
KEYS = {name: Ed25519PrivateKey.generate() for name in ("hospital_a", "hospital_b", "hospital_c", "mallory")}
ROSTER = roster_from_keys({s: k.public_key() for s, k in KEYS.items() if s != "mallory"})
SITE_OF = {ME: "hospital_a", A: "hospital_b", B: "hospital_c"}
PARAMS = SecAggParameters(num_sites=3, num_shares=3, reconstruction_threshold=2, weight_bound=4.0, max_num_examples=100,
                          clipping_range=4.0, max_weight=100.0, quantization_range=(2**32 - 1) // 3, modulus_range=2**32)


def _pks(nid: int) -> list[bytes]:
    return [f"pk1-of-{nid}".encode(), f"pk2-of-{nid}".encode()]


def _authenticator(site: str = "hospital_a", key: str | None = None) -> KeyAuthenticator:
    return KeyAuthenticator(site, KEYS[key or site], lambda: ROSTER)


def _signed(nid: int, site: str | None = None, key: str | None = None, **change) -> list[bytes]:
    site = site or SITE_OF[nid]
    statement = _authenticator(site, key or site).statement(RUN, ROUND, nid, *_pks(nid))
    statement = KeyStatement(**{**statement.__dict__, **change}).to_bytes()
    return [statement, KEYS[key or site].sign(statement)]


def _check(auth: dict | None, configs: dict | None = None) -> dict[int, str]:
    configs = configs or {str(n): _pks(n) for n in (ME, A, B)}
    state = GuardState(stage="setup", node_id=ME, share_num=3, threshold=2, round=ROUND)
    return _authenticator().check_peers(ConfigRecord({"stage": "share_keys", **configs}),
                                        None if auth is None else ConfigRecord(auth), RUN, state)


def test_signed_keys_of_roster_sites_pass():
    assert _check({str(A): _signed(A), str(B): _signed(B)}) == SITE_OF


def test_statement_is_canonical_and_strict():
    statement = _authenticator().statement(RUN, ROUND, ME, *_pks(ME))
    assert KeyStatement.from_bytes(statement.to_bytes()) == statement
    assert (statement.protocol, statement.mask) == (PROTOCOL_VERSION, MASK_ALGORITHM)
    with pytest.raises(ValueError, match="exactly the fields"):
        KeyStatement.from_bytes(b'{"site": "x"}')
    with pytest.raises(ValueError, match="canonical"):
        KeyStatement.from_bytes(statement.to_bytes().replace(b",", b", "))


@pytest.mark.parametrize("auth, match", [
    (None, "node 11 comes without signed SecAgg\\+ keys"),
    ({str(B): _signed(B)}, "node 11 comes without signed SecAgg\\+ keys"),
    ({str(A): [b"{}", b"x" * 64], str(B): _signed(B)}, "node 11: unreadable key statement"),
    ({str(A): _signed(A, site="mallory"), str(B): _signed(B)}, "site 'mallory' \\(node 11\\) is not on this site's roster"),
    ({str(A): _signed(A, key="mallory"), str(B): _signed(B)}, "\\(node 11\\): the signature .* does not verify"),
    ({str(A): _signed(A, pk2="0" * 64), str(B): _signed(B)}, "signed other keys than the center forwarded \\(pk2"),
    ({str(A): _signed(A, round="1"), str(B): _signed(B)}, "signed other round than the center forwarded"),
    ({str(A): _signed(A, run_id=4), str(B): _signed(B)}, "signed other run_id"),
    ({str(A): _signed(A, node_id=B), str(B): _signed(B)}, "signed other node_id"),
    ({str(A): _signed(A), str(B): _signed(B, site="hospital_b")}, "site 'hospital_b' appears twice \\(nodes 11 and 13\\)"),
    ({str(A): _signed(A), str(B): _signed(B, site="hospital_a")}, "site 'hospital_a' appears twice \\(nodes 7 and 13\\)"),
])
def test_refused_peers(auth, match):
    with pytest.raises(PeerRefused, match=match) as refused:
        _check(auth)
    assert refused.value.code == "roster_refused"


def test_another_mask_expansion_is_a_version_mismatch_naming_the_site_and_version():
    with pytest.raises(PeerRefused) as refused:
        _check({str(A): _signed(A), str(B): _signed(B, mask=STOCK_MASK_ALGORITHM)})
    assert refused.value.code == "version_mismatch"
    assert str(refused.value) == (f"site 'hospital_c' (node 13) runs SecAgg+ masks {STOCK_MASK_ALGORITHM!r}, protocol "
                                  f"'{PROTOCOL_VERSION}'; this site runs masks {MASK_ALGORITHM!r}, protocol '{PROTOCOL_VERSION}'")
    with pytest.raises(PeerRefused, match="protocol 'fedcare-secagg\\+/1'"):
        _check({str(A): _signed(A, protocol="fedcare-secagg+/1"), str(B): _signed(B)})


def test_a_site_whose_own_key_is_not_the_rosters_refuses():
    auth = KeyAuthenticator("hospital_a", KEYS["mallory"], lambda: ROSTER)
    state = GuardState(stage="setup", node_id=ME, share_num=3, threshold=2, round=ROUND)
    with pytest.raises(PeerRefused, match="own identity key is not the roster's key for 'hospital_a'"):
        auth.check_peers(ConfigRecord({str(A): _pks(A)}), ConfigRecord({str(A): _signed(A)}), RUN, state)


def test_center_version_check():
    assert version_problem({A: _signed(A), B: _signed(B)}) is None
    assert version_problem({A: _signed(A), B: None}).startswith("node 13 sent unsigned SecAgg+ keys")
    assert version_problem({A: _signed(A, mask=STOCK_MASK_ALGORITHM), B: _signed(B)}) == (
        f"site 'hospital_b' runs SecAgg+ masks {STOCK_MASK_ALGORITHM!r}, protocol '{PROTOCOL_VERSION}'; "
        f"the federation runs masks {MASK_ALGORITHM!r}, protocol '{PROTOCOL_VERSION}'")


def _message(stage_configs: dict, auth: dict | None = None, group_id: str = ROUND) -> Message:
    metadata = Metadata(run_id=RUN, message_id="m", src_node_id=0, dst_node_id=ME, reply_to_message_id="",
                        group_id=group_id, created_at=time.time(), ttl=60.0, message_type="train")
    records = {"secaggplus_configs": ConfigRecord(stage_configs)}
    if auth is not None:
        records[AUTH_RECORD] = ConfigRecord(auth)
    return Message(metadata=metadata, content=RecordDict(records))


def test_the_guard_signs_at_setup_refuses_bad_peers_logs_the_code_and_goes_silent(tmp_path):
    ctx = Context(run_id=RUN, node_id=ME, node_config={}, state=RecordDict(), run_config={})
    log = SecurityLog(tmp_path / SECURITY_LOG_FILE, "hospital_a", KEYS["hospital_a"])
    setup = {"stage": "setup", "sample_num": 3, "share_num": 3, "threshold": 2, "clipping_range": 4.0,
             "target_range": PARAMS.quantization_range, "mod_range": 2**32, "max_weight": 100.0}

    def keys_reply(m, c):
        return Message(RecordDict({"secaggplus_configs": ConfigRecord({"pk1": _pks(ME)[0], "pk2": _pks(ME)[1]})}), reply_to=m)

    reply = secagg_guard(_message(setup), ctx, keys_reply, security_log=log, expected=PARAMS, auth=_authenticator())
    statement, signature = reply.content.config_records["secaggplus_configs"]["signed_keys"]
    KEYS["hospital_a"].public_key().verify(signature, statement)
    assert KeyStatement.from_bytes(statement) == _authenticator().statement(RUN, ROUND, ME, *_pks(ME))
    check_outgoing_secagg(reply.content)  # the whitelist lets the signed keys out
    share = _message({"stage": "share_keys", **{str(n): _pks(n) for n in (ME, A, B)}},
                     {str(A): _signed(A, pk2="f" * 64), str(B): _signed(B)})
    refused = secagg_guard(share, ctx, lambda m, c: pytest.fail("answered"), security_log=log, expected=PARAMS,
                           auth=_authenticator())
    assert refused.has_error() and '"reason": "roster_refused"' in refused.error.reason
    assert "node 11" not in refused.error.reason  # the detail stays at the site
    event = log.events()[0]
    assert event["kind"] == "secagg_peer_refused" and event["code"] == "roster_refused" and "pk2" in event["reason"]
    assert "signature" in log.entries()[0]


def test_the_whitelist_checks_the_signed_keys():
    def reply(value):
        return RecordDict({"secaggplus_configs": ConfigRecord({"pk1": b"1", "pk2": b"2", "signed_keys": value})})

    check_outgoing_secagg(reply(_signed(A)))
    with pytest.raises(OutgoingMessageRefused, match="must be \\[key statement, 64-byte signature\\]"):
        check_outgoing_secagg(reply([_signed(A)[0], b"short"]))
    with pytest.raises(OutgoingMessageRefused, match="not a key statement"):
        check_outgoing_secagg(reply([b'{"patient": 1}', b"x" * 64]))


def test_forwarded_shares_must_decrypt_and_name_source_and_destination():
    sk_me, pk_me = generate_key_pairs()
    sk_a, pk_a = generate_key_pairs()
    key = generate_shared_key(sk_me, pk_a)
    ctx = Context(run_id=RUN, node_id=ME, node_config={}, state=RecordDict(), run_config={})
    ctx.state.config_records[RECORD_KEY_STATE] = ConfigRecord({"ss2_dict:K": [A], "ss2_dict:V": [key]})
    good = encrypt(generate_shared_key(sk_a, pk_me), share_keys_plaintext_concat(A, ME, b"rd", b"sk"))
    check_forwarded_shares(ctx, ConfigRecord({"srcs": [A], "ctxts": [good]}), ME)
    with pytest.raises(ProtocolViolation, match="does not decrypt"):
        check_forwarded_shares(ctx, ConfigRecord({"srcs": [A], "ctxts": [good[:-4] + b"AAAA"]}), ME)
    relabelled = encrypt(key, share_keys_plaintext_concat(B, ME, b"rd", b"sk"))
    with pytest.raises(ProtocolViolation, match="written by node 13 for node 7"):
        check_forwarded_shares(ctx, ConfigRecord({"srcs": [A], "ctxts": [relabelled]}), ME)
    with pytest.raises(ProtocolViolation, match="shares no key"):
        check_forwarded_shares(ctx, ConfigRecord({"srcs": [B], "ctxts": [good]}), ME)


def test_the_center_bounds_the_unmasked_sum():
    n = [20, 50]
    total = sum(round(k / PARAMS.max_weight * PARAMS.quantization_range) for k in n)
    values = [np.array([0, 2 * PARAMS.quantization_range])]
    assert aggregate_problem(PARAMS, total, values, n) is None
    assert "the masks did not cancel" in aggregate_problem(PARAMS, total + 1, values, n)
    assert "exceeds 2 sites x quantization_range" in aggregate_problem(PARAMS, total, [values[0] + 1], n)
    assert "outside [0, max_weight 100]" in aggregate_problem(PARAMS, total, values, [20, 101])


def test_a_round_trained_without_aggregate_is_a_ledger_marker_the_audit_accepts(tmp_path):
    key = KEYS["hospital_a"]
    ledger = SiteLedger(tmp_path / "ledger.jsonl", "hospital_a", key)
    worker = SimpleNamespace(ledger=ledger, security_log=SecurityLog(tmp_path / SECURITY_LOG_FILE, "hospital_a", key),
                             run_id="r1", lifetime_epsilon=8.0,
                             cfg=SimpleNamespace(privacy=SimpleNamespace(delta=1e-5, max_grad_norm=1.0, accountant="rdp")))
    mechanism = Mechanism(1.1, 0.25, 8)
    eps = epsilon_opacus([mechanism], 1e-5, "rdp")
    ledger.append("r1", 1, "trained", mechanism, 1e-5, 1.0, "rdp", eps, 8.0)
    assert record_no_aggregate(worker, 1, "secagg_refused", "unmask names nodes as both active and dropped")
    assert not record_no_aggregate(worker, 1, "secagg_refused", "again")  # once per round
    assert not record_no_aggregate(worker, 2, "no_unmask", "never trained round 2")  # nothing trained: nothing spent
    entries = ledger.entries()
    assert [(e["round"], e["status"]) for e in entries] == [(1, "trained"), (1, "no_aggregate")]
    assert entries[1]["cumulative_epsilon"] == eps and entries[1]["mechanism"] is None
    assert entries[1]["extra"]["budget_spent"] is True and ledger.spent_epsilon() == eps
    ledger.append("r1", 2, "trained", mechanism, 1e-5, 1.0, "rdp", epsilon_opacus([mechanism] * 2, 1e-5, "rdp"), 8.0)
    audit = audit_ledger(tmp_path / "ledger.jsonl", key.public_key(), expected_site="hospital_a")
    assert audit.status == "ok" and audit.rounds_trained == 2, audit.problems
    assert worker.security_log.events()[0]["kind"] == "round_without_aggregate"
