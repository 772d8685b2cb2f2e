"""Cost of a round as the number of sites grows at a fixed total amount of data, through the real runtime.

For K in 2, 4, 8, 16, 32 simulated hospitals sharing one fixed pool of synthetic ICU stays (total/K stays
each), `fedcare simulate`'s code path runs: Flower's simulation runtime, one virtual SuperNode per site, the
ClientApp with its mods, the site worker (cached data, noise plan, budget check, DP-SGD, ledger, DP evaluation
release) and the ServerApp (FedAvg, checkpoints). Each site writes its own timings (shared/timings.py): per
message the wall and CPU time of the process answering it and that process's peak resident memory.

Reported per K: a steady round's wall time (the gap between global checkpoints), its CPU time summed over the
sites' handlers (what the hospitals spend; on a shared machine only CPU time is comparable), the growth of
that CPU time against the smallest K, and the peak RSS of the processes serving a site (Ray actors may serve
several sites one after another, so this is per serving process, an upper bound per site). Each K runs in a
fresh subprocess.

    python benchmarks/scaling.py --quick     # K = 2, 4, 8, tiny model
    python benchmarks/scaling.py             # K = 2 .. 32

Prints a table and writes benchmarks/results/scaling.json (scaling_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.round_breakdown import round_walls, site_parts  # noqa: E402
from shared.io import write_json  # noqa: E402
from shared.timings import TIMINGS_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SITE_COUNTS = (2, 4, 8, 16, 32)
QUICK_SITE_COUNTS = (2, 4, 8)


def synthesize(root: Path, sites: list[str], sizes: list[int], seed: int) -> None:
    """Synthetic event sites named `sites`; the generator makes at most 26 per call, so in chunks
    (site profiles repeat across chunks, with other random draws)."""
    from shared.data.synth.events import synthesize_event_sites

    for start in range(0, len(sites), 16):
        chunk = sites[start : start + 16]
        made = synthesize_event_sites(root / f"chunk_{start}", len(chunk), sizes[start : start + 16], seed + start)
        for path, site in zip(made, chunk):
            path.rename(root / site)


def config(k: int, total: int, rounds: int, quick: bool, root: Path) -> dict:
    raw = yaml.safe_load((REPO / "fedcare" / "configs" / "event_mortality.yaml").read_text())
    sites = [f"site_{i:02d}" for i in range(k)]
    raw["data"] |= {"sites": sites, "synth_sizes": [total // k + (1 if i < total % k else 0) for i in range(k)],
                    "root": str(root / "data")}
    raw["train"]["rounds"] = rounds
    raw["strategy"]["min_sites"] = 2
    raw["output_dir"] = str(root / "runs")
    if quick:
        raw["data"]["max_events"] = 32
        raw["train"]["local_epochs"] = 1
    return raw


def measure(k: int, total: int, rounds: int, quick: bool) -> dict:
    """One K, in this (fresh) process."""
    from fedcare.simulation import simulate
    from shared.config import config_from_dict

    with tempfile.TemporaryDirectory(prefix="fedcare-scaling-") as tmp_name:
        tmp = Path(tmp_name)
        raw = config(k, total, rounds, quick, tmp)
        synthesize(tmp / "data", raw["data"]["sites"], raw["data"]["synth_sizes"], int(raw.get("seed", 0)))
        cfg = config_from_dict(raw, "scaling")
        started = time.perf_counter()
        run_dir, summary = simulate(cfg)
        run_wall = time.perf_counter() - started
        walls = round_walls(run_dir)
        files = {s: run_dir / "sites" / s / TIMINGS_DIR / f"{run_dir.name}.jsonl" for s in cfg.data.sites}
        parts = site_parts(files)
        rss = {s: max((json.loads(line)["peak_rss_mb"] for line in f.read_text().splitlines()), default=0.0)
               for s, f in files.items() if f.is_file()}
    steady = [r for r in walls if r > 1] or list(walls)
    def per_round(key: str) -> float:  # median over steady rounds of the sum over sites
        return round(statistics.median(sum(parts[s].get(r, {}).get(key, 0.0) for s in parts) for r in steady), 3)

    return {
        "sites": k, "stays_per_site": raw["data"]["synth_sizes"][0], "total_stays": total, "rounds": rounds,
        "complete": bool(summary.get("complete")), "run_wall_s": round(run_wall, 2),
        "round_1_wall_s": round(walls.get(1, float("nan")), 3),
        "round_wall_s": round(statistics.median(walls[r] for r in steady), 3),
        "round_cpu_s": per_round("cpu"), "train_cpu_s": per_round("train_cpu"), "evaluate_cpu_s": per_round("evaluate_cpu"),
        "accounting_cpu_s": per_round("accounting_cpu"), "setup_cpu_s": per_round("setup_cpu"),
        "peak_rss_mb_per_site_max": max(rss.values(), default=None),
        "peak_rss_mb_per_site_median": statistics.median(rss.values()) if rss else None,
    }


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [f"{'sites':>5}{'stays/site':>11}{'round 1 s':>10}{'round wall s':>13}{'round CPU s':>12}"
             f"{'CPU growth':>11}{'RSS/site MB':>12}"]
    for r in rows:
        growth = r["round_cpu_s"] / base["round_cpu_s"] if base["round_cpu_s"] else float("nan")
        lines.append(f"{r['sites']:>5}{r['stays_per_site']:>11}{r['round_1_wall_s']:>10.2f}{r['round_wall_s']:>13.2f}"
                     f"{r['round_cpu_s']:>12.2f}{growth:>10.2f}x{r['peak_rss_mb_per_site_max'] or 0:>12.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K = 2, 4, 8, 480 stays, 3 rounds")
    parser.add_argument("--sites", default=None, help="comma-separated K (default 2..32; 2,4,8 with --quick)")
    parser.add_argument("--total", type=int, default=None, help="total stays over all sites (default 480 quick, 3200)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one K in this process
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/scaling[_quick].json)")
    args = parser.parse_args(argv)
    total = args.total or (480 if args.quick else 3200)
    rounds = args.rounds or 3
    if args.one is not None:
        print(json.dumps(measure(args.one, total, rounds, args.quick)))
        return 0
    counts = [int(s) for s in args.sites.split(",")] if args.sites else list(QUICK_SITE_COUNTS if args.quick else SITE_COUNTS)
    started = time.perf_counter()
    rows = []
    for k in counts:
        command = [sys.executable, __file__, "--one", str(k), "--total", str(total), "--rounds", str(rounds)]
        done = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(table(rows))
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"scaling{'_quick' if args.quick else ''}.json"
    payload = {
        "benchmark": "scaling", "runtime": "flower simulation", "quick": args.quick, "total_stays": total,
        "rounds": rounds, "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "wall_time_s": round(time.perf_counter() - started, 1), "rows": rows,
    }
    write_json(out, payload)
    print(f"wrote {out} ({payload['wall_time_s']} s)")
    return 0 if all(r["complete"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
