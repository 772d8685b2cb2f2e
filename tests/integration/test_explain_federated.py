"""A real Flower simulation (2 tiny sites x 1 round, per explainable task) with `explain.final_round`: each site writes its
explanation report into its own state folder, and no message the server receives carries any of
it (only model weights and whitelisted aggregate scalars)."""

import json
import math
import re

import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from fedcare.simulation import simulate
from server import strategy as strategy_module
from server.checkpoints import load_checkpoint
from shared.config import config_from_dict
from shared.privacy.whitelist import ALLOWED_METRICS, ALLOWED_SITE_KEYS

SITES = ("site_a", "site_b")
COMMON = {
    "train": {"rounds": 1, "local_epochs": 1, "batch_size": 32, "lr": 0.003},
    "privacy": {"target_epsilon": 4.0},
    "strategy": {"name": "fedavg", "min_sites": 2},
    "explain": {"final_round": True, "patients": 3},
}
TASKS = {
    "event_mortality": {
        "data": {"sites": list(SITES), "synth_sizes": [100, 70], "max_events": 24, "text_dim": 8},
        "model": {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2,
                  "mlp_hidden": 16},
    },
    "retain_aki": {
        "data": {"sites": list(SITES), "synth_sizes": [100, 70], "max_events": 8},
        "model": {"name": "retain", "emb_dim": 8, "alpha_hidden": 8, "beta_hidden": 8, "dropout": 0.0},
    },
}
# per task: (cohort figures, figures per patient, a per-patient key holding per-item values)
REPORT_SHAPE = {"event_mortality": (2, 1, "events"), "retain_aki": (3, 2, "contributions")}


@pytest.fixture(scope="module", params=sorted(TASKS))
def run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"explain_sim_{request.param}")
    raw = json.loads(json.dumps({"task": request.param, **TASKS[request.param], **COMMON}))
    raw["data"]["root"] = str(root / "data")
    raw["output_dir"] = str(root / "runs")
    cfg = config_from_dict(raw, "tiny_explain.yaml")
    received = []
    original_train = strategy_module.SiteTracking.aggregate_train
    original_eval = strategy_module.SiteTracking.aggregate_evaluate

    def spy_train(self, server_round, replies):
        replies = list(replies)
        received.extend(("train", m) for m in replies)
        return original_train(self, server_round, replies)

    def spy_eval(self, server_round, replies):
        replies = list(replies)
        received.extend(("evaluate", m) for m in replies)
        return original_eval(self, server_round, replies)

    mp = pytest.MonkeyPatch()
    mp.setattr(strategy_module.SiteTracking, "aggregate_train", spy_train)
    mp.setattr(strategy_module.SiteTracking, "aggregate_evaluate", spy_eval)
    try:
        run_dir, summary = simulate(cfg)
    finally:
        mp.undo()
    return request.param, run_dir, summary, received


def _report_folder(run_dir, site):
    return run_dir / "sites" / site / "explanations" / f"{run_dir.name}_round_001"


def _numbers(value, out):
    """Every non-integer float in a JSON document (the per-patient values the report holds)."""
    if isinstance(value, dict):
        for v in value.values():
            _numbers(v, out)
    elif isinstance(value, list):
        for v in value:
            _numbers(v, out)
    elif isinstance(value, float) and math.isfinite(value) and value != round(value):
        out.add(value)
    return out


def test_each_site_wrote_its_report_locally(run):
    task, run_dir, summary, _ = run
    cohort_figures, patient_figures, per_item = REPORT_SHAPE[task]
    assert summary["complete"]
    for site in SITES:
        folder = _report_folder(run_dir, site)
        assert not (folder / "explanation_error.txt").exists()
        numbers = json.loads((folder / "explanations.json").read_text())
        assert numbers["task"] == task and len(numbers["patients"]) == 3 and numbers["cohort_size"] > 0
        assert all(p[per_item] and p["reasons"] for p in numbers["patients"])
        markdown = (folder / "report.md").read_text()
        links = re.findall(r"\]\(([^)]+\.png)\)", markdown)
        assert len(links) == cohort_figures + 3 * patient_figures and all((folder / link).is_file() for link in links)
    # nowhere else in the run folder (the coordinating center's side) is there an explanation
    outside = [p for p in run_dir.rglob("*") if "explanations" in p.parts and p.relative_to(run_dir).parts[0] != "sites"]
    assert outside == []


def test_no_message_to_the_server_carries_explanations(run):
    task, run_dir, _, received = run
    model_state = load_checkpoint(run_dir / "checkpoints" / "round_000.pt")["state_dict"]
    assert sorted(phase for phase, _ in received) == ["evaluate", "evaluate", "train", "train"]
    explained = set()
    for site in SITES:
        _numbers(json.loads((_report_folder(run_dir, site) / "explanations.json").read_text()), explained)
    assert len(explained) > 100  # attributions, attention weights, per-patient outputs
    for phase, msg in received:
        assert not msg.has_error(), msg.error
        assert set(msg.content.keys()) <= {"arrays", "metrics", "site"}
        for name, record in msg.content.items():
            if name == "arrays":
                assert phase == "train" and isinstance(record, ArrayRecord)
                assert {k: tuple(v.shape) for k, v in record.items()} == {k: tuple(v.shape) for k, v in model_state.items()}
            elif name == "metrics":
                assert isinstance(record, MetricRecord) and set(record.keys()) <= ALLOWED_METRICS
                for key, value in record.items():
                    assert isinstance(value, (int, float)) and math.isfinite(value)  # one scalar each
                    assert value not in explained, f"{phase} metric {key}={value} equals a value of the site report"
            else:
                assert isinstance(record, ConfigRecord) and set(record.keys()) <= ALLOWED_SITE_KEYS
                assert record["status"] in ("trained", "evaluated") and record["reason"] == ""
        if phase == "evaluate":
            # the DP evaluation release: noisy score histograms (the center derives AUROC and the rest)
            assert {"num-examples", "hist_pos_0", "hist_neg_0"} <= set(msg.content["metrics"].keys())
