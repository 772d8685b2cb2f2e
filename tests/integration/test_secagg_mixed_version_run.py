"""A mixed-version federation in a real `fedcare simulate` run (3 tiny sites, DP on): the center runs another
SecAgg+ mask expansion than the sites (patched in this process, where the ServerApp runs; the sites run in
Flower's workers). The center reads every site's signed version statement at setup and stops the run before
any site trains, with one line naming the site and its version; the summary is never complete. A site may have
drawn its count release by then (the setup's budget check plans from it): it is in its ledger, never sent."""

import json

import pytest

from fedcare.simulation import simulate
from shared.config import config_from_dict
from shared.privacy import secagg_auth
from shared.privacy.ledger import SiteLedger
from shared.privacy.secagg_masks import MASK_ALGORITHM, STOCK_MASK_ALGORITHM
from tests.integration.test_secure_aggregation_run import TINY

SITES = ["site_a", "site_b", "site_c"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("secagg_mixed")
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root / "data")
    raw["output_dir"] = str(root / "runs")
    raw["privacy"] = {"target_epsilon": 4.0}
    cfg = config_from_dict(raw, "tiny_secagg_mixed.yaml")
    run_dir = root / "runs" / "mixed"
    mp = pytest.MonkeyPatch()
    mp.setattr(secagg_auth, "local_version", lambda: (secagg_auth.PROTOCOL_VERSION, STOCK_MASK_ALGORITHM))
    try:
        with pytest.raises(RuntimeError) as stopped:
            simulate(cfg, run_dir=run_dir)
    finally:
        mp.undo()
    return run_dir, json.loads((run_dir / "summary.json").read_text()), str(stopped.value)


def test_the_run_stops_before_training_with_one_line_naming_the_site_and_version(run):
    run_dir, summary, message = run
    line = message.split("; run folder:")[0]
    assert "\n" not in message
    assert line.startswith("round 1: secure aggregation stopped before training: site 'site_")
    assert f"runs SecAgg+ masks {MASK_ALGORITHM!r}, protocol 'fedcare-secagg+/2'; the federation runs masks " \
           f"{STOCK_MASK_ALGORITHM!r}" in line and line.endswith("; the run stops")
    secure = summary["secure_aggregation"]
    assert summary["complete"] is False and secure["failure"] == line and secure["rounds_failed"] == [1]
    assert line in summary["events"]


def test_no_site_trained(run):
    run_dir, _, _ = run
    for site in SITES:
        entries = SiteLedger(run_dir / "sites" / site / "privacy_ledger.jsonl", site).entries()
        # at most the run's count release, which the setup's budget check planned from (accounted, never sent)
        assert [(e["status"], e["extra"]["phase"]) for e in entries] in ([], [("trained", "count")])
