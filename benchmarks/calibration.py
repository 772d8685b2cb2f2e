"""Is the demo's final model calibrated after federated recalibration? (issue 20)

Runs `fedcare simulate` on the demo config (fedcare/configs/event_mortality.yaml: event_mortality, epsilon 8 per site,
DP evaluation histograms; `evaluation.recalibrate: platt`) once per seed, or scores finished runs
(`--run-dir`, repeatable). Per run:

- what the center reports in summary.json `recalibration`: ECE of the summed noisy validation histograms
  before and after the Platt map it fitted on them, and with each site under a map fitted on the others;
- the exact ECE (10 equal-width bins) of the final checkpoint's probabilities on all sites' validation rows
  together, uncalibrated and through the map stored in the checkpoint (this script reads every site's
  data, as only a simulation can), and the exact AUROC (unchanged by the map).

Target (stated): exact ECE after recalibration <= 0.05, and the reported one too.

    python benchmarks/calibration.py --seeds 3                  # 3 simulations (~2-3 min each on 2 cores)
    python benchmarks/calibration.py --run-dir runs/<id> [--run-dir runs/<id2>]

Prints a table and writes benchmarks/results/calibration.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.dp_evaluation import exact_scores  # noqa: E402
from server.checkpoints import latest_checkpoint, load_checkpoint  # noqa: E402
from shared.calibration import CalibrationMap  # noqa: E402
from shared.io import write_bytes  # noqa: E402
from shared.metrics import auroc, expected_calibration_error  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_ECE = 0.05


def score_run(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    recal = summary.get("recalibration") or {}
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    _, scores = exact_scores(run_dir)
    y = np.concatenate([s[0] for s in scores.values()]).reshape(-1)
    prob = np.concatenate([s[1] for s in scores.values()]).reshape(-1)
    cmap = CalibrationMap.from_dict(ckpt["calibration"]) if ckpt.get("calibration") else None
    return {
        "run_dir": str(run_dir), "map": ckpt.get("calibration"),
        "reported_ece_before": recal.get("ece_before"), "reported_ece_after": recal.get("ece_after"),
        "reported_ece_after_held_out_sites": recal.get("ece_after_held_out_sites"),
        "exact_ece_before": expected_calibration_error(y, prob),
        "exact_ece_after": expected_calibration_error(y, cmap.apply(prob)) if cmap else None,
        "exact_auroc": auroc(y, prob), "n_validation": int(y.size),
    }


def simulate(seed: int, out_root: Path) -> Path:
    from fedcare.simulation import simulate as run_simulation
    from shared.config import load_config

    cfg = load_config(REPO / "fedcare" / "configs" / "event_mortality.yaml")
    cfg.seed = seed
    run_dir, _ = run_simulation(cfg, out_root / f"seed{seed}")
    return run_dir


def _mean_sd(values: list[float | None]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="simulations of the demo config (seeds 0..n-1)")
    parser.add_argument("--run-dir", action="append", default=[], help="score a finished run instead (repeatable)")
    parser.add_argument("--runs-root", default="runs/calibration-benchmark", help="where the simulations go")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "calibration.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    run_dirs = [Path(d) for d in args.run_dir] or [simulate(s, Path(args.runs_root)) for s in range(args.seeds)]
    rows = [score_run(d) for d in run_dirs]
    keys = ("reported_ece_before", "reported_ece_after", "reported_ece_after_held_out_sites", "exact_ece_before",
            "exact_ece_after", "exact_auroc")
    print(f"{'run':<40}" + "".join(f"{k:>18}" for k in ("rep. before", "rep. after", "rep. held-out", "exact before",
                                                       "exact after", "exact AUROC")))
    for r in rows:
        print(f"{Path(r['run_dir']).name:<40}" + "".join(f"{r[k]:>18.3f}" if r[k] is not None else f"{'-':>18}" for k in keys))
    means = {k: _mean_sd([r[k] for r in rows]) for k in keys}
    print(f"{'mean ± sd':<40}" + "".join(f"{means[k]:>18}" for k in keys))
    met = all(r["exact_ece_after"] is not None and r["exact_ece_after"] <= TARGET_ECE
              and r["reported_ece_after"] is not None and r["reported_ece_after"] <= TARGET_ECE for r in rows)
    print(f"target: ECE after recalibration <= {TARGET_ECE} (exact and reported, every run) -> {'met' if met else 'NOT met'}")
    payload = {"benchmark": "calibration", "config": "fedcare/configs/event_mortality.yaml", "rows": rows, "mean_sd": means,
               "target": {"ece_after_max": TARGET_ECE, "met": met}, "wall_time_s": round(time.perf_counter() - started, 1)}
    write_bytes(Path(args.out), (json.dumps(payload, indent=1, default=str) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
