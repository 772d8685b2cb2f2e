"""A real Flower simulation (2 tiny RETAIN sites, 1 round) where site_b's visits.csv holds a bad cell,
`'7.1 (hemolysed)'`: the site's loader raises an error naming the file and the value. The center must
learn only the code `data_error`; the path and the value stay in site_b's security log."""

import csv
import json

import pytest

from fedcare import simulation
from server import strategy as strategy_module
from shared.config import config_from_dict
from shared.privacy.security_log import SecurityLog
from shared.tasks.registry import build_task

BAD_CELL = "7.1 (hemolysed)"
TINY = {
    "task": "retain_aki",
    "data": {"sites": ["site_a", "site_b"], "synth_sizes": [60, 40], "max_events": 8},
    "model": {"name": "retain", "emb_dim": 4, "alpha_hidden": 4, "beta_hidden": 4},
    "train": {"rounds": 1, "local_epochs": 1, "batch_size": 16, "lr": 0.01, "loss": "bce"},
    "privacy": {"target_epsilon": 4.0},
    "strategy": {"name": "fedavg", "min_sites": 1},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("site_error")
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root / "data")
    raw["output_dir"] = str(root / "runs")
    cfg = config_from_dict(raw, "tiny.yaml")
    build_task(cfg).synthesize(root / "data", list(cfg.data.sites), 0)
    visits = root / "data" / "site_b" / "visits.csv"
    rows = list(csv.DictReader(visits.open()))
    rows[3]["creatinine"] = BAD_CELL
    with visits.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    received = []  # the site record of every reply the center's strategy was handed
    original_train = strategy_module.SiteTracking.aggregate_train
    original_eval = strategy_module.SiteTracking.aggregate_evaluate

    def spy(original):
        def aggregate(self, server_round, replies):
            replies = list(replies)
            received.extend(dict(m.content["site"]) if m.has_content() else {"error": m.error.reason} for m in replies)
            return original(self, server_round, replies)
        return aggregate

    mp = pytest.MonkeyPatch()
    # as in a deployment, where the center never sees a site's data: no up-front check by the launcher
    mp.setattr(simulation, "ensure_site_data", lambda cfg, console: None)
    mp.setattr(strategy_module.SiteTracking, "aggregate_train", spy(original_train))
    mp.setattr(strategy_module.SiteTracking, "aggregate_evaluate", spy(original_eval))
    try:
        run_dir, summary = simulation.simulate(cfg)
    finally:
        mp.undo()
    return visits, run_dir, summary, received


def test_the_center_receives_only_the_code(run):
    visits, _, _, received = run
    from_b = [r for r in received if r.get("name") == "site_b"]
    codes_only = [{k: v for k, v in r.items() if k != "ledger_head"} for r in from_b]  # the head is a SHA-256
    assert from_b and all(r == {"name": "site_b", "status": "refused", "reason": "data_error"} for r in codes_only)
    assert BAD_CELL not in json.dumps(received) and "visits.csv" not in json.dumps(received)


def test_metrics_and_summary_hold_neither_the_path_nor_the_value(run):
    visits, run_dir, summary, _ = run
    for name in ("metrics.json", "summary.json"):
        text = (run_dir / name).read_text()
        assert BAD_CELL not in text and "hemolysed" not in text and "visits.csv" not in text
        assert str(visits.parent) not in text
    assert summary["sites"]["site_b"]["first_stop"] == {"round": 1, "status": "refused", "reason": "data_error"}
    assert summary["sites"]["site_a"]["rounds_trained"] == [1]


def test_the_detail_stays_in_the_sites_security_log(run):
    visits, run_dir, _, _ = run
    log = SecurityLog(run_dir / "sites" / "site_b" / "security_log.jsonl", "site_b")
    refusals = [e for e in log.events() if e["kind"] == "refused"]
    assert {e["phase"] for e in refusals} == {"train", "evaluate"}
    assert all(e["reason"] == "data_error" and BAD_CELL in e["detail"] and "visits.csv" in e["detail"] for e in refusals)
