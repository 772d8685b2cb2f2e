"""A site's data is prepared once per site and data, and its noise planned once per run, whichever process
asks (issue 23: every Ray actor rebuilt each site). Two SiteWorker objects stand for two processes."""

import json

import pytest
import torch

import client.site_worker as site_worker_module
from client.site_data_cache import BUILDS_FILE, CACHE_DIR
from client.site_worker import SiteSettings, SiteWorker
from shared.config import config_from_dict
from shared.tasks.registry import build_task

TINY = {
    "task": "event_mortality",
    "data": {"sites": ["site_a"], "synth_sizes": [90], "max_events": 16, "text_dim": 16},
    "model": {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2,
              "mlp_hidden": 16},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 32},
    "privacy": {"target_epsilon": 4.0},
}


@pytest.fixture
def site(tmp_path):
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(tmp_path / "data")
    cfg = config_from_dict(raw, "tiny.yaml")
    build_task(cfg).synthesize(tmp_path / "data", ["site_a"], 0)
    return cfg, SiteSettings(site="site_a", data_dir=tmp_path / "data" / "site_a", state_dir=tmp_path / "state")


def _builds(settings):
    path = settings.state_dir / CACHE_DIR / BUILDS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _same(a, b):
    return all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a.tensors, b.tensors, strict=True))


def test_second_process_loads_the_first_ones_data_without_building(site, monkeypatch):
    cfg, settings = site
    calls = []
    original = build_task(cfg).__class__.prepare_site

    def counted(self, *args):
        calls.append(args)
        return original(self, *args)

    monkeypatch.setattr(build_task(cfg).__class__, "prepare_site", counted)
    first = SiteWorker(cfg, settings, "run-1").data
    second = SiteWorker(cfg, settings, "run-1").data
    assert len(calls) == 1 and len(_builds(settings)) == 1
    assert _same(first.train, second.train) and _same(first.val, second.val)
    assert second.info == first.info and second.n_train == first.n_train > 0
    stored = list((settings.state_dir / CACHE_DIR).glob("*.pt"))
    assert len(stored) == 1 and stored[0].stat().st_mode & 0o077 == 0  # the site's private state only


def test_changed_data_is_built_again(site):
    cfg, settings = site
    before = SiteWorker(cfg, settings, "run-1").data
    stays = settings.data_dir / "stays.csv"
    lines = stays.read_text().splitlines(keepends=True)
    stays.write_text("".join(lines[:-10]))  # ten stays fewer
    after = SiteWorker(cfg, settings, "run-1").data
    assert len(_builds(settings)) == 2
    assert after.n_train + after.n_val == before.n_train + before.n_val - 10
    assert len(list((settings.state_dir / CACHE_DIR).glob("*.pt"))) == 1  # the stale entry is gone


def test_a_damaged_cache_entry_is_rebuilt_not_trusted(site):
    cfg, settings = site
    first = SiteWorker(cfg, settings, "run-1").data
    (entry,) = (settings.state_dir / CACHE_DIR).glob("*.pt")
    entry.write_bytes(b"not a torch file")
    again = SiteWorker(cfg, settings, "run-1").data
    assert len(_builds(settings)) == 2 and _same(first.train, again.train)


def test_noise_is_planned_once_per_run_across_processes(site, monkeypatch):
    cfg, settings = site
    plans = []
    original = site_worker_module.plan_noise_multiplier
    monkeypatch.setattr(site_worker_module, "plan_noise_multiplier", lambda *a, **k: plans.append(1) or original(*a, **k))
    first = SiteWorker(cfg, settings, "run-1").plan()
    second = SiteWorker(cfg, settings, "run-1").plan()
    assert len(plans) == 1 and second == first
