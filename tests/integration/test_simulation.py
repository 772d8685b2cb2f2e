"""A real Flower simulation (simulation runtime, one SuperNode per site), run once per module:
3 tiny sites x 2 rounds, one of them with a budget too small to train."""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from fedcare.audit_run import audit_path
from fedcare.simulation import simulate
from server import packing_grid
from server import strategy as strategy_module
from server.checkpoints import load_checkpoint
from shared.config import config_from_dict
from shared.content_packing import PACKED_KEY, packed_blob, packed_header, unpack_content
from shared.privacy.dp_evaluation import bin_edges
from shared.privacy.ledger import SiteLedger
from shared.privacy.whitelist import ALLOWED_METRICS, ALLOWED_SITE_KEYS

TINY = {
    "task": "event_mortality",
    "data": {"sites": ["site_a", "site_b", "site_c"], "synth_sizes": [160, 120, 60], "max_events": 32, "text_dim": 16},
    "model": {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2,
              "mlp_hidden": 16},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 32, "lr": 0.003},
    "privacy": {"target_epsilon": 4.0, "site_targets": {"site_c": 0.001}},
    "strategy": {"name": "fedavg", "min_sites": 2},
}

WIRE = []  # every reply content as it reached the center's Grid (packed, shared/content_packing.py)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root / "data")
    raw["output_dir"] = str(root / "runs")
    cfg = config_from_dict(raw, "tiny.yaml")
    received = []  # every reply content the server-side strategy was handed

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

    original_unpacked = packing_grid._unpacked

    def spy_wire(reply):
        WIRE.append(reply.content if reply.has_content() else None)
        return original_unpacked(reply)

    mp = pytest.MonkeyPatch()
    mp.setattr(strategy_module.SiteTracking, "aggregate_train", spy_train)
    mp.setattr(strategy_module.SiteTracking, "aggregate_evaluate", spy_eval)
    mp.setattr(packing_grid, "_unpacked", spy_wire)
    try:
        run_dir, summary = simulate(cfg)
    finally:
        mp.undo()
    return cfg, run_dir, summary, received


def test_run_folder_is_complete(run):
    cfg, run_dir, summary, _ = run
    assert summary["complete"] and summary["rounds_planned"] == 2
    for name in ("config.yaml", "metrics.json", "summary.json"):
        assert (run_dir / name).is_file()
    for r in range(3):
        ckpt = load_checkpoint(run_dir / "checkpoints" / f"round_{r:03d}.pt")
        assert ckpt["round"] == r and ckpt["task"] == "event_mortality"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["rounds"]) == {"1", "2"}
    for site in ("site_a", "site_b"):
        ev = metrics["rounds"]["2"][site]["evaluate"]
        # derived at the center from noisy histograms; 30-40 validation stays: the noisy total may even round to 0
        assert 0.0 <= ev["auroc"] <= 1.0 and ev["num-examples"] >= 0


def test_global_weights_change_between_rounds(run):
    _, run_dir, _, _ = run
    states = [load_checkpoint(run_dir / "checkpoints" / f"round_{r:03d}.pt")["state_dict"] for r in range(3)]
    for before, after in zip(states, states[1:]):
        assert any(not torch.equal(before[k], after[k]) for k in before)


def test_epsilon_rises_each_round_and_ends_near_target(run):
    cfg, run_dir, _, _ = run
    for site in ("site_a", "site_b"):
        entries = SiteLedger(run_dir / "sites" / site / "privacy_ledger.jsonl", site).entries()
        eps = [e["cumulative_epsilon"] for e in entries]
        # the run's noisy count (the FedAvg weight, once); each round: its training, then the DP release of its
        # evaluation (one Gaussian mechanism, noise 4)
        assert [(e["round"], e["extra"]["phase"]) for e in entries] == [(1, "count"), (1, "train"), (1, "evaluate"),
                                                                        (2, "train"), (2, "evaluate")]
        assert all(e["status"] == "trained" for e in entries)
        assert [e["mechanism"] for e in entries[2::2]] == [{"noise_multiplier": 4.0, "sample_rate": 1.0, "steps": 1}] * 2
        assert entries[0]["mechanism"] == {"noise_multiplier": cfg.privacy.count_noise_multiplier, "sample_rate": 1.0,
                                           "steps": 1}
        assert eps == sorted(eps) and eps[-1] <= cfg.privacy.target_epsilon
        assert eps[-1] >= 0.9 * cfg.privacy.target_epsilon  # the plan spends the budget (training + evaluation)
        mech = entries[1]["mechanism"]
        assert mech["noise_multiplier"] > 0 and 0 < mech["sample_rate"] <= 1 and mech["steps"] >= 1


def test_site_with_too_small_budget_refuses_and_run_finishes(run):
    _, run_dir, summary, received = run
    c = summary["sites"]["site_c"]
    assert c["rounds_trained"] == [] and c["first_stop"]["status"] == "budget_exhausted"
    assert c["first_stop"]["round"] == 1
    assert any("site_c" in e and "budget_exhausted" in e for e in summary["events"])
    c_train = [m for phase, m in received if phase == "train" and m.content["site"]["name"] == "site_c"]
    assert len(c_train) == 1  # asked once, then no longer sent training requests
    assert "arrays" not in c_train[0].content
    assert int(c_train[0].content["metrics"]["budget_exhausted"]) == 1


def test_every_message_to_the_server_holds_only_weights_and_whitelisted_scalars(run):
    cfg, run_dir, _, received = run
    model_keys = set(load_checkpoint(run_dir / "checkpoints" / "round_000.pt")["state_dict"])
    assert len(received) >= 2 * 2 + 3 * 2  # trained replies + evaluation replies
    for phase, msg in received:
        assert not msg.has_error(), msg.error
        content = msg.content
        assert set(content.keys()) <= {"arrays", "metrics", "site"}
        for name, record in content.items():
            if name == "arrays":
                assert phase == "train" and isinstance(record, ArrayRecord)
                assert set(record.keys()) == model_keys
            elif name == "metrics":
                assert isinstance(record, MetricRecord)
                assert set(record.keys()) <= ALLOWED_METRICS, set(record.keys()) - ALLOWED_METRICS
                for value in record.values():
                    assert isinstance(value, (int, float)) and math.isfinite(value)  # one scalar, no lists
            else:
                assert isinstance(record, ConfigRecord) and set(record.keys()) <= ALLOWED_SITE_KEYS
                assert all(isinstance(v, str) and len(v) <= 200 for v in record.values())
        # no array anywhere carries a per-patient vector: arrays are exactly the model parameters
        if "arrays" in content:
            shapes = {k: tuple(v.shape) for k, v in content["arrays"].items()}
            expected = {k: tuple(v.shape) for k, v in
                        load_checkpoint(run_dir / "checkpoints" / "round_000.pt")["state_dict"].items()}
            assert shapes == expected


def test_on_the_wire_a_reply_is_one_packed_record_of_the_model_arrays_and_whitelisted_records(run):
    _, run_dir, _, received = run
    wire = [content for content in WIRE if content is not None]
    expected = load_checkpoint(run_dir / "checkpoints" / "round_000.pt")["state_dict"]
    assert len(wire) == len(received)  # every reply the strategy saw came through the packing Grid
    headers = []
    for content in wire:
        assert list(content.keys()) == [PACKED_KEY]  # one record: nothing travels beside the packing
        entries, _ = packed_header(packed_blob(content))  # raises unless the sizes add up to every byte
        assert {e["name"] for e in entries} <= {"arrays", "metrics", "site"}
        headers.append({e["name"]: e for e in entries})
    trained = [h for h in headers if "arrays" in h]
    assert len(trained) == 2 * 2  # two sites trained in two rounds
    for header, content in zip(headers, wire, strict=True):
        if "arrays" not in header:
            continue
        arrays = header["arrays"]
        # the header is the model's own parameter list, and the packed bytes are exactly those parameters
        assert arrays["kind"] == "array" and arrays["keys"] == list(expected)
        assert [tuple(s) for s in arrays["shapes"]] == [tuple(t.shape) for t in expected.values()]
        assert arrays["sizes"] == [len(a.data) for a in ArrayRecord(expected).values()]  # serialised, nothing more
        assert header["metrics"]["kind"] == "metric"
        unpacked = unpack_content(content)[0]["arrays"].to_torch_state_dict()
        assert all(unpacked[k].dtype == expected[k].dtype for k in expected)


def test_audit_recomputes_epsilon_within_one_percent(run):
    _, run_dir, _, _ = run
    audits = {a.site: a for a in audit_path(run_dir)}
    for site in ("site_a", "site_b"):
        a = audits[site]
        assert a.status == "ok", a.problems
        assert a.recomputed_epsilon == pytest.approx(a.recorded_epsilon, rel=0.01)
    assert audits["site_c"].rounds_trained == 0


def test_predict_from_checkpoint_matches_in_memory_model(run, tmp_path):
    from fedcare.predict import predict_to_csv
    from shared.tasks.registry import build_task

    cfg, run_dir, _, _ = run
    import pandas as pd

    ckpt_path = run_dir / "checkpoints" / "round_002.pt"
    out = tmp_path / "pred.csv"
    site_dir = run_dir.parent.parent / "data" / "site_a"
    n = predict_to_csv(ckpt_path, site_dir, out, run_dir / "sites" / "site_a")
    frame = pd.read_csv(out)
    ckpt = load_checkpoint(ckpt_path)
    # the Platt map the center fitted on the round's released histograms (default on); none when the noisy
    # histograms of this tiny run give no increasing map
    cmap = ckpt["calibration"]
    assert n == len(frame) == 160
    if cmap is None:
        assert list(frame.columns) == ["stay_id", "probability", "predicted_label"]
        frame["uncalibrated_probability"] = frame["probability"]
    else:
        assert list(frame.columns) == ["stay_id", "probability", "predicted_label", "uncalibrated_probability"]
        assert cmap["method"] == "platt" and cmap["slope"] > 0
        z = np.log(frame["uncalibrated_probability"]) - np.log1p(-frame["uncalibrated_probability"])
        np.testing.assert_allclose(frame["probability"], 1 / (1 + np.exp(-(cmap["slope"] * z + cmap["intercept"]))),
                                   rtol=1e-6)
    threshold = ckpt["decision_threshold"]
    np.testing.assert_array_equal(frame["predicted_label"], (frame["uncalibrated_probability"] >= threshold).astype(int))
    task = build_task(cfg)
    model = task.build_model()
    model.load_state_dict(load_checkpoint(ckpt_path)["state_dict"])
    model.eval()
    ids, dataset = task.prediction_inputs(site_dir, run_dir / "sites" / "site_a")
    with torch.no_grad():
        probs = torch.sigmoid(task.forward(model, dataset.tensors)).numpy()
    np.testing.assert_allclose(frame["uncalibrated_probability"].to_numpy(), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(frame["stay_id"].to_numpy(), ids)


def test_summary_pools_site_metrics_and_checkpoint_keeps_threshold(run):
    _, run_dir, summary, _ = run
    final = json.loads((run_dir / "metrics.json").read_text())["rounds"]["2"]
    evaluated = {site: rec["evaluate"] for site, rec in final.items() if "evaluate" in rec}
    assert set(evaluated) == {"site_a", "site_b"} and all("release" in final[s] for s in evaluated)  # site_c: no budget
    # DP evaluation: the threshold is the Youden bin edge of the summed noisy histograms, stored with the model
    expected = summary["final_aggregate"]["threshold"]
    assert np.abs(bin_edges(20) - expected).min() < 1e-12
    assert summary["decision_threshold"] == pytest.approx(expected)
    assert load_checkpoint(run_dir / "checkpoints" / "round_002.pt")["decision_threshold"] == pytest.approx(expected)
    assert load_checkpoint(run_dir / "checkpoints" / "round_000.pt")["decision_threshold"] is None  # not evaluated
    assert 0.0 <= summary["final_aggregate"]["auroc"] <= 1.0
    assert summary["final_pooled"] == {}  # DP metrics carry no bootstrap CI to pool
    assert summary["evaluation_privacy"]["outside_guarantee"] == {}
    assert not any(k.startswith("calib_bin_") for k in summary["final_weighted"])
    for ev in evaluated.values():  # every reported calibration bin holds at least 10 (noisy) patients
        assert all(v >= 10 for k, v in ev.items() if k.startswith("calib_bin_") and k.endswith("_count"))


def test_each_site_is_built_once_across_the_simulation_processes(run):
    """Ray serves a site from several actors; its data is prepared once (client/site_data_cache.py, issue 23)."""
    from client.site_data_cache import BUILDS_FILE, CACHE_DIR

    cfg, run_dir, _, _ = run
    for site in cfg.data.sites:
        builds = (run_dir / "sites" / site / CACHE_DIR / BUILDS_FILE).read_text().splitlines()
        assert len(builds) == 1, (site, builds)
