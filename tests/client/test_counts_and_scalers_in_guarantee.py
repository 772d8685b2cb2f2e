"""Every number a site releases is inside the DP guarantee (issue 17), played as the center:

- the training reply (the real message a ClientApp sends) never carries the exact training size, nor the
  sample rate or steps that give it: its FedAvg weight is the run's noisy count, one Gaussian release in the
  ledger (planned with training), sent again unchanged in later rounds;
- the preprocessing does not depend on any patient: changing the site's patients' values (so any one
  training patient's) leaves the site's scalers identical (event mortality, RETAIN AKI).
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from client import site_worker as site_worker_module
from client.replies import outcome_content
from client.site_worker import UPDATES_DIR, SiteSettings, SiteWorker
from shared.config import config_from_dict
from shared.privacy.accountant import Mechanism
from shared.tasks import event_mortality, retain_aki
from shared.tasks.registry import build_task
from shared.training.dp_trainer import sample_rate_for, steps_per_epoch

SITE = "site_a"
TINY = {
    "task": "event_mortality",
    "data": {"sites": [SITE], "synth_sizes": [120], "max_events": 16, "text_dim": 16},
    "model": {"name": "event_transformer", "d_model": 16, "layers": 0, "heads": 2, "ff": 32, "pooling_heads": 1,
              "mlp_hidden": 8},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 32},
    "privacy": {"target_epsilon": 4.0},
}


def _cfg(root, task="event_mortality", **sections):
    raw = json.loads(json.dumps(TINY)) if task == "event_mortality" else {
        "task": "retain_aki", "data": {"sites": [SITE], "synth_sizes": [60], "max_events": 8},
        "model": {"name": "retain", "emb_dim": 8, "alpha_hidden": 8, "beta_hidden": 8, "dropout": 0.0}}
    raw["data"]["root"] = str(root)
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw, "tiny.yaml")


def _numbers(content):
    """Every scalar of a reply's metric and config records."""
    out = []
    for name in ("metrics", "site"):
        for value in dict(content[name]).values():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append(float(value))
    return out


def test_the_training_reply_carries_a_ledgered_noisy_count_not_the_training_size(tmp_path, monkeypatch):
    root = tmp_path / "data"
    cfg = _cfg(root)
    build_task(cfg).synthesize(root, [SITE], 0)
    # a fixed non-zero draw, so that "the exact size never appears" cannot fail by chance (noise rounding to 0)
    monkeypatch.setattr(site_worker_module, "secure_rng", lambda: np.random.default_rng(1))
    worker = SiteWorker(cfg, SiteSettings(site=SITE, data_dir=root / SITE, state_dir=tmp_path / "state"), "run-1")
    state = worker.task.build_model().state_dict()
    n = worker.data.n_train
    exact = {float(n), sample_rate_for(n, 32), float(steps_per_epoch(n, 32))}
    sent = []
    for r in (1, 2):
        outcome = worker.train_round(r, state)
        assert outcome.status == "trained"
        content = outcome_content(worker, outcome)  # what the ClientApp puts into its reply message
        metrics = dict(content["metrics"])
        assert not {"sample_rate", "steps", "train_loss", "num_examples"} & set(metrics)
        assert not exact & set(_numbers(content)), f"the reply gives the training size away: {metrics}"
        sent.append(metrics["num-examples"])
    counts = [e for e in worker.ledger.entries() if e["extra"].get("phase") == "count"]
    assert len(counts) == 1  # released once per run, re-sent unchanged (post-processing)
    assert sent == [counts[0]["extra"]["released"]] * 2 and sent[0] != n and abs(sent[0] - n) < 60
    assert counts[0]["mechanism"] == {"noise_multiplier": cfg.privacy.count_noise_multiplier, "sample_rate": 1.0, "steps": 1}
    # planned with training under the one target: the noise plan already paid for it
    assert Mechanism(**counts[0]["mechanism"]) in worker.ledger.mechanisms()
    assert worker.ledger.spent_epsilon() <= 4.0 * 1.005


def test_under_secure_aggregation_the_sent_weight_is_capped_at_max_weight_and_the_saved_update_agrees(tmp_path):
    """The noisy count can exceed secure_aggregation.max_num_examples; the site caps it (post-processing) before it
    saves and sends the update, so the update kept for re-sending carries the weight SecAgg+ really used."""
    root = tmp_path / "data"
    cfg = _cfg(root, secure_aggregation={"enabled": True, "max_num_examples": 20},
               data={"sites": [SITE, "site_b", "site_c"], "synth_sizes": [120, 60, 60]})  # SecAgg+ needs 3 sites
    build_task(cfg).synthesize(root, cfg.data.sites, 0)
    worker = SiteWorker(cfg, SiteSettings(site=SITE, data_dir=root / SITE, state_dir=tmp_path / "state"), "run-1")
    assert worker.data.n_train > 20 + 6 * cfg.privacy.count_noise_multiplier  # the draw exceeds the bound
    outcome = worker.train_round(1, worker.task.build_model().state_dict())
    released = next(e for e in worker.ledger.entries() if e["extra"].get("phase") == "count")["extra"]["released"]
    assert released > 20 and outcome.metrics["num-examples"] == 20
    saved = torch.load(tmp_path / "state" / UPDATES_DIR / "run-1" / "round_0001.pt", weights_only=True)
    assert saved["round"] == 1 and saved["metrics"]["num-examples"] == 20


@pytest.mark.parametrize("task", ["event_mortality", "retain_aki"])
def test_changing_the_site_patients_changes_no_scaler(tmp_path, task):
    root = tmp_path / "data"
    cfg = _cfg(root, task)
    build_task(cfg).synthesize(root, [SITE], 0)
    changed = tmp_path / "changed"
    shutil.copytree(root / SITE, changed / SITE)
    prepared = build_task(cfg)
    prepared.prepare_site(root / SITE, SITE, tmp_path / "d")
    if task == "event_mortality":  # every age mirrored and every charted value far off
        stays = pd.read_csv(changed / SITE / "stays.csv")
        stays["age"] = 120 - pd.to_numeric(stays["age"], errors="coerce")
        stays.to_csv(changed / SITE / "stays.csv", index=False)
        events = pd.read_csv(changed / SITE / "events.csv")
        lab = events["value"].notna()
        events.loc[lab, "value"] = pd.to_numeric(events.loc[lab, "value"], errors="coerce") * 50
        events.to_csv(changed / SITE / "events.csv", index=False)
    else:
        visits = pd.read_csv(changed / SITE / "visits.csv")
        visits["creatinine"] = visits["creatinine"] * 10
        visits.to_csv(changed / SITE / "visits.csv", index=False)
    data_d2 = build_task(cfg).prepare_site(changed / SITE, SITE, tmp_path / "d2")
    name = {"event_mortality": event_mortality.ENCODER_FILE, "retain_aki": retain_aki.ENCODER_FILE}[task]
    assert (tmp_path / "d" / name).read_text() == (tmp_path / "d2" / name).read_text()
    assert len(data_d2.train) > 0
