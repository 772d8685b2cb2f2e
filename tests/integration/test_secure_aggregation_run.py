"""A real simulation with secure aggregation (SecAgg+ through Flower's legacy workflow): 3 tiny sites x 2
rounds, one without budget, DP noise off (test seam) and fixed seeds, compared with plain FedAvg of the
same site updates recomputed in this process."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.common import parameters_to_ndarrays
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from client import site_worker as site_worker_module
from client.site_worker import TEST_ONLY_NO_DP_NOISE_ENV, NoisePlan, SiteSettings, SiteWorker
from fedcare.simulation import simulate
from server import secure_aggregation as secure_module
from server.checkpoints import load_checkpoint
from shared.config import config_from_dict
from shared.privacy.ledger import SiteLedger

SITES = ["site_a", "site_b", "site_c"]
TINY = {
    "task": "event_mortality",
    "data": {"sites": SITES, "synth_sizes": [160, 120, 60], "max_events": 32, "text_dim": 16},
    "model": {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2,
              "mlp_hidden": 16},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 32, "lr": 0.003},
    "privacy": {"target_epsilon": 4.0, "site_targets": {"site_c": 0.001}},
    "strategy": {"name": "fedavg", "min_sites": 2},
    "secure_aggregation": {"enabled": True, "max_num_examples": 120},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("secagg")
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root / "data")
    raw["output_dir"] = str(root / "runs")
    cfg = config_from_dict(raw, "tiny_secagg.yaml")
    seen = {"aggregate_fit": [], "replies": []}
    original_aggregate = secure_module.SecureFedAvg.aggregate_fit
    original_send = secure_module.ProtocolReplyTracker.send_and_receive

    def spy_aggregate(self, server_round, results, failures):
        seen["aggregate_fit"].append((server_round, [(fitres.num_examples, parameters_to_ndarrays(fitres.parameters))
                                                     for _, fitres in results]))
        return original_aggregate(self, server_round, results, failures)

    def spy_send(self, messages, *, timeout=None):
        replies = list(original_send(self, messages, timeout=timeout))
        seen["replies"].extend(replies)
        return replies

    mp = pytest.MonkeyPatch()
    mp.setenv(TEST_ONLY_NO_DP_NOISE_ENV, "1")  # Ray's workers inherit it
    mp.setattr(secure_module.SecureFedAvg, "aggregate_fit", spy_aggregate)
    mp.setattr(secure_module.ProtocolReplyTracker, "send_and_receive", spy_send)
    try:
        run_dir, summary = simulate(cfg)
        reference = _plain_fedavg(cfg, run_dir, root / "reference")
    finally:
        mp.undo()
    return cfg, run_dir, summary, seen, reference


def _plain_fedavg(cfg, run_dir, state_root):
    """Each round, Flower's FedAvg of the updates the trained sites compute from the run's previous global
    model, recomputed here (same seeds, same thread count as the workers: bit-identical training). Following
    the run's own trajectory matters: with AdamW a 1e-7 difference in round r's start grows to ~1e-3 by the
    end of round r + 1, whatever the aggregation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()  # the noise plan and the accountant are irrelevant without noise, and slow
    mp.setattr(SiteWorker, "round_refusal", lambda self, server_round, phase="train": None)
    mp.setattr(SiteWorker, "plan", lambda self: NoisePlan(1.0, 0.25, 4, 4.0))
    mp.setattr(site_worker_module, "epsilon_opacus", lambda *args, **kwargs: 0.0)
    try:
        workers = {s: SiteWorker(cfg, SiteSettings(s, Path(cfg.data.root) / s, state_root / s), "reference")
                   for s in ("site_a", "site_b")}
        rounds = {}
        for r in (1, 2):
            start = load_checkpoint(run_dir / "checkpoints" / f"round_{r - 1:03d}.pt")["state_dict"]
            replies = {}
            for site, worker in workers.items():
                outcome = worker.train_round(r, {k: v.clone() for k, v in start.items()})
                replies[site] = RecordDict({"arrays": ArrayRecord(outcome.arrays),
                                            "metrics": MetricRecord({"num-examples": outcome.metrics["num-examples"]})})
            rounds[r] = {
                "global": aggregate_arrayrecords(list(replies.values()), "num-examples").to_torch_state_dict(),
                "updates": {s: rd["arrays"].to_torch_state_dict() for s, rd in replies.items()},
                "num_examples": {s: int(rd["metrics"]["num-examples"]) for s, rd in replies.items()},
            }
        return rounds
    finally:
        mp.undo()
        torch.set_num_threads(threads)


def test_run_completes_with_the_derived_protocol_parameters(run):
    cfg, run_dir, summary, _, _ = run
    assert summary["complete"] and summary["rounds_with_training"] == 2
    sa = summary["secure_aggregation"]
    assert sa["rounds_aggregated"] == [1, 2]
    assert (sa["num_shares"], sa["reconstruction_threshold"], sa["clipping_range"], sa["max_weight"]) == (3, 2, 16.0, 120.0)
    assert 3 * sa["quantization_range"] < sa["modulus_range"] == 2**32
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for r in ("1", "2"):
        for site in ("site_a", "site_b"):
            assert metrics["rounds"][r][site]["status"] == "trained"
            assert 0.0 <= metrics["rounds"][r][site]["evaluate"]["auroc"] <= 1.0
    assert metrics["rounds"]["1"]["site_c"]["status"] == "budget_exhausted"  # declined at setup, round went on
    assert summary["sites"]["site_c"]["first_stop"]["status"] == "budget_exhausted"


def test_global_model_matches_plain_fedavg_within_1e_5(run):
    _, run_dir, _, _, reference = run
    for r in (1, 2):
        state = load_checkpoint(run_dir / "checkpoints" / f"round_{r:03d}.pt")["state_dict"]
        assert set(state) == set(reference[r]["global"])
        for key, value in state.items():
            assert value.dtype == torch.float32  # cast back from SecAgg+'s float64
            np.testing.assert_allclose(value.numpy(), reference[r]["global"][key].numpy(), rtol=0, atol=1e-5)


def test_the_center_only_ever_holds_the_aggregate(run):
    _, run_dir, _, seen, reference = run
    assert [r for r, _ in seen["aggregate_fit"]] == [1, 2]
    for server_round, results in seen["aggregate_fit"]:
        ref = reference[server_round]
        assert sorted(n for n, _ in results) == sorted(ref["num_examples"].values())  # one result per trained site
        first = results[0][1]
        keys = list(ref["global"])
        for _, arrays in results[1:]:
            assert all(np.array_equal(a, b) for a, b in zip(arrays, first))  # every result carries the same sum
        for key, aggregate in zip(keys, first):
            np.testing.assert_allclose(aggregate, ref["global"][key].numpy(), atol=1e-5)
        for update in ref["updates"].values():  # ... and it is no single site's update
            assert max(float(np.abs(a - update[k].numpy()).max()) for k, a in zip(keys, first)) > 1e-3
    # nothing the protocol brought in holds model arrays; masked vectors are integers modulo 2**32
    masked = 0
    for reply in seen["replies"]:
        if reply.has_error():
            continue
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        configs = reply.content.config_records["secaggplus_configs"]
        if "masked_params" in configs:
            masked += 1
            from flwr.common import bytes_to_ndarray

            for blob in configs["masked_params"]:
                values = bytes_to_ndarray(blob)
                assert values.dtype == np.int64 and values.min() >= 0 and values.max() < 2**32
    assert masked == 4  # two sites x two rounds


def test_ledgers_record_what_the_sites_did(run):
    _, run_dir, _, _, _ = run
    for site in ("site_a", "site_b"):
        entries = [e for e in SiteLedger(run_dir / "sites" / site / "privacy_ledger.jsonl", site).entries()
                   if e["extra"]["phase"] != "evaluate"]  # training rounds (evaluation releases are lines of their own)
        assert [e["round"] for e in entries] == [1, 2] and all(e["status"] == "trained" for e in entries)
        assert all(e["extra"]["test_only_no_dp_noise"] for e in entries)  # the seam is visible in the ledger
    c = SiteLedger(run_dir / "sites" / "site_c" / "privacy_ledger.jsonl", "site_c").entries()
    assert [(e["round"], e["status"]) for e in c] == [(1, "budget_exhausted")]
