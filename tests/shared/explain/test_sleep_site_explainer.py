"""Site explanations of the sleep tasks through the registry: a small model trained a few steps on a
synthetic PSG site, then `explain_site` writes the report, the channels x time PNGs and the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.config import config_from_dict
from shared.explain.registry import ExplainOptions, explain_site, explainable_tasks
from shared.tasks.registry import build_task
from shared.training.dp_trainer import TrainSettings, train_model
from tests.shared.tasks.test_sleep_tasks import _config

OPTIONS = ExplainOptions(n_patients=2, cohort_size=5, ig_steps=4, ig_max_steps=4, batch_size=4)


@pytest.fixture(scope="module")
def sleep_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sleep_explain")
    build_task(config_from_dict(_config("sleep_staging", root))).synthesize(root, ["a", "b", "c"], seed=3)
    return root


def _trained(task_name: str, root: Path, state: Path):  # type: ignore[no-untyped-def]
    task = build_task(config_from_dict(_config(task_name, root)))
    data = task.prepare_site(root / "a", "a", state)
    torch.manual_seed(0)
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_model(model, data.train, task.loss, TrainSettings(epochs=2, expected_batch_size=4, lr=3e-3, noise_multiplier=None))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    return task, model


def test_sleep_tasks_are_registered() -> None:
    assert {"sleep_staging", "sleep_diagnosis"} <= set(explainable_tasks())


def test_staging_site_report_png_and_json(sleep_root: Path, tmp_path: Path) -> None:
    task, model = _trained("sleep_staging", sleep_root, tmp_path / "state")
    files = explain_site(task, model, sleep_root / "a", tmp_path / "state", tmp_path / "report", OPTIONS, source="test")
    assert files.markdown.is_file() and files.html.is_file()
    numbers = json.loads(files.json.read_text())
    assert numbers["task"] == "sleep_staging" and numbers["source"] == "test" and numbers["cohort_size"] == 5
    assert numbers["site"]["channel_slots"] == ["BAS1", "BAS3", "EMG", "EKG"]
    patients = numbers["patients"]
    assert len(patients) == 2
    for patient in patients:
        attention = np.array(patient["channel_attention"])  # channels x the recording's epochs
        assert attention.shape == (4, 4)
        assert np.allclose(attention.sum(0), 1.0, atol=1e-5)  # site a has all four slots: weights over them sum to 1
        assert set(patient["ablation_effects"]) == {"BAS", "RESP", "EKG", "EMG"}
        assert patient["ablation_effects"]["RESP"] == 0.0  # no RESP slot in this layout: nothing to ablate
        assert np.array(patient["layer_ig_relevance"]).shape == (4, 4)
        assert patient["reasons"][0].startswith("predicted stages over 4 epochs")
    ablation = next(v for k, v in numbers["cohort"].items() if k.startswith("feature ablation"))
    assert ablation["BAS"] > 0.0 and ablation["RESP"] == 0.0
    pngs = sorted(p.name for p in files.figures)
    assert sum(name.endswith("_attention.png") for name in pngs) == 2
    assert sum(name.endswith("_relevance.png") for name in pngs) == 2
    for path in files.figures:
        assert path.read_bytes().startswith(b"\x89PNG")
    channel_attention = next(v for k, v in numbers["cohort"].items() if k.startswith("channel attention"))
    assert set(channel_attention) == {"BAS1 (EEG)", "BAS3 (EOG)", "EMG", "EKG"}
    assert "| BAS1 (EEG) |" in files.markdown.read_text()


def test_diagnosis_site_report_names_demographics(sleep_root: Path, tmp_path: Path) -> None:
    task, model = _trained("sleep_diagnosis", sleep_root, tmp_path / "state")
    files = explain_site(task, model, sleep_root / "a", tmp_path / "state", tmp_path / "report", OPTIONS)
    numbers = json.loads(files.json.read_text())
    assert numbers["task"] == "sleep_diagnosis" and numbers["output_name"] == "hazard logit (cvd)"
    assert set(numbers["patients"][0]["ablation_effects"]) == {"BAS", "RESP", "EKG", "EMG", "age", "sex"}
    assert any(path.name.startswith("recording_") for path in files.figures)
