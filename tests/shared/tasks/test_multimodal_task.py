"""The multimodal task: config-only model layout, site preparation fitted on the training split,
missing modalities, losses, whitelisted metrics, DP utility on synthetic sites (FedAvg by hand),
a real local BERT directory, and real GSE7390 omics with survival labels."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from shared.config import RunConfig, config_from_dict, load_config
from shared.data.omics import REFERENCE_OMICS, read_public_omics, reference_stats
from shared.data.synth.omics import SYNTHETIC_GENES
from shared.data.writers import write_multimodal_site
from shared.errors import InputError
from shared.losses.classification import FocalLoss, WeightedBCEWithLogits
from shared.privacy.whitelist import ALLOWED_METRICS
from shared.tasks.multimodal import (
    BINARY_METRICS,
    EMBEDDINGS_DIR,
    SURVIVAL_METRICS,
    MultimodalTask,
)
from shared.tasks.registry import build_task
from shared.training.dp_trainer import TrainSettings, train_model
from tests.shared.data.test_omics import shared_data_dir
from tests.shared.tasks.federated_by_hand import run_federation, site_outputs

REPO = Path(__file__).resolve().parents[3]
GENES = list(SYNTHETIC_GENES)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend
    yield
    torch.set_num_threads(threads)


def _cfg(root: Path, model: dict[str, Any] | None = None, train: dict[str, Any] | None = None, **data: Any) -> RunConfig:
    # weighted_bce's public pos_weight; another loss brings its own loss_params
    weight = {} if "loss" in (train or {}) else {"loss_params": {"pos_weight": 2.5}}
    raw = {
        "task": "multimodal",
        "data": {"root": str(root), "sites": ["hospital_a"], "text_dim": 16, "synth_sizes": [80], **data},
        "model": {"name": "multimodal", "hidden": 8, "features": GENES, "log1p": True, **(model or {})},
        "train": {"rounds": 1, "batch_size": 16, "loss": "weighted_bce", **weight, **(train or {})},
    }
    return config_from_dict(raw, "test.yaml")


def _prepared(tmp_path: Path, **cfg_kwargs: Any) -> tuple[MultimodalTask, Any, Path]:
    cfg = _cfg(tmp_path / "data", **cfg_kwargs)
    task = build_task(cfg)
    assert isinstance(task, MultimodalTask)
    task.synthesize(tmp_path / "data", ["hospital_a"], seed=0)
    state = tmp_path / "state"
    return task, task.prepare_site(tmp_path / "data" / "hospital_a", "hospital_a", state), state


# ---------------------------------------------------------------------------------------------
# config


def test_shipped_configs_fix_the_layout_without_data() -> None:
    binary = build_task(load_config(REPO / "fedcare" / "configs" / "multimodal.yaml"))
    survival = build_task(load_config(REPO / "fedcare" / "configs" / "multimodal_survival.yaml"))
    assert (binary.kind, binary.primary_metric, survival.kind, survival.primary_metric) == (
        "binary", "auroc", "survival", "c_index"
    )
    assert binary.id_column == "patient_id"
    assert binary.cfg.model.params["features"] == GENES
    assert binary.input_dims() == {"omics_dim": 200, "text_dim": 128}  # 100 genes + 100 missing indicators
    center, site = binary.build_model(), build_task(load_config(REPO / "fedcare" / "configs" / "multimodal.yaml")).build_model()
    assert {k: v.shape for k, v in center.state_dict().items()} == {k: v.shape for k, v in site.state_dict().items()}
    assert center.omics_encoder[0].weight.shape == (16, 200)


def test_label_type_follows_the_loss_unless_given(tmp_path: Path) -> None:
    assert build_task(_cfg(tmp_path, train={"loss": "coxph"})).kind == "survival"
    assert build_task(_cfg(tmp_path, train={"loss": "focal"})).kind == "binary"
    assert _cfg(tmp_path, model={"missing_indicators": False}).model.params["missing_indicators"] is False
    assert build_task(_cfg(tmp_path, model={"missing_indicators": False})).input_dims()["omics_dim"] == 100


@pytest.mark.parametrize(
    ("model", "train", "message"),
    [
        ({"features": None}, {}, r"test\.yaml: model\.features: the multimodal task needs the pinned omics panel"),
        ({"features": ["A", "A"]}, {}, r"model\.features: feature names must be unique"),
        ({"label_type": "survival"}, {}, r"train\.loss: survival labels train with coxph, not 'weighted_bce'"),
        ({}, {"loss": "ce"}, r"train\.loss: binary labels train with bce or weighted_bce or focal"),
        ({"label_type": "ordinal"}, {}, r"model\.label_type: one of binary, survival"),
        ({"log1p": "yes"}, {}, r"model\.log1p: must be a valid boolean"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, model: dict, train: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_task(_cfg(tmp_path, model=model, train=train)).input_dims()


# ---------------------------------------------------------------------------------------------
# site preparation


def test_prepare_site_scales_with_public_statistics_and_no_other_patient(tmp_path: Path) -> None:
    task, data, state = _prepared(tmp_path)
    assert data.n_train == 60 and data.n_val == 20
    assert data.info["patients"] == 80 and data.info["without_omics"] + data.info["without_notes"] > 0
    omics, text, present, y = data.train.tensors
    assert omics.shape == (60, 200) and text.shape == (60, 16) and present.shape == (60, 2) and y.shape == (60,)
    # the omics are scaled with the shipped reference (log1p scale), exactly, whatever the site holds
    site = tmp_path / "data" / "hospital_a"
    loaded = task._load(site, "hospital_a", "binary")
    train_ids = loaded.patient_ids[task._split(loaded, site)[0]]
    raw = pd.read_csv(site / "omics.csv", dtype={"patient_id": str}).set_index("patient_id")
    first = next(i for i in range(60) if present[i, 0])
    pid = train_ids[first]
    mean, sd = np.array([REFERENCE_OMICS[g] for g in GENES]).T
    expected = np.clip((np.log1p(raw.loc[pid, GENES].to_numpy(float)) - mean) / sd, -10, 10)
    observed = ~np.isnan(expected)
    np.testing.assert_allclose(omics[first, :100].numpy()[observed], expected[observed], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(omics[first, 100:].numpy(), (~observed).astype(np.float32))
    assert not omics[first, :100].numpy()[~observed].any()  # a missing value -> the reference mean (0)
    # one patient's change moves no other patient's inputs (nothing fitted on the site's rows)
    changed = raw.copy()
    changed.loc[changed.index[0], GENES] = changed.loc[changed.index[0], GENES] * 50
    changed.reset_index().to_csv(site / "omics.csv", index=False)
    again = task.prepare_site(site, "hospital_a", tmp_path / "state2")
    rows = np.flatnonzero(train_ids != changed.index[0])
    assert len(rows) == 60 - int(changed.index[0] in set(train_ids))
    torch.testing.assert_close(again.train.tensors[0][rows], omics[rows])
    torch.testing.assert_close(again.train.tensors[1], text)
    # each patient's text vector is standardised over its own dimensions
    with_text = text[present[:, 1].bool()].numpy()
    np.testing.assert_allclose(with_text.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(with_text.std(axis=1), 1.0, atol=1e-3)
    assert (state / EMBEDDINGS_DIR / "hashed-bow-16.npz").is_file()


def test_missing_modalities_still_get_finite_predictions(tmp_path: Path) -> None:
    task, data, state = _prepared(tmp_path)
    new = tmp_path / "new_patients"
    omics = pd.DataFrame({"patient_id": ["omics_only"], **{g: [5.0] for g in GENES}})
    notes = pd.DataFrame({"patient_id": ["notes_only", "notes_only"], "text": ["Metastatic disease.", "Vitals stable."]})
    write_multimodal_site(new, pd.DataFrame({"patient_id": ["omics_only", "notes_only", "neither"]}), omics, notes)
    ids, dataset = task.prediction_inputs(new, state)
    assert list(ids) == ["omics_only", "notes_only", "neither"]
    np.testing.assert_array_equal(dataset.tensors[2].numpy(), [[1, 0], [0, 1], [0, 0]])
    model = task.build_model().eval()
    out = task.forward(model, dataset.tensors)
    assert out.shape == (3,) and torch.isfinite(out).all()
    # the whole `fedcare predict` path, from a checkpoint
    from fedcare.predict import predict_to_csv
    from server.checkpoints import save_checkpoint

    ckpt = tmp_path / "run" / "checkpoints" / "round_001.pt"
    save_checkpoint(ckpt, model.state_dict(), {"config": task.cfg.to_dict(), "round": 1})
    assert predict_to_csv(ckpt, new, tmp_path / "pred.csv", encoder_dir=state) == 3
    written = pd.read_csv(tmp_path / "pred.csv")
    assert written["patient_id"].tolist() == list(ids)
    np.testing.assert_allclose(written["probability"], torch.sigmoid(out).detach().numpy(), rtol=1e-5)
    # the scaling comes from the run config alone: the same inputs wherever the site's state lives, and a
    # config whose panel has no public statistics is refused with the field to fill
    _, fresh = task.prediction_inputs(new, tmp_path / "elsewhere")
    torch.testing.assert_close(fresh.tensors[0], task.prediction_inputs(new, state)[1].tensors[0])
    other = build_task(_cfg(tmp_path / "data", model={"log1p": False}))
    with pytest.raises(InputError, match=r"data\.standardize\.GENE001: missing"):
        other.prediction_inputs(new, state)


def test_losses_follow_the_config(tmp_path: Path) -> None:
    task, data, _ = _prepared(tmp_path)
    y = data.train.tensors[3]
    batch = data.train.tensors
    model = task.build_model()
    with torch.inference_mode():  # a site may evaluate before it first trains
        task.loss(model, batch)
    loss = task.loss(model, batch)
    assert torch.isfinite(loss) and loss.requires_grad
    assert isinstance(task._loss(), WeightedBCEWithLogits)
    assert float(task._loss().pos_weight) == 2.5  # the run config's, not the site's (1 - y).sum() / y.sum()
    assert float((1 - y).sum() / y.sum()) != 2.5
    focal, _, _ = _prepared(tmp_path / "focal", train={"loss": "focal", "loss_params": {"gamma": 1.0}})
    assert isinstance(focal._loss(), FocalLoss) and focal._loss().gamma == 1.0
    bad = build_task(_cfg(tmp_path, train={"loss": "focal", "loss_params": {"sharpness": 2}}))
    with pytest.raises(InputError, match=r"train\.loss_params: .*sharpness"):
        bad.loss(model, batch)


def test_metrics_are_whitelisted_aggregates(tmp_path: Path) -> None:
    assert BINARY_METRICS <= ALLOWED_METRICS and SURVIVAL_METRICS <= ALLOWED_METRICS
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    logits = y + rng.normal(0, 1, 200)
    binary = build_task(_cfg(tmp_path)).metrics(y, logits)
    assert set(binary) <= ALLOWED_METRICS and {"auroc", "auprc", "brier", "ece"} <= set(binary)
    assert {k for k in binary if not k.startswith("calib_bin_")} <= BINARY_METRICS
    assert sum(v for k, v in binary.items() if k.endswith("_count")) <= 200  # bins of >= 10 patients only
    assert binary["auroc"] == pytest.approx(roc_auc_score(y, logits))
    time, event = rng.uniform(1, 100, 200), rng.integers(0, 2, 200)
    survival = build_task(_cfg(tmp_path, train={"loss": "coxph"})).metrics(np.stack([time, event], 1), -time)
    assert set(survival) == SURVIVAL_METRICS and survival["c_index"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# utility under DP (a federation without Flower)


def test_binary_utility_at_epsilon_8(tmp_path: Path) -> None:
    cfg = load_config(REPO / "fedcare" / "configs" / "multimodal.yaml")
    cfg.data.root = str(tmp_path / "data")
    result = run_federation(cfg, tmp_path / "state")
    assert all(eps <= 8.0 + 1e-6 for eps in result.epsilon.values())
    assert all(nm > 1.0 for nm in result.noise_multiplier.values())
    assert result.weighted["auroc"] > 0.65  # measured 0.78 (seed 0); non-DP by hand about 0.8


def test_survival_utility_at_epsilon_8(tmp_path: Path) -> None:
    cfg = load_config(REPO / "fedcare" / "configs" / "multimodal_survival.yaml")
    cfg.data.root = str(tmp_path / "data")
    result = run_federation(cfg, tmp_path / "state")
    assert all(eps <= 8.0 + 1e-6 for eps in result.epsilon.values())
    assert result.weighted["c_index"] > 0.6  # measured about 0.7


# ---------------------------------------------------------------------------------------------
# a real local language model directory and real omics


def _tiny_bert(model_dir: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    words = "patient seen clinic shows pathology impression findings disease tumour metastatic lymph node".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz.,:"]
    (model_dir / "vocab").mkdir(parents=True)
    (model_dir / "vocab" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(model_dir / "vocab" / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=80,
    )
    BertModel(config).save_pretrained(model_dir / "bert")
    tokenizer.save_pretrained(model_dir / "bert")
    return model_dir / "bert"


def test_text_from_a_local_bert_directory(tmp_path: Path) -> None:
    bert = _tiny_bert(tmp_path / "models")
    task, data, state = _prepared(tmp_path, text_model=str(bert), synth_sizes=[40])
    assert task.input_dims() == {"omics_dim": 200, "text_dim": 32}
    omics, text, present, _ = data.train.tensors
    assert text.shape == (30, 32) and torch.isfinite(text).all() and text[present[:, 1].bool()].abs().sum() > 0
    (cache,) = (state / EMBEDDINGS_DIR).glob("hf-*.npz")
    stamp = cache.stat().st_mtime_ns
    again = build_task(task.cfg).prepare_site(tmp_path / "data" / "hospital_a", "hospital_a", state)
    assert cache.stat().st_mtime_ns == stamp  # every note came from the cache
    torch.testing.assert_close(again.train.tensors[1], text)
    assert torch.isfinite(task.forward(task.build_model().eval(), data.val.tensors)).all()


def test_real_gse7390_loader_dp_step_and_c_index(tmp_path: Path) -> None:
    folder = shared_data_dir("breast-cancer-gse7390")
    if folder is None:
        pytest.skip("shared GSE7390 data not present")
    from shared.data.gse7390 import convert_gse7390

    sites, features = convert_gse7390(folder / "breast_cancer_GSE7390-metastasis.arff", tmp_path / "gse", n_sites=2)
    # the cohort is public: its own per-probe statistics are public values for data.standardize
    public = reference_stats(pd.concat([read_public_omics(site / "omics.csv", features) for site in sites]), log1p=False)
    assert set(public) == set(features)
    cfg = _cfg(tmp_path / "gse", model={"features": features, "log1p": False}, train={"loss": "coxph", "batch_size": 32},
               standardize=public)
    task = build_task(cfg)
    assert task.input_dims()["omics_dim"] == 2 * 78
    data = task.prepare_site(sites[0], "hospital_a", tmp_path / "state")
    assert data.n_train + data.n_val == 99 and data.info["without_omics"] == data.info["without_notes"] == 0
    model = task.build_model()
    before = copy.deepcopy(model.state_dict())
    settings = TrainSettings(epochs=1, expected_batch_size=32, noise_multiplier=1.0, seed=0)
    result = train_model(model, data.train, task.loss, settings)
    assert result.steps == 3 and np.isfinite(result.mean_loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    targets, risks = site_outputs(task, model, data.val)
    metrics = task.metrics(targets, risks)
    assert set(metrics) <= SURVIVAL_METRICS and 0.0 <= metrics["c_index"] <= 1.0
