"""A fixed split beyond the tabular tasks (shared/data/splits.py): a ``split`` column in the table that
defines the samples. Test metrics come only from the test samples and equal sklearn's on the saved
predictions; validation is exactly the ``val`` samples; a test split with one class says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedcare.cli import main
from server.checkpoints import save_checkpoint
from shared.config import config_from_dict
from shared.data.events import load_event_site
from shared.data.splits import site_has_split
from shared.data.synth import synthesize_sites
from shared.data.visits import load_visit_site
from shared.errors import InputError
from shared.tasks.registry import build_task

SITES = ["hospital_a", "hospital_b"]
TINY_RETAIN = {"name": "retain", "emb_dim": 8, "alpha_hidden": 8, "beta_hidden": 8, "dropout": 0.0}


def _assign_split(labels: pd.DataFrame, rng: np.random.Generator, one_class_test: bool) -> np.ndarray:
    split = rng.choice(["train", "val", "test"], len(labels), p=[0.6, 0.2, 0.2]).astype(object)
    if one_class_test:  # every positive patient trains or validates: the test split has one class
        split[(labels["aki"].to_numpy() == 1) & (split == "test")] = "train"
    return split


@pytest.fixture(scope="module")
def retain_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("split")
    data = root / "data"
    synthesize_sites("retain_aki", data, SITES, seed=2, sizes=[120, 60])
    rng = np.random.default_rng(0)
    for k, site in enumerate(SITES):
        path = data / site / "labels.csv"
        labels = pd.read_csv(path, dtype={"patient_id": str})
        labels["split"] = _assign_split(labels, rng, one_class_test=k == 1)
        labels.to_csv(path, index=False)
    cfg = config_from_dict({"task": "retain_aki", "data": {"root": str(data), "sites": SITES, "max_events": 32},
                            "model": TINY_RETAIN}, "<test>")
    torch.manual_seed(0)
    model = build_task(cfg).build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # a "trained" model: outputs differ between patients
    run = root / "run"
    save_checkpoint(run / "checkpoints" / "round_003.pt", model.state_dict(), {"config": cfg.to_dict(), "round": 3})
    return data, run


def test_test_metric_comes_from_test_patients_and_matches_sklearn(retain_run: tuple[Path, Path], tmp_path: Path):
    data, run = retain_run
    assert main(["evaluate", "--run", str(run)]) == 0
    result = json.loads((run / "test_metrics.json").read_text())
    assert result["task"] == "retain_aki" and result["round"] == 3
    labels = pd.read_csv(data / "hospital_a" / "labels.csv", dtype={"patient_id": str})
    test = labels[labels["split"] == "test"]
    report = result["sites"]["hospital_a"]
    assert report["n"] == len(test) and report["n_positive"] == int(test["aki"].sum())
    # the saved predictions of the same checkpoint, with the site's encoder (fitted on its train patients)
    out = tmp_path / "pred.csv"
    ckpt = run / "checkpoints" / "round_003.pt"
    assert main(["predict", "--checkpoint", str(ckpt), "--data", str(data / "hospital_a"), "--out", str(out),
                 "--encoder", str(run / "sites" / "hospital_a")]) == 0
    pred = pd.read_csv(out, dtype={"patient_id": str}).merge(test, on="patient_id")
    assert len(pred) == len(test)
    assert report["auroc"]["value"] == pytest.approx(roc_auc_score(pred["aki"], pred["probability"]), abs=1e-6)
    # the site whose test patients are all negative says so instead of a number
    other = result["sites"]["hospital_b"]
    assert other["n"] > 0 and other["n_positive"] == 0
    assert str(other["auroc"]).startswith("n/a: one class")


def test_training_and_validation_are_the_train_and_val_patients(retain_run: tuple[Path, Path], tmp_path: Path):
    data, run = retain_run
    cfg = config_from_dict(torch.load(run / "checkpoints" / "round_003.pt", weights_only=False)["config"], "<test>")
    site = build_task(cfg).prepare_site(data / "hospital_a", "hospital_a", tmp_path)
    loaded = load_visit_site(data / "hospital_a")
    assert loaded.split is not None
    labels = loaded.labels.to_numpy()
    for name, part in (("train", site.train), ("val", site.val), ("test", site.test)):
        rows = loaded.split == name
        assert len(part) == int(rows.sum())
        np.testing.assert_array_equal(part.tensors[-1].numpy(), labels[rows])
    assert site.info["test"] == int((loaded.split == "test").sum())


def test_event_stays_split_and_bad_split_values(tmp_path: Path):
    (site,) = synthesize_sites("event_mortality", tmp_path / "data", ["h"], seed=1, sizes=[60])
    assert not site_has_split(site, "event_mortality")
    stays = pd.read_csv(site / "stays.csv")
    stays = stays.iloc[::-1]  # file order differs from the loader's stay_id order
    stays["split"] = np.where(stays["stay_id"] % 5 == 0, "Test ", np.where(stays["stay_id"] % 5 == 1, "val", "train"))
    stays.to_csv(site / "stays.csv", index=False)
    assert site_has_split(site, "event_mortality")
    loaded = load_event_site(site)
    expected = np.where(loaded.stays.index % 5 == 0, "test", np.where(loaded.stays.index % 5 == 1, "val", "train"))
    np.testing.assert_array_equal(loaded.split, expected)
    stays["split"] = stays["split"].where(stays.index != stays.index[3], "holdout")
    stays.to_csv(site / "stays.csv", index=False)
    with pytest.raises(InputError, match=r"stays.csv: split: data row 4 \(line 5\): 'holdout' must be one of train, val, test"):
        load_event_site(site)


def test_sleep_recordings_split(tmp_path: Path):
    (site,) = synthesize_sites("sleep_diagnosis", tmp_path / "data", ["a"], seed=0, sizes=[8], minutes=1.0)
    recordings = pd.read_csv(site / "recordings.csv")
    recordings["split"] = ["train", "train", "train", "train", "val", "val", "test", "test"]
    recordings.to_csv(site / "recordings.csv", index=False)
    cfg = config_from_dict({
        "task": "sleep_diagnosis", "data": {"root": str(tmp_path / "data"), "sites": ["a"], "max_epochs": 2,
                                            "channel_slots": ["BAS1", "EMG"]},
        "model": {"name": "set_transformer_diagnosis", "d_model": 8, "n_heads": 2, "n_layers": 1, "dropout": 0.0},
        "train": {"loss": "coxph"},
    }, "<test>")  # fmt: skip
    task = build_task(cfg)
    data = task.prepare_site(site, "a", tmp_path / "state")
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 2)
    times = recordings[[f"time_{o}" for o in task.outcomes]].to_numpy(dtype=np.float32)
    np.testing.assert_allclose(data.test.tensors[4].numpy(), times[6:])  # the last two recordings, in file order
