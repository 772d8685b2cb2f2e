"""A real Flower simulation of sleep staging with the contrastive pretraining phase on: 2 tiny PSG
sites, 1 pretraining round then 2 fine-tuning rounds under one noise plan and one ledger per site."""

from __future__ import annotations

import json

import pytest
import torch

from fedcare.audit_run import audit_path
from fedcare.simulation import simulate
from server.checkpoints import load_checkpoint
from server.federation import pretrain_checkpoint_path
from shared.config import config_from_dict
from shared.privacy.ledger import SiteLedger
from shared.tasks.registry import build_task
from tests.shared.tasks.test_sleep_tasks import _config

SITES = ("a", "b")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sleep_pretrain")
    raw = _config("sleep_staging", root / "data", rounds=2, local_epochs=1, lr=0.01)
    raw["data"]["sites"], raw["data"]["synth_sizes"] = list(SITES), [10, 8]
    raw["pretrain"] = {"enabled": True, "rounds": 1, "local_epochs": 1, "lr": 0.01}
    raw["privacy"]["target_epsilon"] = 6.0
    raw["output_dir"] = str(root / "runs")
    cfg = config_from_dict(raw, "sleep_pretrain.yaml")
    run_dir, summary = simulate(cfg)
    return cfg, run_dir, summary


def test_fine_tuning_starts_from_the_pretrained_encoder(run):
    cfg, run_dir, summary = run
    pretrained = load_checkpoint(pretrain_checkpoint_path(run_dir))
    assert pretrained["phase"] == "pretrain" and pretrained["round"] == 1
    start = load_checkpoint(run_dir / "checkpoints" / "round_001.pt")["state_dict"]  # the fine-tuning phase's start
    encoder_keys = [k for k in start if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(start[k], pretrained["state_dict"][k]) for k in encoder_keys)
    torch.manual_seed(cfg.seed)  # the encoder did change in pretraining: not the fresh initialisation
    fresh = build_task(cfg).build_model().state_dict()
    assert any(not torch.equal(fresh[k], start[k]) for k in encoder_keys)
    assert all(torch.equal(fresh[k], start[k]) for k in start if not k.startswith("encoder."))  # heads: fresh
    final = load_checkpoint(run_dir / "checkpoints" / "round_003.pt")
    assert final["round"] == 3 and not (run_dir / "checkpoints" / "round_000.pt").exists()
    assert summary["rounds_planned"] == 3 and summary["pretrain_rounds"] == 1 and summary["complete"]


def test_both_phases_in_one_ledger_within_the_target(run):
    cfg, run_dir, summary = run
    for site in SITES:
        entries = SiteLedger(run_dir / "sites" / site / "privacy_ledger.jsonl", site).entries()
        # the fine-tuning rounds' evaluations are DP releases (noisy confusion matrices) in the same ledger
        assert [(e["round"], e["extra"]["phase"]) for e in entries] == [
            (1, "count"), (1, "pretrain"), (2, "train"), (2, "evaluate"), (3, "train"), (3, "evaluate")]
        noise = {e["mechanism"]["noise_multiplier"] for e in entries if e["extra"]["phase"] not in ("evaluate", "count")}
        assert len(noise) == 1  # one plan for the whole run
        assert all(e["mechanism"]["noise_multiplier"] == 4.0 for e in entries if e["extra"]["phase"] == "evaluate")
        eps = [e["cumulative_epsilon"] for e in entries]
        assert eps == sorted(eps) and eps[-1] <= cfg.privacy.target_epsilon
        assert eps[-1] >= 0.9 * cfg.privacy.target_epsilon  # both phases together spend the budget
        assert summary["sites"][site]["epsilon"] == pytest.approx(eps[-2])  # the last training round's
    for audit in audit_path(run_dir):
        assert audit.status == "ok", audit.problems


def test_pretraining_rounds_report_their_loss_and_fine_tuning_its_kappa(run):
    _, run_dir, _ = run
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    for site in SITES:
        # the pretraining loss is not released under DP, so the center does not ask for it
        assert "train" in rounds["1"][site] and "evaluate" not in rounds["1"][site]
        assert -1.0 <= rounds["3"][site]["evaluate"]["kappa"] <= 1.0  # from the noisy confusion matrix
    assert (run_dir / "sites" / "a" / "reports" / "sleep_staging_confusion.png").read_bytes().startswith(b"\x89PNG")
