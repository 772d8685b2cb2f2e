"""Do server-side optimisers help federated DP training? FedAvg vs FedAvgM vs FedAdam vs FedYogi (issue 20).

The by-hand federation of benchmarks/federated_training.py (each site DP-SGD at epsilon 8 over the whole run,
delta 1e-5), the center's step from server/server_optimizer.py (the same code the Flower strategy runs) with
its DP-tuned defaults, and FedAdam with Flower's defaults (eta 0.1, beta_1 0.9, tau 1e-9, no warm-up) as the
untuned reference. Several seeds, mean ± sd of the workload's test metric:

- heart-disease-tabular (AUROC): UCI heart disease, 4 hospitals, tabular_binary logistic regression, fixed test rows;
- gse7390-tabular-survival (C-index): GSE7390 in 3 pseudo-hospitals, tabular_survival linear Cox, fixed test rows;
- events-synthetic (AUROC, `--workloads` only; slow): the demo's event model on synthetic sites, validation rows.

    python benchmarks/server_optimizers.py --seeds 3
    python benchmarks/server_optimizers.py --grid fedadam      # sweep server_lr x server_tau (how DEFAULTS were chosen)

Prints a table and writes benchmarks/results/server_optimizers.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fed_vs_pooled import events_workload, gse7390_tabular_workload, heart_tabular_workload  # noqa: E402
from benchmarks.federated_training import evaluate, train_federated  # noqa: E402
from server.server_optimizer import SERVER_OPTIMIZERS, ServerOptimizer  # noqa: E402
from shared.io import write_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = ("heart-disease-tabular", "gse7390-tabular-survival", "events-synthetic")
EPSILON = 8.0


def settings(grid: str | None) -> dict[str, tuple | None]:
    """name -> optimiser factory arguments (None = plain FedAvg)."""
    if grid:
        return {f"{grid} lr={lr:g} tau={tau:g}": (grid, lr, None, tau, None)
                for lr, tau in itertools.product((0.01, 0.03, 0.1), (1e-3, 0.01, 0.03, 0.1))}
    out: dict[str, tuple | None] = {"fedavg": None}
    out.update({name: (name, None, None, None, None) for name in SERVER_OPTIMIZERS})
    out["fedadam (Flower defaults)"] = ("fedadam", 0.1, 0.9, 1e-9, 0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workloads", default="heart-disease-tabular,gse7390-tabular-survival")
    parser.add_argument("--grid", choices=SERVER_OPTIMIZERS[1:], default=None, help="sweep lr x tau of one optimiser")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (5) on the tabular workloads")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        builders = {
            "heart-disease-tabular": lambda: heart_tabular_workload(tmp, args.quick, None),
            "gse7390-tabular-survival": lambda: gse7390_tabular_workload(tmp, args.quick),
            "events-synthetic": lambda: events_workload(tmp, True),
        }
        for name in [w for w in args.workloads.split(",") if w]:
            wl = builders[name]()
            if isinstance(wl, str):
                print(f"note: {wl}")
                continue
            for label, spec in settings(args.grid).items():
                values = []
                for seed in range(args.seeds):
                    server = ServerOptimizer.create(*spec) if spec is not None else None
                    values.append(evaluate(wl, train_federated(wl, EPSILON, seed, server=server).model))
                row = {"workload": wl.name, "metric": wl.metric, "epsilon": EPSILON, "server": label,
                       "settings": ServerOptimizer.create(*spec).settings() if spec is not None else None,
                       "mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                       "per_seed": values, "rounds": wl.plan.rounds}
                rows.append(row)
                print(f"{wl.name:<26}{label:<30}{wl.metric:<8}{row['mean']:.3f} ± {row['sd']:.3f}", flush=True)
    default = REPO / "benchmarks" / "results" / f"server_optimizers{'_grid' if args.grid else ''}.json"
    out = Path(args.out) if args.out else default
    payload = {"benchmark": "server_optimizers", "epsilon": EPSILON, "seeds": args.seeds, "rows": rows,
               "wall_time_s": round(time.perf_counter() - started, 1)}
    write_bytes(out, (json.dumps(payload, indent=1) + "\n").encode())
    print(f"wrote {out} ({payload['wall_time_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
