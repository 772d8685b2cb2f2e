import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fedcare.predict import predict_patient_json
from server.checkpoints import load_checkpoint, save_checkpoint
from server.evaluation import is_calibration_key, recalibration
from shared.config import RunConfig, config_from_dict, load_config
from shared.data.splits import split_rows
from shared.data.synth.visits import synthesize_visit_sites
from shared.data.visit_features import Z_CLIP, VisitEncoder
from shared.data.visits import FEATURES, LAB_RANGES, load_visit_site
from shared.data.writers import write_visit_site
from shared.errors import InputError
from shared.losses.classification import FocalLoss, WeightedBCEWithLogits
from shared.models.retain import Retain
from shared.privacy.whitelist import ALLOWED_METRICS
from shared.tasks.registry import build_task
from shared.tasks.retain_aki import (
    ENCODER_FILE,
    INITIAL_AKI_RATE,
    REPORTED_METRICS,
    RetainAkiTask,
    predict_patient,
)
from tests.shared.tasks.retain_fedavg import run_fedavg

SITES = ["hospital_a", "hospital_b", "hospital_c"]
TINY_MODEL = {"name": "retain", "emb_dim": 8, "alpha_hidden": 8, "beta_hidden": 8, "dropout": 0.0}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: on a busy 2-core machine a second thread made the DP test ~5x slower
    yield
    torch.set_num_threads(threads)


def _cfg(**sections: object) -> RunConfig:
    raw: dict = {"task": "retain_aki", "data": {"sites": SITES, "max_events": 32}, "model": TINY_MODEL}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(raw, "<test>")


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aki")
    build_task(_cfg(data={"synth_sizes": [80, 60, 40]})).synthesize(root, SITES, seed=1)
    return root


def _val_patients(site_dir: Path, cfg: RunConfig) -> set[str]:
    data = load_visit_site(site_dir)
    _, val_idx, _ = split_rows(None, data.labels.to_numpy(), cfg.data.val_fraction, cfg.data.split_seed)
    return set(data.patients[val_idx])


# ---------------------------------------------------------------- task wiring


def test_registry_and_input_dims() -> None:
    task = build_task(_cfg())
    assert isinstance(task, RetainAkiTask)
    assert (task.name, task.kind, task.primary_metric, task.id_column) == ("retain_aki", "binary", "auroc", "patient_id")
    assert task.input_dims() == {"n_features": len(FEATURES)} == {"n_features": 8}
    model = task.build_model()
    assert isinstance(model, Retain) and model.cfg.emb_dim == 8
    assert float(model.out.bias.detach()) == pytest.approx(math.log(INITIAL_AKI_RATE / (1 - INITIAL_AKI_RATE)))


def test_shipped_config_loads() -> None:
    cfg = load_config(Path(__file__).parents[3] / "fedcare" / "configs" / "retain_aki.yaml")
    assert cfg.task == "retain_aki" and cfg.model.name == "retain" and cfg.privacy.target_epsilon <= 8
    assert isinstance(build_task(cfg).build_model(), Retain)


def test_synthesize_names_sites_as_configured(tmp_path: Path) -> None:
    build_task(_cfg(data={"sites": ["north", "south"], "synth_sizes": [20, 15]})).synthesize(tmp_path, ["north", "south"], 0)
    assert len(load_visit_site(tmp_path / "north").patients) == 20
    assert len(load_visit_site(tmp_path / "south").patients) == 15


# ---------------------------------------------------------------- site preparation


def test_prepare_site_shapes_and_split(sites: Path, tmp_path: Path) -> None:
    task = build_task(_cfg())
    data = task.prepare_site(sites / "hospital_a", "hospital_a", tmp_path)
    loaded = load_visit_site(sites / "hospital_a")
    longest = int(loaded.visits.groupby("patient_id").size().max())
    assert data.n_train + data.n_val == 80 and data.n_val == 20
    x, valid, y = data.train.tensors
    assert x.shape == (60, longest, 8) and x.dtype == torch.float32
    assert valid.shape == (60, longest) and valid.dtype == torch.bool and y.shape == (60,)
    lengths = valid.sum(dim=1)
    assert torch.equal(valid, torch.arange(longest)[None, :] < lengths[:, None])  # left-aligned
    assert (lengths >= 3).all() and set(y.tolist()) == {0.0, 1.0}
    assert (x[~valid] == 0).all() and torch.isfinite(x).all() and x.abs().max() <= Z_CLIP
    assert data.info["patients"] == 80 and data.info["truncated_patients"] == 0 and data.info["max_visits"] == 32
    assert (tmp_path / ENCODER_FILE).is_file()


def test_the_encoder_depends_on_no_patient(sites: Path, tmp_path: Path) -> None:
    # public reference scalers (issue 17): neither validation nor training patients reach them
    cfg = _cfg()
    site = tmp_path / "site"
    original = load_visit_site(sites / "hospital_b")
    labels = original.labels.rename_axis("patient_id").reset_index()
    val = _val_patients(sites / "hospital_b", cfg)

    def encoder_after(scale_patients: set[str]) -> str:
        visits = original.visits.copy()
        rows = visits["patient_id"].isin(scale_patients)
        visits.loc[rows, list(FEATURES)] *= 1.2  # stays inside the labs' physiological ranges
        write_visit_site(site, visits, labels)
        build_task(cfg).prepare_site(site, "site", tmp_path / "state")
        return (tmp_path / "state" / ENCODER_FILE).read_text()

    baseline = encoder_after(set())
    assert encoder_after(val) == baseline  # validation patients never reach the scalers
    train_patient = next(p for p in original.patients if p not in val)
    assert encoder_after({train_patient}) == baseline
    assert encoder_after(set(original.patients)) == baseline


def test_truncation_keeps_recent_visits_and_imputation(tmp_path: Path) -> None:
    times = pd.date_range("2150-01-01", periods=5, freq="D")
    visits = pd.DataFrame({"patient_id": "p1", "visit_id": [f"v{i}" for i in range(5)], "timestamp": times})
    for lab in FEATURES:
        visits[lab] = float(np.mean(LAB_RANGES[lab]))  # a plausible constant value
    visits["creatinine"] = [1.0, 2.0, np.nan, 4.0, 5.0]  # v2 missing: carried forward from v1
    visits["bun"] = [30.0, np.nan, np.nan, np.nan, np.nan]  # carried from a visit the cap drops
    visits["hemoglobin"] = np.nan  # never measured: the reference value (scaled 0)
    other = visits.assign(patient_id="p2", visit_id=[f"w{i}" for i in range(5)], creatinine=1.0, bun=10.0, hemoglobin=12.0)
    write_visit_site(tmp_path / "s", pd.concat([visits, other]), pd.DataFrame({"patient_id": ["p1", "p2"], "aki": [1, 0]}))
    task = build_task(_cfg(data={"max_events": 3}))
    encoder = VisitEncoder.reference()
    assert encoder.median[FEATURES.index("hemoglobin")] == pytest.approx(12.516)
    ids, dataset = task.prediction_inputs(tmp_path / "s", _saved(encoder, tmp_path / "enc"))
    x, valid = dataset.tensors[0], dataset.tensors[1]
    assert list(ids) == ["p1", "p2"] and x.shape == (2, 3, 8) and valid.all()
    expected = encoder.transform(visits.iloc[2:].assign(creatinine=[2.0, 4.0, 5.0], bun=30.0, hemoglobin=12.516))
    torch.testing.assert_close(x[0], torch.from_numpy(expected))
    assert torch.isnan(dataset.tensors[2]).all()  # unknown labels


def _saved(encoder: VisitEncoder, folder: Path) -> Path:
    encoder.save(folder / ENCODER_FILE)
    return folder


def test_prediction_inputs_match_the_site_encoding(sites: Path, tmp_path: Path) -> None:
    task = build_task(_cfg())
    data = task.prepare_site(sites / "hospital_c", "hospital_c", tmp_path)
    ids, dataset = task.prediction_inputs(sites / "hospital_c", tmp_path)
    loaded = load_visit_site(sites / "hospital_c")
    train_idx, _, _ = split_rows(None, loaded.labels.to_numpy(), 0.25, 0)
    assert list(ids) == list(loaded.patients)
    torch.testing.assert_close(dataset.tensors[0][train_idx], data.train.tensors[0])
    torch.testing.assert_close(dataset.tensors[1][train_idx], data.train.tensors[1])


def test_encoder_load_rejects_other_schemas(tmp_path: Path) -> None:
    path = tmp_path / ENCODER_FILE
    path.write_text(json.dumps({"features": ["creatinine"], "median": [1.0], "mean": [0.0], "std": [1.0]}))
    with pytest.raises(InputError) as info:
        VisitEncoder.load(path)
    assert info.value.field == "features"
    with pytest.raises(InputError, match="not found"):
        VisitEncoder.load(tmp_path / "missing.json")


def test_alpha_sums_to_one_over_real_visits_on_site_data(sites: Path, tmp_path: Path) -> None:
    task = build_task(_cfg())
    x, valid, _ = task.prepare_site(sites / "hospital_a", "hospital_a", tmp_path).train.tensors
    _, alpha, _ = task.build_model().eval().forward_with_attention(x, valid)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(len(x)))
    assert (alpha[~valid] == 0).all() and (alpha[valid] > 0).all()


# ---------------------------------------------------------------- loss and metrics


def test_losses_from_config(sites: Path, tmp_path: Path) -> None:
    batch = None
    for loss, params in (("bce", {}), ("focal", {"gamma": 2.0, "alpha": 0.25}), ("weighted_bce", {"pos_weight": 3.0})):
        task = build_task(_cfg(train={"loss": loss, "loss_params": params}))
        data = task.prepare_site(sites / "hospital_a", "hospital_a", tmp_path)
        batch = data.train.tensors
        model = task.build_model()
        logits = model(batch[0], batch[1])
        reference = {
            "bce": F.binary_cross_entropy_with_logits(logits, batch[2]),
            "focal": FocalLoss(2.0, 0.25)(logits, batch[2]),
            "weighted_bce": WeightedBCEWithLogits(3.0)(logits, batch[2]),
        }[loss]
        torch.testing.assert_close(task.loss(model, batch), reference)


def test_weighted_bce_takes_a_public_weight_from_the_config_never_the_site_labels(sites: Path, tmp_path: Path) -> None:
    # a site's n_negative/n_positive is a statistic of its training labels, outside the DP guarantee (issue 17)
    for missing in ({}, {"pos_weight": "auto"}, {"pos_weight": 0}):
        with pytest.raises(InputError) as info:
            build_task(_cfg(train={"loss": "weighted_bce", "loss_params": missing}))
        assert info.value.field == "train.loss_params.pos_weight"
    task = build_task(_cfg(train={"loss": "weighted_bce", "loss_params": {"pos_weight": 4.0}}))
    y = task.prepare_site(sites / "hospital_c", "hospital_c", tmp_path).train.tensors[2]
    assert float(task._loss_fn.pos_weight) == 4.0 and float((1 - y).sum() / y.sum()) != 4.0


def test_bad_loss_settings_name_the_field() -> None:
    with pytest.raises(InputError) as info:
        build_task(_cfg(train={"loss": "coxph"}))
    assert info.value.field == "train.loss"
    with pytest.raises(InputError) as info:
        build_task(_cfg(train={"loss": "focal", "loss_params": {"gama": 2.0}}))
    assert info.value.field == "train.loss_params"


def test_metrics_are_whitelisted_aggregates() -> None:
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=200) < 0.3).astype(float)
    out = 2.0 * y + rng.normal(size=200)
    metrics = build_task(_cfg()).metrics(y, out)
    assert REPORTED_METRICS <= ALLOWED_METRICS and {m for m in metrics if not is_calibration_key(m)} <= REPORTED_METRICS
    assert metrics["auroc_ci_low"] < metrics["auroc"] < metrics["auroc_ci_high"] and metrics["auroc"] > 0.8


def test_retain_reports_calibration_and_the_center_recalibrates_it() -> None:
    """A RETAIN site's exact evaluation carries reliability bins and ECE; the center's Platt map fitted on
    the bins of two sites brings the ECE of a miscalibrated model (logits 3x too large, shifted) down."""
    rng = np.random.default_rng(1)
    sites = {}
    for name in ("a", "b"):
        true_logit = rng.normal(-1.0, 1.2, size=1500)
        y = (rng.uniform(size=true_logit.size) < 1 / (1 + np.exp(-true_logit))).astype(float)
        sites[name] = {"num-examples": float(y.size), **build_task(_cfg()).metrics(y, 3.0 * true_logit - 1.0)}
        assert any(k.startswith("calib_bin_") for k in sites[name]) and sites[name]["ece"] > 0.08
    result = recalibration(sites, {}, "platt")
    assert result is not None and result["fitted_on"] == "site_reliability_bins"
    assert result["map"]["slope"] == pytest.approx(1 / 3, abs=0.1)
    assert result["ece_before"] > 0.08 and result["ece_after"] < 0.03 and result["ece_after_held_out_sites"] < 0.04


# ---------------------------------------------------------------- a new patient


NEW_PATIENT = {
    "patient_id": "P-new",
    "visits": [
        {"timestamp": "2150-03-03T09:00", "creatinine": 2.4, "bun": 41, "egfr": 28, "urine_output": 0.3},
        {"timestamp": "2150-03-01T09:00", "creatinine": 1.1, "bun": 18, "egfr": 70, "potassium": 4.2, "sodium": 139,
         "bicarbonate": 24, "hemoglobin": 12.5, "urine_output": 1.1, "visit_id": "first"},
        {"timestamp": "2150-03-02T09:00", "creatinine": 1.6, "bun": None},
    ],
}  # fmt: skip


def test_new_patient_prediction_survives_a_checkpoint_round_trip(sites: Path, tmp_path: Path) -> None:
    cfg = _cfg()
    task = build_task(cfg)
    task.prepare_site(sites / "hospital_a", "hospital_a", tmp_path / "state")
    torch.manual_seed(3)
    model = task.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # a "trained" model, not the initial one
    ckpt = tmp_path / "run" / "checkpoints" / "round_002.pt"
    save_checkpoint(ckpt, model.state_dict(), {"config": cfg.to_dict(), "round": 2})
    (tmp_path / "patient.json").write_text(json.dumps(NEW_PATIENT))

    encoder = VisitEncoder.load(tmp_path / "state" / ENCODER_FILE)
    in_memory = predict_patient(model, NEW_PATIENT, encoder)
    from_disk = predict_patient_json(ckpt, tmp_path / "patient.json", tmp_path / "state")
    assert from_disk == in_memory
    reloaded = task.build_model()
    reloaded.load_state_dict(load_checkpoint(ckpt)["state_dict"])
    assert predict_patient(reloaded, NEW_PATIENT, encoder)["probability"] == in_memory["probability"]

    assert 0.0 < in_memory["probability"] < 1.0 and in_memory["patient_id"] == "P-new"
    assert in_memory["n_visits"] == 3 and in_memory["dropped_visits"] == 0
    assert in_memory["visit_ids"] == ["first", "visit_2", "visit_0"]  # time order
    assert in_memory["timestamps"][0] == "2150-03-01T09:00:00"
    assert sum(in_memory["alpha"]) == pytest.approx(1.0) and len(in_memory["beta"]) == 3
    assert len(in_memory["beta"][0]) == 8 and np.asarray(in_memory["contributions"]).shape == (3, 8)
    total = np.sum(in_memory["contributions"]) + in_memory["bias"]
    assert total == pytest.approx(in_memory["logit"], abs=1e-5)
    assert in_memory["probability"] == pytest.approx(1 / (1 + math.exp(-in_memory["logit"])))
    json.dumps(in_memory)  # JSON-ready


def test_new_patient_uses_only_the_most_recent_visits(sites: Path, tmp_path: Path) -> None:
    task = build_task(_cfg())
    task.prepare_site(sites / "hospital_a", "hospital_a", tmp_path)
    encoder = VisitEncoder.load(tmp_path / ENCODER_FILE)
    model = task.build_model()
    capped = predict_patient(model, NEW_PATIENT, encoder, max_visits=2)
    assert capped["n_visits"] == 2 and capped["dropped_visits"] == 1 and capped["visit_ids"] == ["visit_2", "visit_0"]


def test_patient_json_errors(sites: Path, tmp_path: Path) -> None:
    cfg = _cfg()
    model = build_task(cfg).build_model()
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, model.state_dict(), {"config": cfg.to_dict(), "round": 1})
    build_task(cfg).prepare_site(sites / "hospital_a", "hospital_a", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        predict_patient_json(ckpt, bad, tmp_path)
    bad.write_text(json.dumps([{"timestamp": "2150-01-01", "creatinin": 1.0}]))
    with pytest.raises(InputError) as info:
        predict_patient_json(ckpt, bad, tmp_path)
    assert info.value.source == str(bad) and info.value.field == "visits[0].creatinin"
    with pytest.raises(InputError, match="not found"):
        predict_patient_json(ckpt, tmp_path / "missing.json", tmp_path)


# ---------------------------------------------------------------- utility under DP


def test_fedavg_with_dp_learns_at_epsilon_8(tmp_path: Path) -> None:
    """Small, fast version of the fedcare/configs/retain_aki.yaml check (python -m tests.shared.tasks.retain_fedavg)."""
    cfg = _cfg(
        data={"sites": SITES[:2], "synth_sizes": [240, 160]},
        train={"rounds": 3, "local_epochs": 2, "batch_size": 64, "lr": 0.01},
        privacy={"target_epsilon": 8.0},
    )
    synthesize_visit_sites(tmp_path / "data", n_sites=2, sizes=[240, 160], seed=0)
    results, weighted = run_fedavg(cfg, tmp_path / "data", tmp_path / "state")
    assert all(r.noise_multiplier is not None and r.noise_multiplier > 0.5 for r in results.values())
    assert all(r.epsilon <= 8.0 + 1e-6 for r in results.values())
    assert weighted > 0.6
