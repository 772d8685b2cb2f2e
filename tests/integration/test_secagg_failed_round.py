"""A SecAgg+ round that fails after the sites trained, in a real `fedcare simulate` run (3 tiny sites, 1 round,
DP on): the center's unmask request names a site as both active and dropped, every site's guard refuses it.
The sites trained before the unmask stage (the protocol needs the masked update first), so their ledgers say
so: the round's `trained` entry, then a `no_aggregate` entry (budget spent, no aggregate), which the audit
accepts; the run's summary marks the round failed and is never complete."""

import json

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from fedcare.simulation import simulate
from server import secure_aggregation as secure_module
from shared.config import config_from_dict
from shared.privacy.audit import audit_ledger
from shared.privacy.keys import load_public_key
from shared.privacy.ledger import SiteLedger
from shared.privacy.security_log import SECURITY_LOG_FILE, SecurityLog
from tests.integration.test_secure_aggregation_run import TINY

SITES = ["site_a", "site_b", "site_c"]


def _leaking_unmask(self, grid, context, state):
    """A curious center: ask every site for the victim's mask-key shares while listing it as active too."""
    nodes, victim = sorted(state.active_node_ids), min(state.active_node_ids)
    messages = [Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({
        Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: nodes, Key.DEAD_NODE_ID_LIST: [victim]})}),
        dst_node_id=n, message_type="train", group_id="1") for n in nodes]
    grid.send_and_receive(messages, timeout=self.timeout)
    return False


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("secagg_failed")
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root / "data")
    raw["output_dir"] = str(root / "runs")
    raw["train"]["rounds"] = 1
    raw["privacy"] = {"target_epsilon": 4.0}  # every site trains
    cfg = config_from_dict(raw, "tiny_secagg_failed.yaml")
    run_dir = root / "runs" / "failed"
    mp = pytest.MonkeyPatch()
    mp.setattr(secure_module.AuthenticatedSecAggPlus, "unmask_stage", _leaking_unmask)
    try:
        with pytest.raises(RuntimeError, match="secure aggregation failed in rounds \\[1\\]") as stopped:
            simulate(cfg, run_dir=run_dir)
    finally:
        mp.undo()
    return run_dir, json.loads((run_dir / "summary.json").read_text()), str(stopped.value)


def test_the_summary_marks_the_round_failed_never_complete(run):
    run_dir, summary, message = run
    assert summary["complete"] is False and "\n" not in message
    assert summary["secure_aggregation"]["rounds_failed"] == [1] and summary["secure_aggregation"]["rounds_aggregated"] == []
    assert any(e.startswith("round 1: secure aggregation failed") for e in summary["events"])


def test_every_site_refused_and_its_ledger_states_the_budget_spent_without_aggregate(run):
    run_dir, _, _ = run
    for site in SITES:
        folder = run_dir / "sites" / site
        entries = [e for e in SiteLedger(folder / "privacy_ledger.jsonl", site).entries()
                   if (e.get("extra") or {}).get("phase") != "count"]  # the noisy FedAvg weight is a release of its own
        assert [(e["round"], e["status"]) for e in entries] == [(1, "trained"), (1, "no_aggregate")]
        marker = entries[1]
        assert marker["extra"]["reason"] == "secagg_refused" and marker["extra"]["budget_spent"] is True
        assert marker["mechanism"] is None and marker["cumulative_epsilon"] == entries[0]["cumulative_epsilon"] > 0
        audit = audit_ledger(folder / "privacy_ledger.jsonl", load_public_key(folder / "keys" / f"{site}.pub"),
                             expected_site=site)
        assert audit.status == "ok" and audit.rounds_trained == 1, audit.problems
        kinds = [e["kind"] for e in SecurityLog(folder / SECURITY_LOG_FILE, site).events()]
        assert "secagg_request_refused" in kinds and "round_without_aggregate" in kinds
