"""A real simulation with secure aggregation (SecAgg+ through Flower's legacy workflow): 3 tiny sites x 2
rounds, one without budget, DP on. The sites sign their SecAgg+ keys (roster: the simulated sites' own key
files). The last round's global model is compared with plain FedAvg of the updates the sites actually sent
(each site keeps its last sent updates in state_dir/updates/), so the test needs no noise-free seam."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.common import bytes_to_ndarray, parameters_to_ndarrays
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from client.site_worker import UPDATES_DIR, state_digest
from fedcare.simulation import simulate
from server import secure_aggregation as secure_module
from server.checkpoints import load_checkpoint
from shared.config import config_from_dict
from shared.privacy.audit import audit_ledger
from shared.privacy.keys import load_public_key
from shared.privacy.ledger import SiteLedger
from shared.privacy.secagg_auth import AUTH_RECORD, KeyStatement, key_digest

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
    seen = {"aggregate_fit": [], "sent": [], "replies": []}
    original_aggregate = secure_module.SecureFedAvg.aggregate_fit
    original_send = secure_module.ProtocolReplyTracker.send_and_receive

    def spy_aggregate(self, server_round, results, failures):
        seen["aggregate_fit"].append((server_round, [(fitres.num_examples, parameters_to_ndarrays(fitres.parameters))
                                                     for _, fitres in results]))
        return original_aggregate(self, server_round, results, failures)

    def spy_send(self, messages, *, timeout=None):
        messages = list(messages)
        seen["sent"].extend(messages)
        replies = list(original_send(self, messages, timeout=timeout))
        seen["replies"].extend(replies)
        return replies

    mp = pytest.MonkeyPatch()
    mp.setattr(secure_module.SecureFedAvg, "aggregate_fit", spy_aggregate)
    mp.setattr(secure_module.ProtocolReplyTracker, "send_and_receive", spy_send)
    try:
        run_dir, summary = simulate(cfg)
    finally:
        mp.undo()
    return cfg, run_dir, summary, seen, _sent_updates(run_dir)


def _sent_updates(run_dir):
    """The last round's updates as the trained sites sent them, and the digest of the global model they started from."""
    sent = {}
    for site in ("site_a", "site_b"):
        saved = torch.load(sorted((run_dir / "sites" / site / UPDATES_DIR).rglob("round_*.pt"))[-1], weights_only=True)
        sent[site] = saved
    replies = [RecordDict({"arrays": ArrayRecord(u["state_dict"]),
                           "metrics": MetricRecord({"num-examples": u["metrics"]["num-examples"]})}) for u in sent.values()]
    return {"round": {u["round"] for u in sent.values()}, "global_sha256": {u["global_sha256"] for u in sent.values()},
            "fedavg": aggregate_arrayrecords(replies, "num-examples").to_torch_state_dict(),
            "updates": {s: u["state_dict"] for s, u in sent.items()},
            "num_examples": {s: int(u["metrics"]["num-examples"]) for s, u in sent.items()}}


def test_run_completes_with_the_derived_protocol_parameters(run):
    cfg, run_dir, summary, _, _ = run
    assert summary["complete"] and summary["rounds_with_training"] == 2
    sa = summary["secure_aggregation"]
    assert sa["rounds_aggregated"] == [1, 2] and sa["rounds_failed"] == [] and sa["failure"] is None
    assert (sa["num_shares"], sa["reconstruction_threshold"], sa["clipping_range"], sa["max_weight"]) == (3, 2, 16.0, 120.0)
    assert 3 * sa["quantization_range"] < sa["modulus_range"] == 2**32
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for r in ("1", "2"):
        for site in ("site_a", "site_b"):
            assert metrics["rounds"][r][site]["status"] == "trained"
            assert 0.0 <= metrics["rounds"][r][site]["evaluate"]["auroc"] <= 1.0
    assert metrics["rounds"]["1"]["site_c"]["status"] == "budget_exhausted"  # declined at setup, round went on
    assert metrics["rounds"]["1"]["site_c"]["reason"] == "budget_exhausted"  # a code through the outgoing guard
    assert summary["sites"]["site_c"]["first_stop"]["status"] == "budget_exhausted"


def test_global_model_matches_plain_fedavg_of_the_sent_updates_within_1e_5(run, record_property):
    _, run_dir, _, _, sent = run
    assert sent["round"] == {2}  # both sites' last sent update is round 2's, trained from round 1's global model
    assert sent["global_sha256"] == {state_digest(load_checkpoint(run_dir / "checkpoints" / "round_001.pt")["state_dict"])}
    state = load_checkpoint(run_dir / "checkpoints" / "round_002.pt")["state_dict"]
    assert set(state) == set(sent["fedavg"])
    for key, value in state.items():
        assert value.dtype == torch.float32  # cast back from SecAgg+'s float64
        np.testing.assert_allclose(value.numpy(), sent["fedavg"][key].numpy(), rtol=0, atol=1e-5)
    record_property("max_abs_error", max(float((v - sent["fedavg"][k]).abs().max()) for k, v in state.items()))


def test_the_center_only_ever_holds_the_aggregate(run):
    _, run_dir, _, seen, sent = run
    assert [r for r, _ in seen["aggregate_fit"]] == [1, 2]
    for _, results in seen["aggregate_fit"]:
        assert len(results) == 2  # one result per trained site ...
        first = results[0][1]
        for _, arrays in results[1:]:
            assert all(np.array_equal(a, b) for a, b in zip(arrays, first))  # ... every one carrying the same sum
    keys = list(sent["fedavg"])
    last = seen["aggregate_fit"][-1][1]
    assert sorted(n for n, _ in last) == sorted(sent["num_examples"].values())
    for update in sent["updates"].values():  # the last sum is no single site's update
        assert max(float(np.abs(a - update[k].numpy()).max()) for k, a in zip(keys, last[0][1])) > 1e-3
    # nothing the protocol brought in holds model arrays; masked vectors are integers modulo 2**32
    masked = 0
    for reply in seen["replies"]:
        if reply.has_error():
            continue
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        configs = reply.content.config_records["secaggplus_configs"]
        if "masked_params" in configs:
            masked += 1
            for blob in configs["masked_params"]:
                values = bytes_to_ndarray(blob)
                assert values.dtype == np.int64 and values.min() >= 0 and values.max() < 2**32
    assert masked == 4  # two sites x two rounds


def test_sites_sign_their_secagg_keys_and_the_center_forwards_the_signatures(run):
    _, run_dir, _, seen, _ = run
    signed = {}
    for reply in seen["replies"]:
        configs = None if reply.has_error() else reply.content.config_records["secaggplus_configs"]
        if configs is not None and "pk1" in configs:
            statement_bytes, signature = configs["signed_keys"]
            statement = KeyStatement.from_bytes(statement_bytes)
            assert statement.node_id == reply.metadata.src_node_id and statement.round in ("1", "2")
            assert (statement.pk1, statement.pk2) == (key_digest(configs["pk1"]), key_digest(configs["pk2"]))
            identity = load_public_key(run_dir / "sites" / statement.site / "keys" / f"{statement.site}.pub")
            identity.verify(signature, statement_bytes)  # signed with the site's own (ledger) key
            signed[(statement.round, reply.metadata.src_node_id)] = [statement_bytes, signature]
    assert len(signed) == 4  # site_a and site_b, two rounds (site_c declined at setup)
    share_keys = [m for m in seen["sent"] if m.content.config_records["secaggplus_configs"].get("stage") == "share_keys"]
    assert len(share_keys) == 4
    for msg in share_keys:
        forwarded = msg.content.config_records[AUTH_RECORD]
        assert {int(k) for k in forwarded} == {int(k) for k in msg.content.config_records["secaggplus_configs"] if k != "stage"}
        for node, value in forwarded.items():
            assert list(value) == signed[(msg.metadata.group_id, int(node))]


def test_ledgers_record_what_the_sites_did(run):
    _, run_dir, _, _, _ = run
    for site in ("site_a", "site_b"):
        path = run_dir / "sites" / site / "privacy_ledger.jsonl"
        entries = [e for e in SiteLedger(path, site).entries()
                   if e["extra"].get("phase") not in ("evaluate", "count")]  # training rounds (releases are lines of their own)
        assert [e["round"] for e in entries] == [1, 2] and all(e["status"] == "trained" for e in entries)
        assert audit_ledger(path, load_public_key(path.parent / "keys" / f"{site}.pub"), expected_site=site).status == "ok"
    c = SiteLedger(run_dir / "sites" / "site_c" / "privacy_ledger.jsonl", "site_c").entries()
    assert [(e["round"], e["status"]) for e in c] == [(1, "budget_exhausted")]
