"""site.ledger_head: strictly 64 lower-case hex digits on the way out, kept per round by the center."""

import json

import pytest
from flwr.app import ConfigRecord, RecordDict

from server.history import LEDGER_HEADS_FILE, RunHistory
from shared.privacy.ledger import SiteLedger
from shared.privacy.whitelist import OutgoingMessageRefused, check_outgoing

HEAD = "ab" * 32


def _reply(head):
    return RecordDict({"site": ConfigRecord({"name": "a", "status": "trained", "reason": "", "ledger_head": head})})


def test_a_ledger_head_passes_the_whitelist():
    check_outgoing(_reply(HEAD), None)


@pytest.mark.parametrize("head", ["AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32, "ab" * 31 + "a ", "patient 17 creatinine 2.1"])
def test_anything_else_under_ledger_head_is_refused(head):
    with pytest.raises(OutgoingMessageRefused, match="ledger_head"):
        check_outgoing(_reply(head), None)


def test_the_center_keeps_valid_heads_per_round(tmp_path):
    history = RunHistory(tmp_path, ["a", "b"])
    history.record_train(1, "a", "trained", "", {"num-examples": 3}, ledger_head=HEAD)
    history.record_train(1, "b", "trained", "", {"num-examples": 3}, ledger_head="not a hash")
    history.save()
    assert json.loads((tmp_path / LEDGER_HEADS_FILE).read_text()) == {"a": {"1": HEAD}}
    assert json.loads((tmp_path / "metrics.json").read_text())["rounds"]["1"]["a"]["ledger_head"] == HEAD


def test_the_ledger_head_is_the_hash_of_its_last_line(tmp_path):
    import hashlib

    ledger = SiteLedger(tmp_path / "l.jsonl", "a")
    assert ledger.head() == "0" * 64
    ledger.append("r", 1, "refused", None, 1e-5, 1.0, "rdp", 0.0, 4.0)
    last = (tmp_path / "l.jsonl").read_text().splitlines()[-1]
    assert ledger.head() == hashlib.sha256(last.encode()).hexdigest()
