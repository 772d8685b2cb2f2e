"""The tabular tasks end to end through the `fedcare` command, as a user runs them: `synth`, `simulate`
with DP (2 rounds, 3 small sites), `evaluate`, `predict`, `report`. The planted signal is found, the
test metrics come from the fixed test rows only and equal sklearn / lifelines on the saved predictions,
and a site whose test rows hold no event says so instead of reporting a number."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score

from fedcare.cli import main
from server.checkpoints import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
SITES = ["hospital_a", "hospital_b", "hospital_c"]


@pytest.fixture(scope="module", params=["tabular_binary", "tabular_survival"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    task = request.param
    root = tmp_path_factory.mktemp(task)
    data = root / "data"
    assert main(["synth", "--task", task, "--sites", "3", "--sizes", "400,300,200", "--seed", "1", "--out", str(data)]) == 0
    if task == "tabular_survival":  # hospital_c's test rows: all censored
        table = pd.read_csv(data / "hospital_c" / "table.csv")
        table.loc[table["split"] == "test", "event observed"] = 0
        table.to_csv(data / "hospital_c" / "table.csv", index=False)
    raw = yaml.safe_load((REPO / "fedcare" / "configs" / f"{task}.yaml").read_text())
    raw["data"]["root"] = str(data)
    raw["train"]["rounds"] = 2
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["simulate", "--config", str(config), "--output", str(root / "runs")]) == 0
    (run_dir,) = list((root / "runs").iterdir())
    return {"task": task, "root": root, "data": data, "run_dir": run_dir}


def _test_rows(run: dict[str, Any], site: str, predictions: pd.DataFrame) -> pd.DataFrame:
    table = pd.read_csv(run["data"] / site / "table.csv")
    merged = table.merge(predictions, on="patient id", validate="one_to_one")
    return merged[merged["split"] == "test"]


def test_simulate_reports_test_metrics_with_the_planted_signal(run: dict[str, Any]) -> None:
    result = json.loads((run["run_dir"] / "test_metrics.json").read_text())
    summary = json.loads((run["run_dir"] / "summary.json").read_text())
    assert summary["test"] == result and result["round"] == 2
    metric = "auroc" if run["task"] == "tabular_binary" else "c_index"
    pooled = result["pooled"][metric]
    assert pooled["value"] > 0.65 and pooled["ci_low"] < pooled["value"] < pooled["ci_high"]
    for site in SITES:
        table = pd.read_csv(run["data"] / site / "table.csv")
        assert result["sites"][site]["n"] == int((table["split"] == "test").sum())
    assert result["pooled"]["n"] == sum(result["sites"][s]["n"] for s in SITES)
    config = yaml.safe_load((run["run_dir"] / "config.yaml").read_text())  # the resolved config shows the inputs
    nyha = next(c for c in config["data"]["covariates"] if c["name"] == "NYHA class")
    assert nyha["inputs"][0] == "x[9] = 1 if NYHA class is II"
    if run["task"] == "tabular_survival":
        assert result["sites"]["hospital_c"]["c_index"] == "n/a: no events"
        assert result["sites"]["hospital_c"]["n_events"] == 0


def test_reported_numbers_match_sklearn_and_lifelines_on_the_saved_predictions(run: dict[str, Any]) -> None:
    run_dir = run["run_dir"]
    assert main(["evaluate", "--run", str(run_dir)]) == 0
    result = json.loads((run_dir / "test_metrics.json").read_text())
    checkpoint = run_dir / "checkpoints" / "round_002.pt"
    survival = run["task"] == "tabular_survival"
    pooled = []
    for site in SITES:
        out = run["root"] / f"pred_{site}.csv"
        horizons = ["--horizons", "365,730", "--encoder", str(run_dir / "sites" / site)] if survival else []
        assert main(["predict", "--checkpoint", str(checkpoint), "--data", str(run["data"] / site), "--out", str(out),
                     *horizons]) == 0
        predictions = pd.read_csv(out)
        rows = _test_rows(run, site, predictions)
        pooled.append(rows)
        reported = result["sites"][site]
        if survival:
            assert list(predictions.columns) == ["patient id", "risk_score", "survival_365", "survival_730"]
            s365, s730 = predictions["survival_365"], predictions["survival_730"]
            assert ((s365 > 0) & (s365 < 1)).all() and (s730 <= s365).all()
            if site == "hospital_c":
                continue  # n/a: no events
            expected = concordance_index(rows["days to event"], -rows["risk_score"], rows["event observed"])
            assert reported["c_index"]["value"] == pytest.approx(expected, abs=1e-9)
        else:
            calibrated = ["uncalibrated_probability"] if load_checkpoint(checkpoint).get("calibration") else []
            assert list(predictions.columns) == ["patient id", "probability", "predicted_label", *calibrated]
            expected = roc_auc_score(rows["outcome"], rows["probability"])
            assert reported["auroc"]["value"] == pytest.approx(expected, abs=1e-6)
            # evaluate scores what predict writes: the recalibrated probabilities
            assert reported["brier"]["value"] == pytest.approx(np.mean((rows["probability"] - rows["outcome"]) ** 2), abs=1e-6)
    # one hospital on its own data (deployment): the same report as in the run's file, written to its state folder
    state = run["root"] / "hospital_b_state"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(run["data"] / "hospital_b"),
                 "--state", str(state)]) == 0
    assert json.loads((state / "test_metrics.json").read_text())["report"] == result["sites"]["hospital_b"]
    rows = pd.concat(pooled)
    if survival:
        expected = concordance_index(rows["days to event"], -rows["risk_score"], rows["event observed"])
        assert result["pooled"]["c_index"]["value"] == pytest.approx(expected, abs=1e-9)
    else:
        assert result["pooled"]["auroc"]["value"] == pytest.approx(roc_auc_score(rows["outcome"], rows["probability"]), abs=1e-6)


def test_report_and_bad_predict_options(run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(run["run_dir"])]) == 0
    page = (run["run_dir"] / "report.html").read_text()
    assert '<section id="test">' in page and "pooled" in page
    if run["task"] == "tabular_survival":
        assert "n/a: no events" in page
    checkpoint = str(run["run_dir"] / "checkpoints" / "round_002.pt")
    site = str(run["data"] / "hospital_a")
    capsys.readouterr()
    if run["task"] == "tabular_binary":
        assert main(["predict", "--checkpoint", checkpoint, "--data", site, "--horizons", "365"]) == 2
        assert "--horizons: only for survival tasks" in capsys.readouterr().out
    else:
        assert main(["predict", "--checkpoint", checkpoint, "--data", site, "--horizons", "soon"]) == 2
        assert "--horizons: comma-separated positive numbers" in capsys.readouterr().out
        empty_state = run["root"] / "other_site_state"
        empty_state.mkdir()
        assert main(["predict", "--checkpoint", checkpoint, "--data", site, "--horizons", "30",
                     "--encoder", str(empty_state)]) == 2
        assert "no baseline hazard estimated at this site" in capsys.readouterr().out
