"""A real Flower simulation, 2 tiny sites x 2 rounds, each with its own site policy: site_a approved
the run, site_b did not. site_b must refuse every message (no arrays) and both security logs must list
every exchange; `fedcare audit` must catch an edited or deleted security-log line."""

import json
import shutil

import pytest
from flwr.app import ArrayRecord

from fedcare.audit_run import audit_path
from fedcare.cli import main
from fedcare.simulation import simulate
from server import strategy as strategy_module
from shared.config import config_from_dict
from shared.privacy.security_log import SecurityLog
from shared.privacy.site_policy import SitePolicy, approve_run, run_hash, save_site_policy

TINY = {
    "task": "event_mortality",
    "data": {"sites": ["site_a", "site_b"], "synth_sizes": [120, 100], "max_events": 16, "text_dim": 8},
    "model": {"name": "event_transformer", "d_model": 8, "layers": 1, "heads": 2, "ff": 16, "pooling_heads": 2,
              "mlp_hidden": 8},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 32, "lr": 0.003},
    "privacy": {"target_epsilon": 4.0},
    "strategy": {"name": "fedavg", "min_sites": 2},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy_sim")
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root / "data")
    raw["output_dir"] = str(root / "runs")
    policies = {site: root / f"{site}_policy.yaml" for site in ("site_a", "site_b")}
    for path in policies.values():
        save_site_policy(SitePolicy(source=str(path), privacy=SitePolicy(source="").privacy), path)
    raw["federation"] = {"site_policies": {site: str(path) for site, path in policies.items()}}
    cfg = config_from_dict(raw, "tiny.yaml")
    approved = SitePolicy(source=str(policies["site_a"]), site="site_a")
    approved.privacy.min_noise_multiplier = 0.1
    approve_run(approved, cfg, run_hash(cfg), parameters=0)
    save_site_policy(approved, policies["site_a"])

    received = []
    original_train = strategy_module.SiteTracking.aggregate_train
    original_eval = strategy_module.SiteTracking.aggregate_evaluate

    def spy_train(self, server_round, replies):
        replies = list(replies)
        received.extend(("train", server_round, m) for m in replies)
        return original_train(self, server_round, replies)

    def spy_eval(self, server_round, replies):
        replies = list(replies)
        received.extend(("evaluate", server_round, m) for m in replies)
        return original_eval(self, server_round, replies)

    mp = pytest.MonkeyPatch()
    mp.setattr(strategy_module.SiteTracking, "aggregate_train", spy_train)
    mp.setattr(strategy_module.SiteTracking, "aggregate_evaluate", spy_eval)
    try:
        run_dir, summary = simulate(cfg)
    finally:
        mp.undo()
    return cfg, run_dir, summary, received


def _site(msg):
    return msg.content["site"]["name"]


def test_unapproved_site_refuses_every_message_without_arrays(run):
    _, _, summary, received = run
    b_replies = [(phase, r, m) for phase, r, m in received if _site(m) == "site_b"]
    assert sorted((phase, r) for phase, r, _ in b_replies) == [("evaluate", 1), ("evaluate", 2), ("train", 1), ("train", 2)]
    for _, _, msg in b_replies:
        assert "arrays" not in msg.content
        assert dict(msg.content["metrics"]) == {"refused": 1}
        assert msg.content["site"]["status"] == "refused"
        assert msg.content["site"]["reason"] == "not_approved"  # a code: the detail stays in the site's log
    stop = summary["sites"]["site_b"]["first_stop"]
    assert stop["status"] == "refused" and stop["round"] == 1 and stop["reason"] == "not_approved"
    assert summary["sites"]["site_b"]["rounds_trained"] == []


def test_approved_site_trains(run):
    _, _, summary, received = run
    assert summary["sites"]["site_a"]["rounds_trained"] == [1, 2]
    a_train = [m for phase, _, m in received if phase == "train" and _site(m) == "site_a"]
    assert len(a_train) == 2 and all(isinstance(m.content["arrays"], ArrayRecord) for m in a_train)


def test_security_logs_list_every_exchange(run):
    _, run_dir, _, _ = run
    for site, status in (("site_a", "trained"), ("site_b", "refused")):
        events = SecurityLog(run_dir / "sites" / site / "security_log.jsonl", site).events()
        got = [(e["kind"], e.get("message_type"), e.get("round")) for e in events if e["kind"] == "received"]
        assert got == [("received", t, r) for r in (1, 2) for t in ("train", "evaluate")]
        sent = [e for e in events if e["kind"] == "sent"]
        assert len(sent) == 4 and all("error" not in e for e in sent)
        received = [e for e in events if e["kind"] == "received"]
        assert all(e["size_bytes"] > 0 and e["records"]["arrays"]["type"] == "ArrayRecord" for e in received)
        train_sent = [e for e in sent if e["message_type"] == "train"]
        assert [e["status"] for e in train_sent] == [status, status]
        for e in sent:
            for array in e["records"].get("arrays", {}).get("arrays", {}).values():
                assert set(array) == {"dtype", "shape", "bytes"}  # described, never the values
        if site == "site_a":
            assert sum(e["kind"] == "policy_approved" for e in events) == 1
            assert all(e["records"]["arrays"]["arrays"] for e in train_sent)
        else:
            assert [e["round"] for e in events if e["kind"] == "refused"] == [1, 1, 2, 2]
            assert all("arrays" not in e["records"] for e in sent)


def test_audit_accepts_the_logs_and_detects_edits_and_deletions(run, tmp_path):
    _, run_dir, _, _ = run
    assert all(a.status == "ok" for a in audit_path(run_dir))
    assert main(["audit", str(run_dir)]) == 0
    for edit in ("change", "delete"):
        copy = tmp_path / edit
        shutil.copytree(run_dir, copy)
        log = copy / "sites" / "site_b" / "security_log.jsonl"
        lines = log.read_text().splitlines()
        if edit == "change":
            lines[2] = lines[2].replace('"refused"', '"trained"', 1)
        else:
            del lines[2]
        log.write_text("\n".join(lines) + "\n")
        audits = {a.site: a for a in audit_path(copy)}
        assert audits["site_a"].status == "ok" and audits["site_b"].status == "tampered"
        assert any(p.startswith("security log line 3:") for p in audits["site_b"].problems)
        assert main(["audit", str(copy)]) == 1
