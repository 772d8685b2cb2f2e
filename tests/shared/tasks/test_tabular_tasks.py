"""The tabular tasks: config-only model layout (no intercept in a Cox model), fixed and random splits,
losses, the held-out report's "n/a" reasons, and the Breslow baseline hazard against lifelines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score

from shared.config import config_from_dict, load_config
from shared.data.synth.tabular import synthetic_data_config
from shared.errors import InputError
from shared.evaluation_report import binary_test_report, survival_test_report
from shared.survival_baseline import BaselineHazard
from shared.tasks.registry import build_task
from shared.tasks.tabular import TabularBinaryTask, TabularSurvivalTask

REPO = Path(__file__).resolve().parents[3]


def _cfg(task: str, root: Path, model: str = "linear", **train: Any):  # noqa: ANN202
    outcome = "survival" if task == "tabular_survival" else "binary"
    return config_from_dict({
        "task": task,
        "data": {"root": str(root), "sites": ["a", "b"], "synth_sizes": [150, 90], **synthetic_data_config(outcome)},
        "model": {"name": model, **({"hidden": [8]} if model == "tabular_mlp" else {})},
        "train": {"loss": "coxph" if outcome == "survival" else "bce", **train},
    }, "run.yaml")  # fmt: skip


def test_shipped_configs_build_one_layout_without_data() -> None:
    binary = build_task(load_config(REPO / "fedcare" / "configs" / "tabular_binary.yaml"))
    survival = build_task(load_config(REPO / "fedcare" / "configs" / "tabular_survival.yaml"))
    assert isinstance(binary, TabularBinaryTask) and isinstance(survival, TabularSurvivalTask)
    assert (binary.kind, binary.primary_metric) == ("binary", "auroc")
    assert (survival.kind, survival.primary_metric) == ("survival", "c_index")
    assert binary.input_dims() == survival.input_dims() == {"n_features": 12}
    assert binary.id_column == "patient id"
    assert set(binary.build_model().state_dict()) == {"out.weight", "out.bias"}
    assert set(survival.build_model().state_dict()) == {"out.weight"}  # a Cox model has no intercept
    assert survival.cfg.train.loss_params == {"ties": "efron"}


def test_survival_mlp_has_no_output_bias(tmp_path: Path) -> None:
    task = build_task(_cfg("tabular_survival", tmp_path, model="tabular_mlp"))
    model = task.build_model()
    assert model.out.bias is None and model(torch.zeros(3, 12)).shape == (3,)
    with pytest.raises(InputError, match="train.loss: 'bce' does not fit task tabular_survival"):
        build_task(config_from_dict({**_cfg("tabular_survival", tmp_path).to_dict(), "train": {"loss": "bce"}}, "run.yaml"))
    with pytest.raises(InputError, match="model.name"):
        build_task(_cfg("tabular_binary", tmp_path, model="retain"))


def test_fixed_split_puts_only_test_rows_in_test(tmp_path: Path) -> None:
    task = build_task(_cfg("tabular_binary", tmp_path))
    task.synthesize(tmp_path, ["a", "b"], seed=0)
    data = task.prepare_site(tmp_path / "a", "a", tmp_path / "state")
    table = pd.read_csv(tmp_path / "a" / "table.csv")
    counts = table["split"].value_counts()
    assert (data.n_train, data.n_val, len(data.test)) == (counts["train"], counts["val"], counts["test"])
    test_x, test_y = data.test.tensors
    np.testing.assert_array_equal(test_y.numpy(), table.loc[table["split"] == "test", "outcome"].to_numpy())
    assert data.info["fixed_split"] and data.info["test"] == counts["test"]
    # without the split column: a random stratified train/val split and no test rows
    table.drop(columns="split").to_csv(tmp_path / "a" / "table.csv", index=False)
    data = task.prepare_site(tmp_path / "a", "a", tmp_path / "state")
    assert data.test is None and data.n_train + data.n_val == len(table)
    assert data.n_val == pytest.approx(0.25 * len(table), abs=1)
    # split column with train and test only: val is carved out of train
    fixed = table.assign(split=np.where(np.arange(len(table)) % 5 == 0, "test", "train"))
    fixed.to_csv(tmp_path / "a" / "table.csv", index=False)
    data = task.prepare_site(tmp_path / "a", "a", tmp_path / "state")
    assert len(data.test) == 30 and data.n_train + data.n_val == 120
    # test rows kept apart in <site>/test/table.csv (no split column in the main table)
    (tmp_path / "a" / "test").mkdir()
    table.iloc[:40].drop(columns="split").to_csv(tmp_path / "a" / "test" / "table.csv", index=False)
    table.iloc[40:].drop(columns="split").to_csv(tmp_path / "a" / "table.csv", index=False)
    data = task.prepare_site(tmp_path / "a", "a", tmp_path / "state")
    assert len(data.test) == 40 and data.n_train + data.n_val == 110 and data.info["test_folder_rows"] == 40
    np.testing.assert_array_equal(data.test.tensors[1].numpy(), table["outcome"].iloc[:40].to_numpy())
    table.iloc[39:].drop(columns="split").to_csv(tmp_path / "a" / "table.csv", index=False)  # one id in both
    with pytest.raises(InputError, match="'S0-00039' is also in table.csv"):
        task.prepare_site(tmp_path / "a", "a", tmp_path / "state")


@pytest.mark.parametrize("task_name", ["tabular_binary", "tabular_survival"])
def test_dp_training_learns_the_planted_signal(tmp_path: Path, task_name: str) -> None:
    """Local DP-SGD (epsilon ~8 regime noise) on one synthetic site ranks its test rows well above chance."""
    from shared.training.dp_trainer import TrainSettings, train_model

    torch.set_num_threads(1)
    cfg = _cfg(task_name, tmp_path, lr=0.05)
    cfg.data.synth_sizes = [1000, 90]
    task = build_task(cfg)
    task.synthesize(tmp_path, ["a", "b"], seed=3)
    data = task.prepare_site(tmp_path / "a", "a", tmp_path / "state")
    model = task.build_model()
    settings = TrainSettings(epochs=6, expected_batch_size=128 if task_name == "tabular_survival" else 64, lr=0.05,
                             optimizer="adamw", noise_multiplier=1.0, max_grad_norm=1.0, seed=0,
                             dp_seed=0)  # a utility check: reproducible DP draws
    train_model(model, data.train, task.loss, settings)
    model.eval()
    x, y = data.test.tensors
    with torch.no_grad():
        out = task.forward(model, [x]).numpy()
    if task_name == "tabular_binary":
        score = roc_auc_score(y.numpy(), out)
    else:
        score = concordance_index(y[:, 0].numpy(), -out, y[:, 1].numpy())
    assert score > 0.65


def test_test_report_says_why_a_metric_is_missing() -> None:
    one_class = binary_test_report(np.zeros(20), np.linspace(-1, 1, 20), n_boot=50)
    assert one_class["auroc"] == one_class["auprc"] == "n/a: one class (all 0)"
    assert one_class["n"] == 20 and one_class["n_positive"] == 0 and "value" in one_class["brier"]
    no_events = survival_test_report(np.c_[np.arange(1, 11), np.zeros(10)], np.arange(10.0), n_boot=50)
    assert no_events["c_index"] == "n/a: no events" and no_events["n_events"] == 0
    # the only event is the last time: no pair is comparable
    last = survival_test_report(np.c_[np.arange(1, 6), [0, 0, 0, 0, 1]], np.arange(5.0), n_boot=50)
    assert last["c_index"] == "n/a: no comparable pairs"
    rng = np.random.default_rng(0)
    labels, logits = rng.integers(0, 2, 200), rng.normal(size=200)
    report = binary_test_report(labels, logits, n_boot=200)
    assert report["auroc"]["value"] == pytest.approx(roc_auc_score(labels, logits))
    assert report["auroc"]["ci_low"] < report["auroc"]["value"] < report["auroc"]["ci_high"]


def test_breslow_baseline_matches_lifelines() -> None:
    rng = np.random.default_rng(1)
    n = 300
    x = rng.normal(size=(n, 2))
    time = np.round(rng.exponential(np.exp(-(0.7 * x[:, 0] - 0.4 * x[:, 1])) * 100)) + 1  # ties on purpose
    event = (rng.random(n) < 0.7).astype(int)
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "T": time, "E": event})
    fitted = CoxPHFitter(baseline_estimation_method="breslow").fit(frame, "T", "E")
    risk = x @ fitted.params_.to_numpy()
    baseline = BaselineHazard.estimate(time, event, risk)
    horizons = np.unique(time[event == 1])[[2, 20, 60]]  # observed times: lifelines interpolates between them
    expected = fitted.predict_survival_function(frame[["x0", "x1"]].iloc[:5], times=horizons).to_numpy().T
    np.testing.assert_allclose(baseline.survival(risk[:5], horizons), expected, rtol=1e-6, atol=1e-9)
    assert np.isnan(baseline.at(np.array([time.max() + 1]))).all()  # past the follow-up: no estimate
