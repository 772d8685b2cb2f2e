"""Where a federated round's time goes, per site: local training, evaluation, privacy accounting,
(de)serialisation, checkpointing, data set-up, other site work, and idle/framework time (issue 23).

Runs the real Flower simulation (`fedcare simulate`'s code path) and, with --deployment, a local deployment
(`fedcare server` + one `fedcare client` per site, tests/e2e/deployment_harness.py) of the same config. Sites
write their own timings to their state folder (shared/timings.py; in simulation under the run folder), never
into a reply. A round's wall time is the gap between consecutive global checkpoints. A round's overhead is
what is not on its critical path of work: 1 - (training + evaluation on the critical path) / wall, where a
phase's critical path is the slowest site's time or, when fewer sites can run at once than there are (Ray
gives each site `federation.cpus_per_site` of the machine's CPUs), the best assignment of the sites' messages
to those slots (a message cannot be split: 3 sites on 2 slots take the longest alone or two together);
its site CPU overhead is the sites' CPU outside training and evaluation over all their handlers' CPU (on a
shared machine the CPU split is the comparable one; the framework's own CPU is not in it).

    python benchmarks/round_breakdown.py                 # default event and RETAIN configs, simulation
    python benchmarks/round_breakdown.py --deployment    # ... and a local deployment of each
    python benchmarks/round_breakdown.py --quick         # tiny configs, 2 rounds (CI)

Prints a table, writes benchmarks/results/round_breakdown[_quick].json (or --out).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.dp_overhead import write_json  # noqa: E402
from fedcare.configs import CONFIG_DIR  # noqa: E402
from shared.timings import PARTS, TIMINGS_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"event": CONFIG_DIR / "event_mortality.yaml", "retain": CONFIG_DIR / "retain_aki.yaml"}
QUICK = {  # small enough for CI: the breakdown's plumbing, not representative figures
    "event": {"data": {"synth_sizes": [240, 160, 120], "max_events": 32}, "train": {"rounds": 2, "local_epochs": 1}},
    "retain": {"data": {"synth_sizes": [240, 160, 120]}, "train": {"rounds": 2, "local_epochs": 1}},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def raw_config(name: str, quick: bool, rounds: int | None) -> dict:
    raw = yaml.safe_load(CONFIGS[name].read_text())
    if quick:
        raw = _merge(raw, QUICK[name])
    if rounds:
        raw["train"]["rounds"] = rounds
    return raw


def round_walls(run_dir: Path) -> dict[int, float]:
    """Round -> seconds between the global checkpoint before it and the one after it."""
    stamps = {int(p.stem.split("_")[1]): p.stat().st_mtime for p in (run_dir / "checkpoints").glob("round_*.pt")}
    return {r: stamps[r] - stamps[r - 1] for r in sorted(stamps) if r - 1 in stamps}


def site_parts(timing_files: dict[str, Path]) -> dict[str, dict[int, dict[str, float]]]:
    """site -> round -> seconds per part (train and evaluate messages of the round summed; `handler` = all)."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for site, path in timing_files.items():
        per_round: dict[int, dict[str, float]] = {}
        for line in path.read_text().splitlines() if path.is_file() else []:
            rec = json.loads(line)
            if rec.get("round") is None:
                continue
            row = per_round.setdefault(int(rec["round"]), dict.fromkeys(
                [*PARTS, "other", "handler", "cpu", *(f"{p}_cpu" for p in (*PARTS, "other"))], 0.0))
            for part in (*PARTS, "other"):
                row[part] += rec[f"{part}_s"]
                row[f"{part}_cpu"] += rec.get(f"{part}_cpu_s", 0.0)
            row["handler"] += rec["wall_s"]
            row["cpu"] += rec["cpu_s"]
            row[f"{rec['phase']}_wall"] = row.get(f"{rec['phase']}_wall", 0.0) + rec["wall_s"]
        out[site] = per_round
    return out


EXACT_MAKESPAN_MAX_ASSIGNMENTS = 200_000


def _critical(values: list[float], slots: int) -> float:
    """Shortest time `values` of work (one site's message each: it cannot be split) can take on `slots` parallel
    workers: the optimal makespan, by trying every assignment of sites to workers while that is cheap (the
    default federations: 3 sites on 2), else its lower bound max(longest, total / slots), which can only
    overstate the overhead."""
    slots = max(1, min(slots, len(values)))
    bound = max(max(values, default=0.0), sum(values) / slots)
    if slots == 1 or slots == len(values) or slots ** len(values) > EXACT_MAKESPAN_MAX_ASSIGNMENTS:
        return bound
    best = float("inf")
    for assignment in itertools.product(range(slots), repeat=len(values) - 1):  # the first site's worker is fixed
        loads = [0.0] * slots
        loads[0] = values[0]
        for value, worker in zip(values[1:], assignment, strict=True):
            loads[worker] += value
        best = min(best, max(loads))
    return best


def breakdown(run_dir: Path, timing_files: dict[str, Path], slots: int) -> dict[str, Any]:
    """`slots`: how many sites can work at once (simulation: Ray's CPUs / cpus_per_site; deployment: all)."""
    walls = round_walls(run_dir)
    parts = site_parts(timing_files)
    rounds = []
    for r, wall in walls.items():
        sites = {}
        for site, per_round in parts.items():
            row = per_round.get(r)
            if row is None:
                continue
            sites[site] = {k: round(v, 4) for k, v in row.items()} | {"idle_framework": round(max(0.0, wall - row["handler"]), 4)}
        work = (_critical([s["train"] for s in sites.values()], slots)
                + _critical([s["evaluate"] for s in sites.values()], slots))
        cpu = sum(s["cpu"] for s in sites.values())
        cpu_work = sum(s["train_cpu"] + s["evaluate_cpu"] for s in sites.values())
        rounds.append({"round": r, "wall_s": round(wall, 4), "critical_work_s": round(work, 4),
                       "overhead_fraction": round(1.0 - work / wall, 4) if wall > 0 else None,
                       # the sites' own CPU outside training and evaluation (the framework's CPU is not counted)
                       "site_cpu_s": round(cpu, 4),
                       "site_cpu_overhead_fraction": round(1.0 - cpu_work / cpu, 4) if cpu > 0 else None, "sites": sites})
    steady = [x["overhead_fraction"] for x in rounds if x["round"] > 1 and x["overhead_fraction"] is not None]
    steady_cpu = [x["site_cpu_overhead_fraction"] for x in rounds
                  if x["round"] > 1 and x["site_cpu_overhead_fraction"] is not None]
    return {"parallel_slots": slots, "rounds": rounds,
            "overhead_steady_median": round(statistics.median(steady), 4) if steady else None,
            "site_cpu_overhead_steady_median": round(statistics.median(steady_cpu), 4) if steady_cpu else None,
            "overhead_round_1": rounds[0]["overhead_fraction"] if rounds else None,
            "round_wall_steady_median_s": round(statistics.median([x["wall_s"] for x in rounds if x["round"] > 1]), 3)
            if len(rounds) > 1 else None,
            "outside_work_steady_median_s": steady_outside_work_s(rounds)}


def steady_outside_work_s(rounds: list[dict[str, Any]]) -> float | None:
    """Median over the rounds after the first of wall - critical-path work: a round's seconds outside training and
    evaluation (message hand-offs, aggregation, waits)."""
    gaps = [x["wall_s"] - x["critical_work_s"] for x in rounds if x["round"] > 1]
    return round(statistics.median(gaps), 4) if gaps else None


def run_simulation(raw: dict, tmp: Path) -> dict[str, Any]:
    from fedcare.simulation import simulate
    from shared.config import config_from_dict

    raw = _merge(raw, {"data": {"root": str(tmp / "data")}, "output_dir": str(tmp / "runs")})
    cfg = config_from_dict(raw, "round_breakdown")
    started = time.time()
    run_dir, summary = simulate(cfg)
    run_id = run_dir.name
    files = {s: run_dir / "sites" / s / TIMINGS_DIR / f"{run_id}.jsonl" for s in cfg.data.sites}
    # Ray's default CPUs are the machine's; a site's actor asks for cpus_per_site of them
    slots = min(len(cfg.data.sites), max(1, int((os.cpu_count() or 1) // max(cfg.federation.cpus_per_site, 1e-9))))
    return {"runtime": "simulation", "complete": bool(summary.get("complete")), "run_wall_s": round(time.time() - started, 2),
            **breakdown(run_dir, files, slots)}


def run_deployment(raw: dict, tmp: Path, timeout_s: float) -> dict[str, Any]:
    from tests.e2e import deployment_harness

    raw = _merge(raw, {"federation": {"mode": "deployment", "round_timeout_s": timeout_s, "wait_for_sites_s": 300.0}})
    raw["data"]["sites"] = ["site_a", "site_b", "site_c"][: len(raw["data"]["synth_sizes"])]
    original = deployment_harness.TINY
    deployment_harness.TINY = raw  # the harness builds its config from this
    try:
        dep = deployment_harness.Deployment(tmp, rounds=int(raw["train"]["rounds"]), round_timeout_s=timeout_s)
    finally:
        deployment_harness.TINY = original
    try:
        dep.start_server()
        dep.wait_until_registered()
        for site in dep.sites:
            dep.start_client(site, dep.site_yaml(site))
        clients_started = time.time()
        # a SuperNode logs its node id once the SuperLink has accepted it: the last of those is "the last site connects"
        dep.wait_for("every SuperNode to connect", lambda: all("SuperNode ID" in dep.log(s) for s in dep.sites),
                     timeout_s, interval_s=0.1)
        last_connected = time.time()
        summary_path = dep.run_dir / "summary.json"
        dep.wait_for("the run to finish", summary_path.is_file, timeout_s * (int(raw["train"]["rounds"]) + 2))
        summary = json.loads(summary_path.read_text())
        run_id = dep.run_id()
        files = {s: dep.state_dir(s) / TIMINGS_DIR / f"{run_id}.jsonl" for s in dep.sites}
        result = breakdown(dep.run_dir, files, len(dep.sites))
        starts = [json.loads(f.read_text().splitlines()[0])["start"] for f in files.values() if f.is_file()]
        # round 1 starts when the first train message arrives at a site
        result["first_round_start_after_clients_started_s"] = round(min(starts) - clients_started, 2) if starts else None
        result["first_round_start_after_last_connected_s"] = round(min(starts) - last_connected, 2) if starts else None
    finally:
        dep.stop_all()
    return {"runtime": "deployment", "complete": bool(summary.get("complete")), **result}


def table(results: list[dict]) -> str:
    head = f"{'config':<8} {'runtime':<11} {'round':>5} {'wall s':>7} {'site':<12} " + " ".join(
        f"{p[:6]:>7}" for p in (*PARTS, "other", "idle_framework")) + f" {'overhead':>8}"
    lines = [head, "-" * len(head)]
    for res in results:
        for rnd in res["rounds"]:
            for site, row in rnd["sites"].items():
                lines.append(f"{res['config']:<8} {res['runtime']:<11} {rnd['round']:>5} {rnd['wall_s']:>7.2f} {site:<12} "
                             + " ".join(f"{row[p]:>7.3f}" for p in (*PARTS, "other", "idle_framework"))
                             + f" {rnd['overhead_fraction']:>8.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs, 2 rounds")
    parser.add_argument("--configs", default="event,retain")
    parser.add_argument("--rounds", type=int, default=None, help="override train.rounds")
    parser.add_argument("--deployment", action="store_true", help="also run a local deployment of each config")
    parser.add_argument("--deployment-only", action="store_true", help="only the local deployment")
    parser.add_argument("--round-timeout-s", type=float, default=600.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop a deployment (finally) on a timeout's SIGTERM
    results = []
    for name in args.configs.split(","):
        raw = raw_config(name, args.quick, args.rounds)
        if not args.deployment_only:
            with tempfile.TemporaryDirectory(prefix="fedcare-breakdown-") as tmp:
                results.append({"config": name, **run_simulation(raw, Path(tmp))})
        if args.deployment or args.deployment_only:
            with tempfile.TemporaryDirectory(prefix="fedcare-breakdown-dep-") as tmp:
                results.append({"config": name, **run_deployment(raw, Path(tmp), args.round_timeout_s)})
    print(table(results))
    for res in results:
        print(f"{res['config']} {res['runtime']}: steady overhead {res['overhead_steady_median']} "
              f"(site CPU outside training/evaluation {res['site_cpu_overhead_steady_median']}), "
              f"round 1 overhead {res['overhead_round_1']}, steady round {res['round_wall_steady_median_s']} s "
              f"({res['outside_work_steady_median_s']} s outside training and evaluation)")
    payload = {"quick": args.quick, "command": "python benchmarks/round_breakdown.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "results": results}
    name = f"round_breakdown{'_quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / name
    write_json(out, payload)
    return 0 if all(r["complete"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
