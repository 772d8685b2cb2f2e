"""Per-round wall time of a real 3-site deployment on this machine, on CPU or on CUDA.

`fedcare server` and three `fedcare client` processes on 127.0.0.1 (TLS, SuperNode keys; the e2e
tests' harness, tests/e2e/deployment_harness.py) run the event task on synthetic hospitals; every
site.yaml says `device: <--device>`. A round's time is the gap between consecutive global
checkpoints (round_000.pt is written before round 1), so it covers training, evaluation, the
transfers and the aggregation of that round.

    python benchmarks/deployment_rounds.py --device cuda --model seed --rounds 3
    python benchmarks/deployment_rounds.py --device cpu --model tiny --rounds 2       # a quick look

Writes benchmarks/results/deployment_rounds_<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.dp_overhead import device_name  # noqa: E402
from shared.io import load_yaml, write_json, write_text  # noqa: E402
from tests.e2e import deployment_harness  # noqa: E402

SEED_MODEL = {"name": "event_transformer", "d_model": 256, "layers": 4, "heads": 8, "ff": 512, "pooling_heads": 4,
              "mlp_hidden": 128}


def run(device: str, model: str, rounds: int, sizes: list[int], batch_size: int, timeout_s: float) -> dict:
    raw = json.loads(json.dumps(deployment_harness.TINY))
    raw["data"]["synth_sizes"] = sizes
    raw["train"]["batch_size"] = batch_size
    if model == "seed":
        raw["model"] = dict(SEED_MODEL)
        raw["data"]["max_events"] = 128
    deployment_harness.TINY = raw  # the harness builds its config from this
    with tempfile.TemporaryDirectory(prefix="fedcare-rounds-") as tmp:
        dep = deployment_harness.Deployment(Path(tmp), rounds=rounds, round_timeout_s=timeout_s)
        started = time.time()
        try:
            dep.start_server()
            dep.wait_until_registered()
            for site in dep.sites:
                path = dep.site_yaml(site)
                site_cfg = load_yaml(path) | {"device": device}
                write_text(path, yaml.safe_dump(site_cfg))
                dep.start_client(site, path)
            summary_path = dep.run_dir / "summary.json"
            dep.wait_for("the run to finish", lambda: summary_path.is_file(), timeout_s * (rounds + 1))
            summary = json.loads(summary_path.read_text())
            checkpoints = sorted((dep.run_dir / "checkpoints").glob("round_*.pt"))
            stamps = [p.stat().st_mtime for p in checkpoints]
            per_round = [round(b - a, 2) for a, b in zip(stamps, stamps[1:])]
            logs = {name: dep.log(name)[-3000:] for name, _ in dep.procs}
        finally:
            dep.stop_all()
    return {
        "device": device,
        "model": model,
        "sites": len(sizes),
        "stays_per_site": sizes,
        "batch_size": batch_size,
        "rounds": rounds,
        "complete": bool(summary.get("complete")),
        "round_s": per_round,
        "round_s_median": round(statistics.median(per_round), 2) if per_round else None,
        "run_wall_s": round(time.time() - started, 1),
        "summary_wall_time_s": summary.get("wall_time_s"),
        "log_tails": logs if not summary.get("complete") else {},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, auto")
    parser.add_argument("--model", choices=("tiny", "seed"), default="seed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="2000,1500,1000", help="synthetic stays per site")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--round-timeout-s", type=float, default=300.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the deployment (finally) on a timeout's SIGTERM
    result = run(args.device, args.model, args.rounds, [int(s) for s in args.sizes.split(",")], args.batch_size,
                 args.round_timeout_s)
    result |= {"device_name": device_name(torch.device("cuda" if args.device.startswith("cuda") else "cpu")),
               "command": "python benchmarks/deployment_rounds.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"deployment_rounds_{args.device}.json"
    write_json(out, result, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "log_tails"}, indent=2))
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
