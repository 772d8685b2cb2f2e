"""What does moving validation inside the privacy guarantee cost? (issue 17)

The demo (the shipped `event_mortality` config, what `fedcare simulate` runs) at epsilon 8 per site in total:
training plus the DP evaluation releases (noisy score histograms, shared/privacy/dp_evaluation.py), planned
under the one target. For a finished run (or one this script starts) it reports:

- the model's exact weighted validation AUROC (this script reads the final checkpoint and scores every
  site's validation split itself, as a site would: the number the acceptance asks for), per site too;
- the AUROC the center computed from the noisy releases, per site and for the summed release, against the
  exact value; and a Monte Carlo of that error over 500 fresh releases of the same scores (the
  histogram's binning alone, noise 0, beside it);
- the price in training noise: each site's planned DP-SGD noise multiplier with and without the run's
  evaluation releases in the plan, and the evaluation releases' own epsilon;
- with `--baseline-run-dir` (a run of the code before the change, evaluation unaccounted), its exact
  weighted AUROC scored the same way.

    python benchmarks/dp_evaluation.py                              # runs fedcare simulate (minutes on 2 cores)
    python benchmarks/dp_evaluation.py --run-dir runs/<id> [--baseline-run-dir runs/<id0>]

Prints a table and writes benchmarks/results/dp_evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcare.configs import resolve_config  # noqa: E402
from server.checkpoints import checkpoint_path, load_checkpoint  # noqa: E402
from shared.config import config_from_dict, load_config  # noqa: E402
from shared.io import load_yaml, write_json  # noqa: E402
from shared.metrics import auroc  # noqa: E402
from shared.privacy.accountant import Mechanism, epsilon_opacus  # noqa: E402
from shared.privacy.dp_evaluation import aggregate_release, binary_metrics, release_binary, score_histograms  # noqa: E402
from shared.privacy.ledger import LEDGER_FILE  # noqa: E402
from shared.privacy.planner import plan_noise_multiplier  # noqa: E402
from shared.tasks.registry import build_task  # noqa: E402
from shared.training.dp_trainer import sample_rate_for, steps_per_epoch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MONTE_CARLO = 500


def exact_scores(run_dir: Path) -> tuple[Any, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(config, site -> (labels, probabilities)) of the run's final model on each site's validation split."""
    cfg = config_from_dict(json.loads(json.dumps(_config_of(run_dir))), str(run_dir / "config.yaml"))
    task = build_task(cfg)
    state = load_checkpoint(checkpoint_path(run_dir, cfg.total_rounds))["state_dict"]
    model = task.build_model()
    model.load_state_dict(state)
    model.eval()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for site in cfg.data.sites:
        with tempfile.TemporaryDirectory() as scratch:
            data = task.prepare_site(Path(cfg.data.root) / site, site, Path(scratch))  # the site's own split and scalers
            ys, ps = [], []
            with torch.inference_mode():
                for batch in torch.utils.data.DataLoader(data.val, batch_size=512):
                    ps.append(torch.sigmoid(task.forward(model, batch).float()))
                    ys.append(task.targets(batch))
        out[site] = (torch.cat(ys).numpy().astype(int), torch.cat(ps).numpy().astype(float))
    return cfg, out


def _config_of(run_dir: Path) -> dict[str, Any]:

    return load_yaml(run_dir / "config.yaml")


def _ledger_epsilon(run_dir: Path, cfg: Any, site: str) -> float | None:
    """The last cumulative epsilon of the site's ledger (training and evaluation releases)."""
    root = Path(cfg.federation.site_state_root) if cfg.federation.site_state_root else run_dir / "sites"
    path = root / site / LEDGER_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    return float(json.loads(lines[-1])["cumulative_epsilon"]) if lines else None


def weighted(values: dict[str, float], sizes: dict[str, int]) -> float:
    return sum(values[s] * sizes[s] for s in values) / sum(sizes[s] for s in values)


def monte_carlo(scores: dict[str, tuple[np.ndarray, np.ndarray]], sigma: float, bins: int, seed: int = 0) -> dict[str, Any]:
    """Mean absolute and RMS error of the noisy-histogram AUROC against the exact one, per site and summed."""
    rng = np.random.default_rng(seed)
    exact = {s: auroc(y, p) for s, (y, p) in scores.items()}
    pooled_exact = auroc(np.concatenate([y for y, _ in scores.values()]), np.concatenate([p for _, p in scores.values()]))
    errors: dict[str, list[float]] = {s: [] for s in scores} | {"aggregate": []}
    for _ in range(MONTE_CARLO):
        releases = {s: release_binary(y, p, bins, sigma, rng) for s, (y, p) in scores.items()}
        for s, rel in releases.items():
            errors[s].append(binary_metrics(*_hist(rel, bins))["auroc"] - exact[s])
        errors["aggregate"].append(binary_metrics(*_hist(aggregate_release(releases), bins))["auroc"] - pooled_exact)
    binning = {s: binary_metrics(*score_histograms(y, p, bins))["auroc"] - exact[s] for s, (y, p) in scores.items()}
    return {
        key: {"mean_abs_error": float(np.mean(np.abs(v))), "rms_error": float(np.sqrt(np.mean(np.square(v)))),
              "bias": float(np.mean(v)), "binning_error": binning.get(key)}
        for key, v in errors.items()
    }


def _hist(release: dict[str, float], bins: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([release[f"hist_pos_{b}"] for b in range(bins)]), np.array([release[f"hist_neg_{b}"] for b in range(bins)]))


def noise_price(cfg: Any, sizes_train: dict[str, int]) -> dict[str, Any]:
    """Planned DP-SGD noise per site with and without the evaluation releases in the plan."""
    p, t, e = cfg.privacy, cfg.train, cfg.privacy.evaluation
    evaluation = [Mechanism(e.noise_multiplier, 1.0, 1) for _ in cfg.evaluation_rounds()]
    out = {}
    for site, n in sizes_train.items():
        q, steps = sample_rate_for(n, t.batch_size), t.rounds * t.local_epochs * steps_per_epoch(n, t.batch_size)
        target = cfg.site_target_epsilon(site)
        alone = plan_noise_multiplier(target, p.delta, q, steps, accountant=p.accountant)
        shared = plan_noise_multiplier(target, p.delta, q, steps, prior=evaluation, accountant=p.accountant)
        out[site] = {"n_train": n, "noise_multiplier_training_only": alone, "noise_multiplier_with_evaluation": shared,
                     "evaluation_epsilon_alone": epsilon_opacus(evaluation, p.delta, p.accountant),
                     "total_epsilon": epsilon_opacus([Mechanism(shared, q, steps)] + evaluation, p.delta, p.accountant)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="event_mortality", help="a shipped config name or a YAML path")
    parser.add_argument("--run-dir", type=Path, help="score this finished run instead of starting one")
    parser.add_argument("--baseline-run-dir", type=Path, help="a run with evaluation unaccounted (the code before)")
    parser.add_argument("--out", type=Path, default=RESULTS / "dp_evaluation.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    run_dir = args.run_dir
    if run_dir is None:
        from fedcare.simulation import simulate

        run_dir, _ = simulate(load_config(resolve_config(args.config)))
    wall = time.time() - started
    cfg, scores = exact_scores(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    sizes = {s: len(y) for s, (y, _) in scores.items()}
    exact = {s: auroc(y, p) for s, (y, p) in scores.items()}
    released = {s: summary["sites"][s]["final_metrics"].get("auroc") for s in cfg.data.sites}
    pooled_exact = auroc(np.concatenate([y for y, _ in scores.values()]), np.concatenate([p for _, p in scores.values()]))
    e = cfg.privacy.evaluation
    with tempfile.TemporaryDirectory() as scratch:
        train_sizes = {s: build_task(cfg).prepare_site(Path(cfg.data.root) / s, s, Path(scratch) / s).n_train
                       for s in cfg.data.sites}
    result: dict[str, Any] = {
        "config": args.config, "run_dir": str(run_dir), "simulation_wall_s": round(wall, 1),
        "evaluation": {"noise_multiplier": e.noise_multiplier, "bins": e.bins, "rounds": cfg.evaluation_rounds()},
        "target_epsilon_total": cfg.privacy.target_epsilon,
        "exact_auroc": exact, "exact_weighted_auroc": weighted(exact, sizes), "exact_pooled_auroc": pooled_exact,
        "released_auroc": released,
        "released_weighted_auroc": summary["final_weighted"].get("auroc"),
        "released_aggregate_auroc": summary.get("final_aggregate", {}).get("auroc"),
        "n_val": sizes,
        "monte_carlo": monte_carlo(scores, e.noise_multiplier, e.bins),
        "noise_price": noise_price(cfg, train_sizes),
        "ledger_epsilon": {s: _ledger_epsilon(run_dir, cfg, s) for s in cfg.data.sites},
    }
    if args.baseline_run_dir is not None:
        _, base = exact_scores(args.baseline_run_dir)
        base_exact = {s: auroc(y, p) for s, (y, p) in base.items()}
        result["baseline_exact_auroc"] = base_exact
        result["baseline_exact_weighted_auroc"] = weighted(base_exact, {s: len(y) for s, (y, _) in base.items()})
    print(table(result))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


def table(r: dict[str, Any]) -> str:
    rows = [("site", "n val", "exact AUROC", "released AUROC", "MC |err|", "binning err", "nm train only", "nm with eval")]
    for s in r["exact_auroc"]:
        mc, price = r["monte_carlo"][s], r["noise_price"][s]
        released = r["released_auroc"][s]
        rows.append((s, str(r["n_val"][s]), f"{r['exact_auroc'][s]:.3f}", "-" if released is None else f"{released:.3f}",
                     f"{mc['mean_abs_error']:.3f}", f"{mc['binning_error']:+.4f}",
                     f"{price['noise_multiplier_training_only']:.3f}", f"{price['noise_multiplier_with_evaluation']:.3f}"))
    agg = r["monte_carlo"]["aggregate"]
    released_agg = r["released_aggregate_auroc"]
    rows.append(("weighted", str(sum(r["n_val"].values())), f"{r['exact_weighted_auroc']:.3f}",
                 "-" if r["released_weighted_auroc"] is None else f"{r['released_weighted_auroc']:.3f}", "", "", "", ""))
    rows.append(("all patients (summed)", "", f"{r['exact_pooled_auroc']:.3f}",
                 "-" if released_agg is None else f"{released_agg:.3f}", f"{agg['mean_abs_error']:.3f}", "", "", ""))
    if "baseline_exact_weighted_auroc" in r:
        rows.append(("baseline weighted (eval unaccounted)", "", f"{r['baseline_exact_weighted_auroc']:.3f}", "", "", "", "",
                     ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    e = r["evaluation"]
    lines.append(f"evaluation: Gaussian noise {e['noise_multiplier']} per count, {e['bins']} bins, rounds {e['rounds']}; "
                 f"its epsilon alone {next(iter(r['noise_price'].values()))['evaluation_epsilon_alone']:.3f}; "
                 f"ledger epsilon per site {', '.join(f'{v:.2f}' for v in r['ledger_epsilon'].values() if v is not None)}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
