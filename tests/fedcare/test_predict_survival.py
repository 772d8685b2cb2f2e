"""`fedcare predict` on a survival checkpoint writes `risk_score` (the model's log relative hazard), never a
sigmoid of it; `--horizons` needs a task whose sites estimate a baseline hazard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedcare.predict import predict_to_csv
from server.checkpoints import save_checkpoint
from shared.config import config_from_dict
from shared.data.synth.omics import SYNTHETIC_GENES
from shared.errors import InputError
from shared.tasks.registry import build_task


def test_multimodal_survival_predict_writes_the_risk_score(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = config_from_dict({
        "task": "multimodal",
        "data": {"root": str(tmp_path / "data"), "sites": ["hospital_a"], "text_dim": 16, "synth_sizes": [40]},
        "model": {"name": "multimodal", "hidden": 8, "features": list(SYNTHETIC_GENES), "log1p": True, "label_type": "survival"},
        "train": {"loss": "coxph"},
    }, "<test>")  # fmt: skip
    task = build_task(cfg)
    task.synthesize(tmp_path / "data", ["hospital_a"], seed=0)
    state = tmp_path / "run" / "sites" / "hospital_a"
    task.prepare_site(tmp_path / "data" / "hospital_a", "hospital_a", state)
    torch.manual_seed(0)
    model = task.build_model().eval()
    ckpt = tmp_path / "run" / "checkpoints" / "round_001.pt"
    save_checkpoint(ckpt, model.state_dict(), {"config": cfg.to_dict(), "round": 1, "run_id": "r"})
    out = tmp_path / "pred.csv"
    assert predict_to_csv(ckpt, tmp_path / "data" / "hospital_a", out, state) == 40
    written = pd.read_csv(out)
    assert list(written.columns) == ["patient_id", "risk_score"]
    ids, dataset = task.prediction_inputs(tmp_path / "data" / "hospital_a", state)
    with torch.no_grad():
        expected = task.forward(model, dataset.tensors).numpy()
    np.testing.assert_allclose(written["risk_score"], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="no baseline hazard estimated at this site"):
        predict_to_csv(ckpt, tmp_path / "data" / "hospital_a", out, state, horizons=[365.0])
