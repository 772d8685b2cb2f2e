"""Bytes on the wire per site and round, and what a float16 transfer would save and cost.

For each model, the messages of one round are built as the running code builds them: the server's
train request (global weights + config) and the site's train reply and evaluate reply, made by
client.app._reply from a RoundOutcome exactly as the ClientApp does (weights, whitelisted metrics,
site record), and checked by the outgoing-message whitelist. Their size is the sum of Flower 1.41's
serialized objects for the message (Message, RecordDict, records, arrays, array chunks: what is
pushed to the SuperLink's object store), without gRPC/HTTP/TLS framing. The reference is
4 bytes x parameters (the raw float32 weights; tensors counted once: Opacus' DPGRU lists each GRU
weight under two names in its state_dict, and Flower's object store sends identical array chunks
once). Every weight is perturbed first, so that no two arrays are equal as after training (a fresh
model's zero biases would be sent once).

float16 transfer (not a fedcare option; measured here only): the weights are cast to float16 before
sending and back to float32 on arrival, in both directions. Its size is measured the same way, and
its effect on utility by training the same federation (benchmarks/federated_training.py, FedAvg of
DP-SGD sites) with and without the float16 round trip, same seeds.

    python benchmarks/communication.py --quick      # no SetTransformer
    python benchmarks/communication.py [--seeds 3] [--data DIR] [--skip-missing]

The utility check trains on UCI heart disease (real: --data DIR holds uci-heart-disease/; default the
first shared/data/ in or above the checkout; missing data are an error unless --skip-missing) and on
synthetic ICU events; mean ± sd over the seeds.

Prints two tables and writes benchmarks/results/communication.json (communication_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fed_vs_pooled import events_workload, heart_dir, heart_workload  # noqa: E402
from benchmarks.federated_training import StateDict, evaluate, train_federated  # noqa: E402
from client.app import _reply  # noqa: E402
from client.site_worker import RoundOutcome  # noqa: E402
from fedcare.configs import CONFIG_DIR  # noqa: E402
from fedcare.progress import track  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.io import write_json  # noqa: E402
from shared.models.registry import build_model  # noqa: E402
from shared.privacy.whitelist import check_outgoing  # noqa: E402
from shared.tasks.registry import build_task  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def models(quick: bool) -> dict[str, tuple[nn.Module, str]]:
    found: dict[str, tuple[nn.Module, str]] = {}
    found["tabular_mlp"] = (build_model("tabular_mlp", n_features=10, hidden=[32, 16]), "heart disease (10 features)")
    found["event_transformer"] = (build_task(load_config(CONFIG_DIR / "event_mortality.yaml")).build_model(),
                                  "event_mortality")
    found["event_transformer_seed"] = (build_model("event_transformer", event_dim=774, static_dim=60),
                                       "seed size: d_model 256, 4 layers, 768-d text")
    mm = load_config(CONFIG_DIR / "multimodal.yaml")
    found["multimodal"] = (build_task(mm).build_model(), "multimodal")
    found["retain"] = (build_model("retain", n_features=32), "32 lab features, defaults")
    if not quick:
        found["set_transformer_staging"] = (build_model("set_transformer_staging"), "seed size (sleep staging)")
    return found


def message_bytes(message: object) -> int:
    """Size of a Message as Flower 1.41 sends it: every object of its tree, serialized once."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def as_float16(state: StateDict) -> StateDict:
    return {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}


def float16_round_trip(state: StateDict) -> StateDict:
    return {k: v.to(torch.float16).to(v.dtype) if v.is_floating_point() else v for k, v in state.items()}


def round_messages(model: nn.Module, dtype: torch.dtype) -> dict[str, int]:
    from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, RecordDict

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if dtype == torch.float16:
        state = as_float16(state)
    metadata = Metadata(  # as the SuperLink stamps a server message
        run_id=1, message_id="0" * 64, src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="1",
        created_at=time.time(), ttl=3600.0, message_type="train",
    )
    request = Message(
        metadata=metadata,
        content=RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"server-round": 1})}),
    )
    # _reply reads only the site's name and its ledger head (a SHA-256 hex digest: the real size)
    site = SimpleNamespace(settings=SimpleNamespace(site="hospital_a"), ledger=SimpleNamespace(head=lambda: "0" * 64))
    train_metrics = {"num-examples": 300, "epsilon": 3.2, "delta": 1e-5, "noise_multiplier": 1.1,
                     "sample_rate": 0.2, "steps": 10}
    train_reply = _reply(request, site, RoundOutcome("trained", arrays=state, metrics=train_metrics))
    eval_metrics = {"num-examples": 100, "val_loss": 0.5, "auroc": 0.8, "auroc_ci_low": 0.7, "auroc_ci_high": 0.9,
                    "auprc": 0.4, "auprc_ci_low": 0.3, "auprc_ci_high": 0.5, "brier": 0.1, "brier_ci_low": 0.08,
                    "brier_ci_high": 0.12, "ece": 0.05, "sens_at_spec": 0.5, "threshold": 0.2}
    eval_metrics |= {f"calib_bin_{i}_{p}": 0.1 for i in range(10) for p in ("observed", "predicted", "count")}
    eval_reply = _reply(request, site, RoundOutcome("evaluated", metrics=eval_metrics))
    check_outgoing(train_reply.content, set(state))
    check_outgoing(eval_reply.content, None)
    return {
        "request": message_bytes(request),
        "train_reply": message_bytes(train_reply),
        "evaluate_reply": message_bytes(eval_reply),
        "arrays_payload": ArrayRecord(state).count_bytes(),
    }


def _as_if_trained(model: nn.Module) -> nn.Module:
    """Perturb every weight in place: fresh models have identical arrays (zero biases, unit norms)
    that Flower would send once; trained ones do not. Aliased tensors stay aliased."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn(tensor.shape, generator=generator))
    return model


def size_rows(quick: bool) -> list[dict]:
    rows = []
    for name, (fresh, note) in models(quick).items():
        model = _as_if_trained(fresh)
        state = model.state_dict()
        n = sum({v.data_ptr(): v.numel() for v in state.values()}.values())  # DPGRU lists each weight twice
        fp32, fp16 = round_messages(model, torch.float32), round_messages(model, torch.float16)
        rows.append({
            "model": name, "note": note, "parameters": n, "state_dict_values": sum(v.numel() for v in state.values()),
            "raw_fp32_bytes": 4 * n,
            "fp32": fp32, "fp16": fp16,
            "train_reply_over_raw": fp32["train_reply"] / (4 * n),
            "per_site_round_bytes_fp32": fp32["request"] + fp32["train_reply"] + fp32["request"] + fp32["evaluate_reply"],
            "fp16_saving": 1 - fp16["train_reply"] / fp32["train_reply"],
        })
        print(json.dumps({k: rows[-1][k] for k in ("model", "parameters", "raw_fp32_bytes")} | {"fp32": fp32}), flush=True)
    return rows


def utility_rows(quick: bool, seeds: list[int], data_root: Path | None = None,
                 skip_missing: bool = False) -> tuple[list[dict], list[str]]:
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        workloads = [heart_workload("label", quick, data_root), events_workload(Path(tmp_name), quick=True)]
        for wl in workloads:
            if isinstance(wl, str):
                if not skip_missing:
                    raise SystemExit(f"error: {wl} (pass --skip-missing to skip it)")
                notes.append(wl)
                continue
            for eps in (8.0, math.inf):
                scores = {"float32": [], "float16": []}
                for seed in track(seeds, f"{wl.name}: epsilon {eps}, seeds"):
                    scores["float32"].append(evaluate(wl, train_federated(wl, eps, seed).model))
                    scores["float16"].append(evaluate(wl, train_federated(wl, eps, seed, transfer=float16_round_trip).model))
                f32, f16 = (statistics.fmean(v) for v in (scores["float32"], scores["float16"]))
                diffs = [b - a for a, b in zip(scores["float32"], scores["float16"])]
                rows.append({"workload": wl.name, "metric": wl.metric, "epsilon": eps, "float32": f32, "float16": f16,
                             "difference": f16 - f32, "difference_sd": statistics.stdev(diffs) if len(diffs) > 1 else None,
                             "n": len(seeds), "per_seed": scores})
                print(json.dumps({k: rows[-1][k] for k in ("workload", "epsilon", "float32", "float16")}), flush=True)
    return rows, notes


def _kib(b: float) -> str:
    return f"{b / 1024:,.1f}"


def tables(sizes: list[dict], utility: list[dict]) -> str:
    lines = [f"{'model':<24}{'params':>11}{'4 x params KiB':>16}{'request KiB':>13}{'train reply KiB':>17}"
             f"{'reply/raw':>10}{'eval reply B':>13}{'fp16 reply KiB':>16}{'saved':>7}"]
    for r in sizes:
        lines.append(
            f"{r['model']:<24}{r['parameters']:>11,}{_kib(r['raw_fp32_bytes']):>16}{_kib(r['fp32']['request']):>13}"
            f"{_kib(r['fp32']['train_reply']):>17}{r['train_reply_over_raw']:>10.4f}{r['fp32']['evaluate_reply']:>13,}"
            f"{_kib(r['fp16']['train_reply']):>16}{100 * r['fp16_saving']:>6.1f}%"
        )
    lines += ["", f"{'workload':<20}{'metric':<8}{'epsilon':>8}{'float32':>10}{'float16':>10}{'difference':>12}"]
    for r in utility:
        eps = "inf" if math.isinf(r["epsilon"]) else f"{r['epsilon']:g}"
        spread = f" ± {r['difference_sd']:.4f}" if r.get("difference_sd") is not None else f" (n={r.get('n', 1)})"
        lines.append(f"{r['workload']:<20}{r['metric']:<8}{eps:>8}{r['float32']:>10.4f}{r['float16']:>10.4f}"
                     f"{r['difference']:>+12.4f}{spread}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="no SetTransformer")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the float16 utility check: mean ± sd (default 3)")
    parser.add_argument("--data", default=None, help="folder holding uci-heart-disease/ (default: the first shared/data/ "
                        "in or above the checkout)")
    parser.add_argument("--skip-missing", action="store_true", help="skip the real workload when its data are missing "
                        "(default: an error)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/communication[_quick].json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    data_root = Path(args.data) if args.data else None
    if data_root is not None and not data_root.is_dir():
        parser.error(f"--data {data_root}: not a folder")
    if heart_dir(data_root) is None and not args.skip_missing:  # before minutes of measuring
        parser.error(f"UCI heart disease not found in {data_root or 'shared/data/ in or above the checkout'}/uci-heart-disease "
                     "(give --data, or pass --skip-missing)")
    sizes = size_rows(args.quick)
    utility, notes = utility_rows(args.quick, list(range(args.seeds)), data_root, args.skip_missing)
    print()
    print(tables(sizes, utility))
    for note in notes:
        print(f"note: {note}")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"communication{'_quick' if args.quick else ''}.json"
    payload = {
        "benchmark": "communication", "quick": args.quick, "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "wall_time_s": round(time.perf_counter() - started, 1),
        "method": "bytes = sum of Flower 1.41 serialized objects of the message (no gRPC/TLS framing); "
                  "per_site_round = train request + train reply + evaluate request + evaluate reply",
        "sizes": sizes, "float16_utility": utility, "notes": notes,
    }
    write_json(out, payload)
    print(f"wrote {out} ({payload['wall_time_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
