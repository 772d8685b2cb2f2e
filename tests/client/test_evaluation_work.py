"""Evaluation work per site grows with the site's data, not with the number of sites (issue 23): at a fixed
total of stays split over K = 2 and 8 sites, each site scores its own validation rows once per round and
runs no bootstrap for a DP release (the bootstrap CIs used to be computed and thrown away). Counts work."""

import json

import pytest

import shared.metrics as metrics_module
from benchmarks.scaling import synthesize
from client.site_worker import SiteSettings, SiteWorker
from shared.config import config_from_dict

TOTAL = 240
MODEL = {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2, "mlp_hidden": 16}


def _evaluation_work(tmp_path, k, monkeypatch):
    sites = [f"site_{i:02d}" for i in range(k)]
    sizes = [TOTAL // k] * k
    raw = {"task": "event_mortality", "data": {"sites": sites, "synth_sizes": sizes, "max_events": 16, "text_dim": 16,
                                               "root": str(tmp_path / "data")},
           "model": MODEL, "train": {"rounds": 2, "local_epochs": 1, "batch_size": 16}, "privacy": {"target_epsilon": 8.0},
           "strategy": {"name": "fedavg", "min_sites": 2}}
    cfg = config_from_dict(json.loads(json.dumps(raw)), "work.yaml")
    synthesize(tmp_path / "data", sites, sizes, 0)
    scored, boot = {}, {}
    current = {"site": None}
    original_predict, original_boot = SiteWorker.predict, metrics_module.bootstrap_ci

    def counted_predict(self, model, dataset):
        y, out, loss = original_predict(self, model, dataset)
        scored[current["site"]] = scored.get(current["site"], 0) + len(y)
        return y, out, loss

    def counted_boot(fn, *arrays, n_boot=1000, **kwargs):
        boot[current["site"]] = boot.get(current["site"], 0) + n_boot * len(arrays[0])
        return original_boot(fn, *arrays, n_boot=n_boot, **kwargs)

    monkeypatch.setattr(SiteWorker, "predict", counted_predict)
    monkeypatch.setattr(metrics_module, "bootstrap_ci", counted_boot)
    n_val = {}
    for site in sites:
        current["site"] = site
        worker = SiteWorker(cfg, SiteSettings(site, tmp_path / "data" / site, tmp_path / "state" / site), "run-1")
        outcome = worker.evaluate_round(worker.task.build_model().state_dict(), 1)
        assert outcome.status == "evaluated" and outcome.metrics  # a DP release was made
        n_val[site] = worker.data.n_val
    return scored, boot, n_val


@pytest.mark.parametrize("k", [2, 8])
def test_each_site_scores_only_its_own_rows_and_bootstraps_nothing(tmp_path, monkeypatch, k):
    scored, boot, n_val = _evaluation_work(tmp_path, k, monkeypatch)
    assert scored == n_val  # one pass over the site's validation rows
    assert boot == {}  # no bootstrap resampling for a DP release
    # at fixed total data the work summed over sites stays put (only the split's rounding moves it)
    assert abs(sum(scored.values()) - TOTAL * 0.25) <= k
