"""Sleep staging / diagnosis tasks: configs, site preparation, losses, whitelisted metrics, site
reports, prediction inputs, and a tiny federated DP-SGD run that must learn to stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.config import config_from_dict, load_config
from shared.data.psg import UNSCORED
from shared.errors import InputError
from shared.plots import write_report_files
from shared.privacy.whitelist import ALLOWED_METRICS
from shared.tasks.registry import build_task
from shared.tasks.sleep import SleepDiagnosisTask, SleepStagingTask

REPO_ROOT = Path(__file__).resolve().parents[3]
TINY_MODEL = {
    "preset": "small", "conv_channels": [4, 8, 8, 16, 16, 16], "norm_groups": 4, "d_model": 16, "channel_heads": 2,
    "n_heads": 2, "n_layers": 1, "d_ff": 32, "pool_heads": 1, "dropout": 0.0, "lstm_hidden": 8,
}  # fmt: skip
HEAD = {"sleep_staging": {"epoch_layers": 1, "epoch_heads": 2, "epoch_ff": 32}, "sleep_diagnosis": {"hidden": 16}}


def _config(task: str, root: Path, **train: object) -> dict:
    return {
        "task": task,
        "data": {"root": str(root), "sites": ["a", "b", "c"], "max_epochs": 4, "synth_sizes": [8, 6, 6], "synth_minutes": 2.0,
                 "channel_slots": ["BAS1", "BAS3", "EMG", "EKG"]},
        "model": {"name": "set_transformer_staging" if task == "sleep_staging" else "set_transformer_diagnosis",
                  **TINY_MODEL, **HEAD[task]},
        "train": {"rounds": 1, "batch_size": 4, "loss": "weighted_ce" if task == "sleep_staging" else "coxph", **train},
        "privacy": {"target_epsilon": 8.0},
    }  # fmt: skip


@pytest.fixture(scope="module")
def sleep_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sleep")
    build_task(config_from_dict(_config("sleep_staging", root))).synthesize(root, ["a", "b", "c"], seed=0)
    return root


def test_shipped_configs_build_their_tasks_and_models() -> None:
    for name, cls, out_dims in (("sleep_staging", SleepStagingTask, 3), ("sleep_diagnosis", SleepDiagnosisTask, 2)):
        cfg = load_config(REPO_ROOT / "fedcare" / "configs" / f"{name}.yaml")
        task = build_task(cfg)
        assert isinstance(task, cls) and task.name == name and task.id_column == "record_id"
        assert cfg.privacy.target_epsilon == 8.0 and cfg.model.params["preset"] == "small"
        model = task.build_model()
        slots, n = len(cfg.data.channel_slots), cfg.data.max_epochs
        x = torch.randn(2, slots, n * 6, 640)
        batch = [x, torch.ones(2, slots, dtype=torch.bool), torch.ones(2, n, dtype=torch.bool), torch.zeros(2, 2)]
        assert task.forward(model.eval(), batch).dim() == out_dims
    assert task.primary_metric == "c_index" and SleepStagingTask.primary_metric == "kappa"


def test_wrong_loss_for_the_task_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="train.loss: 'bce' does not fit sleep_staging"):
        build_task(config_from_dict(_config("sleep_staging", tmp_path, loss="bce"), "run.yaml"))
    with pytest.raises(InputError, match="train.loss: 'ce' does not fit sleep_diagnosis"):
        build_task(config_from_dict(_config("sleep_diagnosis", tmp_path, loss="ce"), "run.yaml"))


def test_staging_site_preparation_loss_metrics_and_site_report(sleep_root: Path, tmp_path: Path) -> None:
    task = build_task(config_from_dict(_config("sleep_staging", sleep_root)))
    data = task.prepare_site(sleep_root / "b", "b", tmp_path / "state")
    assert (data.n_train, data.n_val) == (4, 2)
    x, channel_valid, epoch_valid, onsets, stages = data.train.tensors
    assert x.shape == (4, 4, 24, 640) and stages.shape == (4, 4) and onsets.dtype == torch.float64
    assert channel_valid[:, 2].sum() == 0  # site b has no EMG
    assert data.info["missing_slots"]["EMG"] == 6
    # public class weights (issue 17), never the site's stage counts: N1 (the rarest in a typical night) weighs most
    weights = task.criterion.weight.numpy()
    assert weights.argmax() == 1 and weights.argmin() == 2 and weights.mean() == pytest.approx(1.0)
    other = build_task(config_from_dict(_config("sleep_staging", sleep_root)))
    other.prepare_site(sleep_root / "a", "a", tmp_path / "state_a")
    assert np.array_equal(other.criterion.weight.numpy(), weights)  # another site's stages: the same weights
    loss = task.loss(task.build_model(), data.train.tensors)
    assert torch.isfinite(loss) and loss.requires_grad

    # metrics over scored epochs only; perfect predictions -> 1, bootstrap CIs; all whitelisted
    y = np.array([[0, 2, 2, 4], [3, 3, UNSCORED, 1]])
    logits = np.eye(5)[np.where(y == UNSCORED, 0, y)] * 5.0
    logits[1, 2] = [0, 0, 0, 0, 9]  # a wrong guess on the unscored epoch does not count
    report = task.metrics(y, logits)
    assert report["accuracy"] == 1.0 and report["kappa"] == 1.0 and report["macro_f1"] == 1.0
    assert {"kappa_ci_low", "kappa_ci_high", "accuracy_ci_low"} <= set(report) <= ALLOWED_METRICS
    assert not (tmp_path / "state" / "reports").exists()  # metrics compute; the caller writes the site report
    write_report_files(tmp_path / "state" / "reports", task.site_report(y, logits, report))
    written = json.loads((tmp_path / "state" / "reports" / "sleep_staging.json").read_text())
    assert written["kappa"] == report["kappa"]
    assert written["scored_epochs"] == 7 and written["per_stage_f1"]["N3"] == 1.0
    assert written["confusion"]["counts"][2][2] == 2
    png = (tmp_path / "state" / "reports" / "sleep_staging_confusion.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_staging_metrics_kappa_matches_sklearn(tmp_path: Path) -> None:
    from sklearn.metrics import cohen_kappa_score

    task = build_task(config_from_dict(_config("sleep_staging", tmp_path)))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=(6, 10))
    y[0, :3] = UNSCORED
    logits = rng.normal(size=(6, 10, 5)) + 2.0 * np.eye(5)[np.clip(y, 0, 4)]
    report = task.metrics(y, logits)
    keep = y != UNSCORED
    assert report["kappa"] == pytest.approx(cohen_kappa_score(y[keep], logits.argmax(-1)[keep]))
    assert report["kappa_ci_low"] <= report["kappa"] <= report["kappa_ci_high"]


def test_staging_prediction_inputs_and_per_epoch_frame(sleep_root: Path) -> None:
    task = build_task(config_from_dict(_config("sleep_staging", sleep_root)))
    ids, dataset = task.prediction_inputs(sleep_root / "c", None)
    assert len(ids) == 6 and len(dataset) == 6
    outputs = task.forward(task.build_model().eval(), dataset.tensors).detach().numpy()
    frame = task.prediction_frame(ids, dataset, outputs)
    assert len(frame) == int(dataset.tensors[2].sum()) == 6 * 4
    assert list(frame.columns) == ["record_id", "epoch", "onset_s", "stage", "p_W", "p_N1", "p_N2", "p_N3", "p_R"]
    assert np.allclose(frame[["p_W", "p_N1", "p_N2", "p_N3", "p_R"]].sum(axis=1), 1.0)
    assert frame["onset_s"].iloc[:4].tolist() == [0.0, 30.0, 60.0, 90.0] and set(frame["stage"]) <= {"W", "N1", "N2", "N3", "R"}


def test_diagnosis_site_loss_metrics_and_prediction(sleep_root: Path, tmp_path: Path) -> None:
    task = build_task(config_from_dict(_config("sleep_diagnosis", sleep_root)))
    data = task.prepare_site(sleep_root / "a", "a", tmp_path / "state")
    x, channel_valid, epoch_valid, demographics, times, events = data.train.tensors
    assert demographics.shape == (6, 2) and times.shape == events.shape == (6, 2)
    assert task.targets(data.train.tensors).shape == (6, 2, 2)
    model = task.build_model()
    assert torch.isfinite(task.loss(model, data.train.tensors))
    # a risk that orders every comparable pair right gives C-index 1 for both outcomes
    time = np.array([[100.0, 50.0], [200.0, 150.0], [300.0, 250.0], [400.0, 350.0]])
    event = np.array([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=float)
    report = task.metrics(np.stack([time, event], axis=-1), -time)
    assert report["c_index"] == 1.0 and set(report) <= ALLOWED_METRICS
    assert not (tmp_path / "state" / "reports").exists()
    write_report_files(tmp_path / "state" / "reports", task.site_report(np.stack([time, event], axis=-1), -time, report))
    per_outcome = json.loads((tmp_path / "state" / "reports" / "sleep_diagnosis.json").read_text())["c_index_per_outcome"]
    assert per_outcome == {"cvd": 1.0, "death": 1.0}
    ids, dataset = task.prediction_inputs(sleep_root / "a", None)
    frame = task.prediction_frame(ids, dataset, task.forward(model.eval(), dataset.tensors).detach().numpy())
    assert list(frame.columns) == ["record_id", "risk_cvd", "risk_death"] and len(frame) == 8


def test_pretraining_config_model_and_per_recording_loss(sleep_root: Path, tmp_path: Path) -> None:
    raw = _config("sleep_staging", sleep_root)
    raw["pretrain"] = {"enabled": True, "rounds": 3, "projection_dim": 8}
    cfg = config_from_dict(raw)
    assert (cfg.pretrain_rounds, cfg.total_rounds, cfg.pretrain.temperature) == (3, 4, 0.07)
    task = build_task(cfg)
    assert task.channel_modality().tolist() == [0, 0, 3, 2]  # BAS1, BAS3, EMG, EKG
    data = task.prepare_site(sleep_root / "b", "b", tmp_path / "state")  # site b: no EMG
    model = task.build_pretrain_model()
    x, channel_valid, epoch_valid = data.train.tensors[:3]
    z = model.epoch_embeddings(x, channel_valid, epoch_valid, task.channel_modality())
    assert z.shape == (4, 4, 4, 8) and z[:, 3].abs().sum() == 0  # (B, M, N, D); EMG absent: zeros
    one = task.pretrain_loss(model, [t[:1] for t in data.train.tensors])
    both = task.pretrain_loss(model, [t[:2] for t in data.train.tensors])
    other = task.pretrain_loss(model, [t[1:2] for t in data.train.tensors])
    assert torch.allclose(both, (one + other) / 2, atol=1e-5)  # a mean of per-recording terms
    from shared.training.dp_trainer import TrainSettings, train_model

    for mode in ("hooks", "bookkeeping"):  # through Opacus' wrapper and through the book-keeping engine
        settings = TrainSettings(epochs=1, expected_batch_size=2, noise_multiplier=1.0, grad_sample_mode=mode, seed=0)
        result = train_model(task.build_pretrain_model(), data.train, task.pretrain_loss, settings)
        assert result.grad_sample_mode == mode and result.steps == 2 and np.isfinite(result.mean_loss)
    staging = task.build_model()
    assert task.load_pretrained_encoder(staging, model.state_dict()) == len(staging.encoder.state_dict())
    assert torch.equal(staging.encoder.token_proj.weight, model.encoder.token_proj.weight)
    for bad, field in (({"enabled": True, "rounds": 0}, "pretrain.rounds"), ({"temperature": 0.0}, "pretrain.temperature")):
        with pytest.raises(InputError, match=field):
            config_from_dict({**raw, "pretrain": bad}, "run.yaml")
    with pytest.raises(InputError, match="pretrain.enabled: no pretraining phase for task 'event_mortality'"):
        config_from_dict({"task": "event_mortality", "pretrain": {"enabled": True}}, "run.yaml")


def test_fedcare_synth_writes_psg_sites(tmp_path: Path) -> None:
    import pandas as pd

    from fedcare.cli import main

    assert main(["synth", "--task", "sleep_staging", "--sites", "2", "--sizes", "2,1", "--out", str(tmp_path)]) == 0
    for site, n in (("hospital_a", 2), ("hospital_b", 1)):
        frame = pd.read_csv(tmp_path / site / "recordings.csv")
        assert len(frame) == n and (tmp_path / site / frame["psg_file"][0]).read_bytes()[:8] == b"0       "


def test_a_loss_first_built_inside_an_evaluation_still_trains(sleep_root: Path) -> None:
    """A site served from its data cache never runs prepare_site, so the task builds its criterion on the first
    loss call, which can be an evaluation under torch.inference_mode (a Ray actor or a resumed run that evaluates
    first). Its class weights must still be usable by autograd (CI flake of stop 26: "Inference tensors cannot be
    saved for backward" in the next training round)."""
    cfg = config_from_dict(_config("sleep_staging", sleep_root))
    task = build_task(cfg)
    data = build_task(cfg).prepare_site(sleep_root / "a", "a", sleep_root / "state_a")  # another task object prepared it
    assert task.criterion is None
    model = task.build_model()
    batch = list(data.train.tensors)
    with torch.inference_mode():
        task.loss(model.eval(), batch)  # the evaluation builds the criterion
    loss = task.loss(model.train(), batch)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
