"""The demo's utility at epsilon 8 per site in total, over secret-noise draws (issue 17).

Runs the demo config (`fedcare/configs/event_mortality.yaml`, what `fedcare simulate` runs) with the site code itself,
in one process and without Flower: each hospital is a `client.site_worker.SiteWorker` (its own data, noise
plan, ledger, DP-SGD with noise from the OS CSPRNG, its DP releases), the center averages the weights by the
`num-examples` each site sends (FedAvg; then the configured server optimiser's step for `strategy.name`
fedavgm / fedadam / fedyogi) and derives the validation metrics from what the sites release, as
`server/` does. Two ways to evaluate, each over `--draws` runs:

- **exact**: the site policy's `release.exact_metrics` (evaluation outside the guarantee): the whole epsilon
  goes to training and the sites send exact metrics;
- **dp**: the default: evaluation inside the guarantee (noisy score histograms, planned with training under the
  one target of epsilon 8).

For every draw it reports the final model's weighted validation AUROC as the sites would measure it (exact
scores, weighted by validation size: the acceptance's number), the AUROC the center got (the released one:
exact in "exact", derived from the noisy histograms in "dp"), the noise multiplier each site trained at and
each site's final ledger epsilon; then mean, sd and min per variant.

    python benchmarks/demo_utility.py [--draws 5] [--config event_mortality] [--set train.lr=0.5 ...]

Prints a table and writes benchmarks/results/demo_utility.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client.site_worker import SiteSettings, SiteWorker  # noqa: E402
from fedcare.configs import resolve_config  # noqa: E402
from fedcare.simulation import ensure_site_data  # noqa: E402
from server.evaluation import aggregate_metrics  # noqa: E402
from server.server_optimizer import SERVER_OPTIMIZERS, ServerOptimizer  # noqa: E402
from shared.config import RunConfig, config_from_dict  # noqa: E402
from shared.metrics import auroc  # noqa: E402
from shared.privacy.dp_evaluation import released_metrics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class ExactMetricsSite(SiteWorker):
    """A site whose policy sets `release.exact_metrics: true` (what that policy switch changes, nothing else)."""

    @property
    def exact_metrics_allowed(self) -> bool:
        return True


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    total = sum(weights)
    return {k: sum(s[k] * (w / total) for s, w in zip(states, weights)) if v.is_floating_point() else v.clone()
            for k, v in states[0].items()}


def one_run(cfg: RunConfig, exact: bool, scratch: Path, run_id: str) -> dict[str, Any]:
    kind = ExactMetricsSite if exact else SiteWorker
    workers = {site: kind(cfg, SiteSettings(site, Path(cfg.data.root) / site, scratch / site), run_id) for site in cfg.data.sites}
    task = next(iter(workers.values())).task
    torch.manual_seed(cfg.seed)
    state = task.build_model().state_dict()
    sc = cfg.strategy
    optimizer = (ServerOptimizer.create(sc.name, sc.server_lr, sc.server_momentum, sc.server_tau, sc.server_warmup_rounds)
                 if sc.name in SERVER_OPTIMIZERS else None)
    evaluations: dict[str, dict[str, float]] = {}
    sent_weights: dict[str, float] = {}
    states_by_round = []
    for rnd in range(1, cfg.train.rounds + 1):
        states, weights = [], []
        for site, worker in workers.items():
            outcome = worker.train_round(rnd, state)
            if outcome.arrays is None:
                raise RuntimeError(f"{site} round {rnd}: {outcome.status} {outcome.reason} {outcome.detail}")
            states.append(outcome.arrays)
            weights.append(float(outcome.metrics["num-examples"]))
            sent_weights[site] = weights[-1]
        averaged = fedavg(states, weights)
        if optimizer is not None:  # the center's server optimiser (strategy fedavgm/fedadam/fedyogi), as server/ does
            stepped = optimizer.step({k: v.numpy() for k, v in state.items()}, {k: v.numpy() for k, v in averaged.items()})
            averaged = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in stepped.items()}
        state = averaged
        states_by_round.append(state)
        evaluations = {site: worker.evaluate(state, rnd) for site, worker in workers.items()}
    true_auroc, n_val = model_auroc(task, workers, state)
    by_round = [model_auroc(task, workers, s)[0] for s in states_by_round]
    # post-processing the center could do for free: the mean of the last k global models
    tail = {k: model_auroc(task, workers, fedavg(states_by_round[-k:], [1.0] * k))[0] for k in (2, 3)
            if len(states_by_round) >= k}
    center = {site: (values if exact else released_metrics(values)) for site, values in evaluations.items()}
    released = {site: m.get("auroc") for site, m in center.items()}
    weight_of = {site: float(center[site].get("num-examples", 0)) for site in center}
    ok = [s for s in released if released[s] is not None and weight_of[s] > 0]
    return {
        "weighted_auroc": weighted(true_auroc, n_val),
        "released_weighted_auroc": sum(released[s] * weight_of[s] for s in ok) / sum(weight_of[s] for s in ok) if ok else None,
        "released_aggregate_auroc": None if exact else aggregate_metrics(evaluations).get("auroc"),
        "weighted_auroc_by_round": [weighted(a, n_val) for a in by_round],
        "weighted_auroc_tail_mean": {k: weighted(a, n_val) for k, a in tail.items()},
        "auroc": true_auroc, "released_auroc": released, "n_val": n_val,
        "sent_training_weight": sent_weights, "n_train": {s: w.data.n_train for s, w in workers.items()},
        "noise_multiplier": {s: w.plan().noise_multiplier for s, w in workers.items()},
        "ledger_epsilon": {s: w.ledger.spent_epsilon() for s, w in workers.items()},
    }


def model_auroc(task: Any, workers: dict[str, SiteWorker], state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """The model's own validation AUROC at each site (what a site would measure; never sent in "dp"), and n_val."""
    model = task.build_model()
    model.load_state_dict(state)
    out_auroc, n_val = {}, {}
    for site, worker in workers.items():
        y, out, _ = worker.predict(model, worker.data.val)
        out_auroc[site], n_val[site] = auroc(y, 1 / (1 + np.exp(-out.astype(float)))), len(y)
    return out_auroc, n_val


def weighted(values: dict[str, float], sizes: dict[str, int]) -> float:
    return sum(values[s] * sizes[s] for s in values) / sum(sizes.values())


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def load(config: str, sets: list[str]) -> RunConfig:
    raw = yaml.safe_load(resolve_config(config).read_text())
    for item in sets:
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return config_from_dict(raw, config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="event_mortality", help="a shipped config name or a path (default: %(default)s)")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--variants", default="exact,dp")
    parser.add_argument("--set", action="append", default=[], help="a config override, e.g. train.lr=0.5")
    parser.add_argument("--out", type=Path, default=RESULTS / "demo_utility.json")
    parser.add_argument("--merge", type=Path, nargs="+", help="only combine the runs of earlier outputs (variants run apart)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load(args.config, args.set)
    from rich.console import Console

    ensure_site_data(cfg, Console(stderr=True))
    runs: dict[str, list[dict[str, Any]]] = {}
    for earlier in args.merge or []:
        for variant, rs in json.loads(earlier.read_text())["runs"].items():
            runs.setdefault(variant, []).extend(rs)
    for variant in [] if args.merge else args.variants.split(","):
        runs[variant] = []
        for draw in range(args.draws):
            started = time.time()
            with tempfile.TemporaryDirectory() as scratch:
                r = one_run(cfg, variant == "exact", Path(scratch), f"bench-{variant}-{draw}")
            r["wall_s"] = round(time.time() - started, 1)
            runs[variant].append(r)
            released = r["released_weighted_auroc"]
            print(f"{variant} draw {draw}: weighted AUROC {r['weighted_auroc']:.3f}, released "
                  f"{released if released is None else round(released, 3)}, noise "
                  f"{', '.join(f'{v:.3f}' for v in r['noise_multiplier'].values())}, {r['wall_s']} s; by round "
                  f"{', '.join(f'{v:.3f}' for v in r['weighted_auroc_by_round'])}; mean of last k "
                  f"{r['weighted_auroc_tail_mean']}", flush=True)
    result = {
        "config": args.config, "overrides": args.set, "draws": max(len(rs) for rs in runs.values()),
        "target_epsilon_total": cfg.privacy.target_epsilon,
        "evaluation": {"noise_multiplier": cfg.privacy.evaluation.noise_multiplier, "bins": cfg.privacy.evaluation.bins,
                       "rounds": cfg.evaluation_rounds()},
        "summary": {v: {key: summary([r[key] for r in rs if r[key] is not None])
                        for key in ("weighted_auroc", "released_weighted_auroc", "released_aggregate_auroc")
                        if any(r[key] is not None for r in rs)} for v, rs in runs.items()},
        "runs": runs,
    }
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


def table(result: dict[str, Any]) -> str:
    rows = [("evaluation", "weighted AUROC (model)", "min", "released weighted AUROC", "noise multiplier (a/b/c)", "ledger eps")]
    for variant, rs in result["runs"].items():
        s = result["summary"][variant]
        rel = s.get("released_weighted_auroc")
        nm = rs[0]["noise_multiplier"]
        rows.append((
            {"exact": "exact (outside the guarantee)", "dp": "DP (inside, eps 8 in total)"}.get(variant, variant),
            f"{s['weighted_auroc']['mean']:.3f} ± {s['weighted_auroc']['sd']:.3f}", f"{s['weighted_auroc']['min']:.3f}",
            "-" if rel is None else f"{rel['mean']:.3f} ± {rel['sd']:.3f}", "/".join(f"{v:.3f}" for v in nm.values()),
            "/".join(f"{v:.2f}" for v in rs[0]["ledger_epsilon"].values()),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    e = result["evaluation"]
    lines.append(f"{result['draws']} draws each; DP evaluation: noise {e['noise_multiplier']} per count, {e['bins']} bins, "
                 f"rounds {e['rounds']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
