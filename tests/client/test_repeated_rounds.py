"""A round asked again (the center resumed, a reply was lost): the site re-sends the update it
already logged, never trains or logs a (run, round) twice, and refuses a different global model."""

import json

import pytest
import torch

from client.site_worker import UPDATES_DIR, SiteSettings, SiteWorker, state_digest
from shared.config import config_from_dict
from shared.privacy.ledger import SiteLedger
from shared.tasks.registry import build_task

TINY = {
    "task": "event_mortality",
    "data": {"sites": ["site_a"], "synth_sizes": [120], "max_events": 16, "text_dim": 16},
    "model": {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2,
              "mlp_hidden": 16},
    "train": {"rounds": 3, "local_epochs": 1, "batch_size": 32},
    "privacy": {"target_epsilon": 4.0},
}


@pytest.fixture(scope="module")
def worker_and_first_round(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root / "data")
    cfg = config_from_dict(raw, "tiny.yaml")
    build_task(cfg).synthesize(root / "data", ["site_a"], 0)
    settings = SiteSettings(site="site_a", data_dir=root / "data" / "site_a", state_dir=root / "state", delta=1e-5)
    worker = SiteWorker(cfg, settings, "run-1")
    global_state = worker.task.build_model().state_dict()
    first = worker.train_round(1, global_state)
    return worker, global_state, first, cfg, settings


def test_first_round_trains_and_logs_once(worker_and_first_round):
    worker, _, first, _, _ = worker_and_first_round
    assert first.status == "trained" and first.arrays is not None
    # the run's noisy count (its FedAvg weight) is released once, then the round's training
    assert [(e["run_id"], e["round"], e["extra"].get("phase")) for e in worker.ledger.entries()] == [
        ("run-1", 1, "count"), ("run-1", 1, "train")]


def test_same_round_same_global_model_resends_the_logged_update(worker_and_first_round):
    worker, global_state, first, cfg, settings = worker_and_first_round
    fresh = SiteWorker(cfg, settings, "run-1")  # a new ClientApp process after a restart
    again = fresh.train_round(1, {k: v.clone() for k, v in global_state.items()})
    assert again.status == "trained"
    assert all(torch.equal(again.arrays[k], first.arrays[k]) for k in first.arrays)
    assert again.metrics == pytest.approx(first.metrics)
    assert len(SiteLedger(settings.state_dir / "privacy_ledger.jsonl", "site_a").entries()) == 2


def test_same_round_other_global_model_is_refused_without_a_ledger_entry(worker_and_first_round):
    worker, global_state, _, _, settings = worker_and_first_round
    other = {k: v + 0.5 if v.is_floating_point() else v for k, v in global_state.items()}
    assert state_digest(other) != state_digest(global_state)
    outcome = worker.train_round(1, other)
    assert outcome.status == "refused" and outcome.arrays is None
    assert outcome.reason == "round_conflict" and "already trained" in outcome.detail
    assert worker.security_log.events()[-1]["detail"] == outcome.detail
    assert len(worker.ledger.entries()) == 2


def test_the_round_before_the_last_is_still_answered_from_its_saved_update(worker_and_first_round):
    """A center that sent round 3's training with round 2's evaluation and resumed from round 1's checkpoint
    (round 2's did not load) repeats round 2 after this site trained round 3: the site re-sends round 2's update,
    then round 3's."""
    worker, global_state, _, _, settings = worker_and_first_round
    second_global = {k: v + 0.25 if v.is_floating_point() else v for k, v in global_state.items()}
    third_global = {k: v - 0.25 if v.is_floating_point() else v for k, v in global_state.items()}
    second, third = worker.train_round(2, second_global), worker.train_round(3, third_global)
    assert second.status == third.status == "trained"
    saved = sorted(p.name for p in (settings.state_dir / UPDATES_DIR / "run-1").iterdir())
    assert saved == ["round_0002.pt", "round_0003.pt"]  # the two newest are kept
    entries = len(worker.ledger.entries())
    again = [worker.train_round(2, second_global), worker.train_round(3, third_global)]
    for sent, resent in zip((second, third), again, strict=True):
        assert resent.status == "trained" and all(torch.equal(resent.arrays[k], sent.arrays[k]) for k in sent.arrays)
    assert len(worker.ledger.entries()) == entries  # nothing trained or spent again
    gone = worker.train_round(1, global_state)  # its update is no longer kept: refused, never trained again
    assert gone.reason == "round_conflict" and "only the last 2 updates" in gone.detail


def test_a_run_asking_a_looser_delta_than_the_site_allows_is_refused(worker_and_first_round):
    worker, global_state, _, cfg, settings = worker_and_first_round
    strict = SiteSettings(**{**settings.__dict__, "delta": 1e-7, "state_dir": settings.state_dir.parent / "strict"})
    outcome = SiteWorker(cfg, strict, "run-1").train_round(1, global_state)
    assert outcome.status == "refused" and outcome.reason == "delta_refused" and outcome.arrays is None
    assert "above this site's delta" in outcome.detail


def test_state_digest_sees_names_dtypes_and_values():
    a = {"w": torch.zeros(3), "b": torch.ones(2, dtype=torch.bfloat16)}
    assert state_digest(a) == state_digest({k: v.clone() for k, v in a.items()})
    assert state_digest(a) != state_digest({"w": torch.zeros(3, dtype=torch.float64), "b": a["b"]})
    assert state_digest(a) != state_digest({"v": a["w"], "b": a["b"]})
    assert state_digest(a) != state_digest({"w": torch.tensor([0.0, 0.0, 1e-7]), "b": a["b"]})
