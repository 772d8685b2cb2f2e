"""A real simulation (3 tiny sites x 2 rounds, one without budget) with site-level DP at the center."""

import json

import pytest

from fedcare.simulation import simulate
from shared.config import config_from_dict

TINY = {
    "task": "event_mortality",
    "data": {"sites": ["site_a", "site_b", "site_c"], "synth_sizes": [160, 120, 60], "max_events": 32, "text_dim": 16},
    "model": {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2,
              "mlp_hidden": 16},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 32, "lr": 0.003},
    "privacy": {"target_epsilon": 4.0, "site_targets": {"site_c": 0.001},
                "site_level_dp": {"enabled": True, "mode": "fixed", "noise_multiplier": 0.7, "clipping_norm": 0.5}},
    "strategy": {"name": "fedavg", "min_sites": 2},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sitedp")
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root / "data")
    raw["output_dir"] = str(root / "runs")
    run_dir, summary = simulate(config_from_dict(raw, "tiny_site_dp.yaml"))
    return run_dir, summary, json.loads((run_dir / "metrics.json").read_text())


def test_each_round_reports_a_growing_site_level_epsilon(run):
    _, summary, metrics = run
    assert summary["complete"]
    per_round = metrics["site_level_dp"]
    assert set(per_round) == {"1", "2"}
    assert 0 < per_round["1"]["epsilon"] < per_round["2"]["epsilon"]
    for rec in per_round.values():
        # noise std 0.7 x 0.5 / 3 sites over the sensitivity 0.5 / 3 of the fixed-denominator mean (site_c has no
        # budget: it is left out of the sum, not of the denominator)
        assert rec["effective_noise_multiplier"] == pytest.approx(0.7) and rec["sensitivity"] == pytest.approx(0.5 / 3)
        assert rec["sites_aggregated"] == 2 and rec["clipping_norm"] == 0.5 and rec["delta"] == 1e-5
        assert rec["epsilon_independent"] == pytest.approx(rec["epsilon"], rel=0.01)
    assert summary["site_level_dp"]["per_round"] == {r: rec["epsilon"] for r, rec in per_round.items()}


def test_summary_puts_site_level_epsilon_next_to_each_sites_sample_level_epsilon(run):
    _, summary, metrics = run
    final = metrics["site_level_dp"]["2"]["epsilon"]
    for site in ("site_a", "site_b"):
        s = summary["sites"][site]
        assert s["site_level_epsilon"] == pytest.approx(final)
        assert 0 < s["epsilon"] <= 4.0  # the sample-level (DP-SGD) epsilon of the site's ledger
    assert summary["sites"]["site_c"]["site_level_epsilon"] == 0.0  # never contributed to a release
