"""`fedcare audit --mia`: membership inference against a checkpoint at one site, beside its ledger's epsilon."""

import json

import torch

from fedcare.cli import main
from server.checkpoints import save_checkpoint
from shared.config import config_from_dict
from shared.privacy.accountant import Mechanism
from shared.privacy.ledger import SiteLedger
from shared.tasks.registry import build_task

RAW = {
    "task": "event_mortality",
    "data": {"sites": ["site_a"], "synth_sizes": [80], "max_events": 16, "text_dim": 16},
    "model": {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2,
              "mlp_hidden": 16},
}


def test_mia_audit_reports_auc_beside_the_sites_epsilon(tmp_path, capsys):
    cfg = config_from_dict(RAW, "tiny.yaml")
    task = build_task(cfg)
    task.synthesize(tmp_path / "data", ["site_a"], seed=0)
    torch.manual_seed(0)
    ckpt = tmp_path / "run" / "checkpoints" / "round_002.pt"
    save_checkpoint(ckpt, task.build_model().state_dict(), {"config": cfg.to_dict(), "round": 2, "run_id": "r1"})
    state = tmp_path / "run" / "sites" / "site_a"
    ledger = SiteLedger(state / "privacy_ledger.jsonl", "site_a")
    for rnd, eps in ((1, 0.7), (2, 1.1), (3, 1.4)):  # round 3 came after this checkpoint
        ledger.append("r1", rnd, "trained", Mechanism(1.2, 0.25, 4), 1e-5, 1.0, "rdp", eps, 8.0)
    out = tmp_path / "mia.json"

    code = main(["audit", "--mia", "--checkpoint", str(ckpt), "--data", str(tmp_path / "data" / "site_a"),
                 "--state", str(state), "--json", str(out)])

    report = json.loads(out.read_text())
    assert code == 0
    assert report["members"] == 60 and report["non_members"] == 20  # the site's 75/25 training/validation split
    assert 0.0 <= report["auc"] <= 1.0 and 0.0 <= report["advantage"] <= 1.0
    assert report["epsilon"] == 1.1 and report["delta"] == 1e-5  # the ledger entry of the checkpoint's round
    assert report["auc_bound"] > report["auc"]  # an untrained model leaks nothing beyond chance
    printed = capsys.readouterr().out
    assert "attack AUC" in printed and "site epsilon 1.100 at delta 1e-05 allows AUC <=" in printed


def test_mia_needs_its_three_inputs(capsys):
    assert main(["audit", "--mia", "--data", "somewhere"]) == 2
    assert "--checkpoint" in capsys.readouterr().out
