"""Cost of a round as the number of sites grows at a fixed total amount of data.

For K in 2, 4, 8, 16, 32 simulated hospitals sharing one fixed pool of synthetic ICU stays (total/K
stays each), the real per-site round logic runs: client.site_worker.SiteWorker loads and encodes its
site, plans its noise, checks its budget, trains with DP-SGD, signs a ledger entry and evaluates the
global model (metrics with bootstrap CIs); the center averages the weights (FedAvg).

This is ONE process running the sites one after another (local trainer + FedAvg loop, no Flower, no
network): a round's wall time here is the SUM over sites; in a deployment the sites run in parallel
and a round takes about the slowest site plus aggregation. What it shows is how the total work and
the per-site overhead grow with K when the data do not. Times are given as wall time and as CPU
time of the process (one torch thread): on a shared machine only the CPU time is comparable.

Each K runs in a fresh subprocess so that its peak resident memory (resource.getrusage ru_maxrss)
is its own; tracemalloc reports the peak of Python-heap allocations (numpy included, torch tensor
storage not) during the training and aggregation of one extra round traced on its own, so tracing
does not slow the timed rounds. Evaluation at each site computes bootstrap CIs (200 resamples of
AUROC, AUPRC, Brier): a fixed cost per site and round that the table shows separately.
Sites of equal size have identical noise plans: the planner is cached so the loop does not repeat
one bisection K times (planning time is reported once per K as measured).

    python benchmarks/scaling.py --quick     # ~2 min on 2 CPU cores
    python benchmarks/scaling.py             # more data, more rounds

Prints a table and writes benchmarks/results/scaling.json (scaling_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.federated_training import fedavg  # noqa: E402
from fedcare.progress import track  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.privacy.atomic_write import write_atomically  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SITE_COUNTS = (2, 4, 8, 16, 32)


def _cached_planner(plan: Callable[..., float]) -> Callable[..., float]:
    """The planner, remembered per (target, delta, sample rate, steps, prior, ...): equal sites plan once."""
    cached = functools.cache(lambda *args: plan(*args[:4], prior=list(args[4]), accountant=args[5], max_noise_multiplier=args[6]))

    def planned(
        target: float, delta: float, q: float, steps: int, prior: Sequence = (), accountant: str = "rdp",
        max_noise_multiplier: float = 20.0,
    ) -> float:
        return cached(target, delta, q, steps, tuple(prior), accountant, max_noise_multiplier)

    return planned


def _synthesize(root: Path, sites: list[str], sizes: list[int], seed: int) -> None:
    """Synthetic event sites named `sites`; the generator makes at most 26 per call, so in chunks
    (site profiles repeat across chunks, with other random draws)."""
    from shared.data.events import synthesize_event_sites

    for start in range(0, len(sites), 16):
        chunk = sites[start : start + 16]
        made = synthesize_event_sites(root / f"chunk_{start}", len(chunk), sizes[start : start + 16], seed + start)
        for path, site in zip(made, chunk):
            path.rename(root / site)


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time does not grow when other processes
    compete for the cores, wall time does."""
    return time.perf_counter(), time.process_time()


def _one_round(workers: dict, global_state: dict, server_round: int, evaluate: bool = True) -> tuple[dict, list[float]]:
    """-> (new global state, [train, aggregate, evaluate] wall seconds + the same in CPU seconds)."""
    marks = [_clock()]
    states, sizes = [], []
    for worker in workers.values():
        outcome = worker.train_round(server_round, global_state)
        if outcome.arrays is not None:
            states.append(outcome.arrays)
            sizes.append(outcome.metrics["num-examples"])
    marks.append(_clock())
    new_state = fedavg(states, sizes)
    marks.append(_clock())
    for worker in workers.values() if evaluate else ():
        worker.evaluate(new_state)
    marks.append(_clock())
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return new_state, wall + cpu


def measure(k: int, total: int, rounds: int, quick: bool) -> dict:
    """One configuration, in this (fresh) process."""
    import client.site_worker as site_worker
    from client.site_worker import SiteSettings, SiteWorker
    from shared.tasks.registry import build_task

    torch.set_num_threads(1)
    site_worker.plan_noise_multiplier = _cached_planner(site_worker.plan_noise_multiplier)
    cfg = load_config(REPO / "configs" / "event_mortality.yaml")
    sites = [f"site_{i:02d}" for i in range(k)]
    sizes = [total // k + (1 if i < total % k else 0) for i in range(k)]
    cfg.data.sites, cfg.data.synth_sizes, cfg.train.rounds = sites, sizes, rounds + 1  # +1: the traced round
    if quick:
        cfg.data.max_events = 32
        cfg.model.params.update(d_model=32, layers=1, ff=64, mlp_hidden=32)
        cfg.train.local_epochs = 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        task = build_task(cfg)
        _synthesize(tmp / "data", sites, sizes, cfg.seed)
        started = time.perf_counter()
        workers = {s: SiteWorker(cfg, SiteSettings(s, tmp / "data" / s, tmp / "state" / s), "scaling") for s in sites}
        for worker in workers.values():
            _ = worker.data  # load, split, encode
        loaded = time.perf_counter()
        for worker in workers.values():
            worker.plan()
        planned = time.perf_counter()
        torch.manual_seed(cfg.seed)
        global_state = task.build_model().state_dict()
        n_params = sum(v.numel() for v in global_state.values())
        timings = []
        for server_round in track(range(1, rounds + 1), f"{len(sites)} sites: rounds"):
            global_state, phases = _one_round(workers, global_state, server_round)
            timings.append(phases)
        tracemalloc.start()
        _one_round(workers, global_state, rounds + 1, evaluate=False)  # training + aggregation traced
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    mean = [sum(t[i] for t in timings) / len(timings) for i in range(6)]
    return {
        "sites": k, "stays_per_site": sizes[0], "total_stays": total, "parameters": n_params, "rounds_timed": rounds,
        "round_s": sum(mean[:3]), "train_s": mean[0], "aggregate_s": mean[1], "evaluate_s": mean[2],
        "round_cpu_s": sum(mean[3:]), "train_cpu_s": mean[3], "aggregate_cpu_s": mean[4], "evaluate_cpu_s": mean[5],
        "load_s": loaded - started, "plan_s": planned - loaded,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "tracemalloc_peak_mb": traced_peak / 2**20,
    }


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [
        f"{'sites':>5}{'stays/site':>11}{'round wall s':>13}{'round CPU s':>12}{'train CPU s':>12}{'eval CPU s':>11}"
        f"{'agg CPU s':>10}{'CPU growth':>11}{'peak RSS MB':>12}{'py heap MB':>11}"
    ]
    for r in rows:
        growth = r["round_cpu_s"] / base["round_cpu_s"]
        lines.append(
            f"{r['sites']:>5}{r['stays_per_site']:>11}{r['round_s']:>13.2f}{r['round_cpu_s']:>12.2f}{r['train_cpu_s']:>12.2f}"
            f"{r['evaluate_cpu_s']:>11.2f}{r['aggregate_cpu_s']:>10.3f}{growth:>10.2f}x{r['peak_rss_mb']:>12.0f}"
            f"{r['tracemalloc_peak_mb']:>11.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, 960 stays, 1 timed round (< 3 min on 2 cores)")
    parser.add_argument("--sites", default=",".join(map(str, SITE_COUNTS)))
    parser.add_argument("--total", type=int, default=None, help="total stays over all sites (default 960 quick, 3200)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 1 quick, 3)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one K in this process
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/scaling[_quick].json)")
    args = parser.parse_args(argv)
    total = args.total or (960 if args.quick else 3200)
    rounds = args.rounds or (1 if args.quick else 3)
    if args.one is not None:
        print(json.dumps(measure(args.one, total, rounds, args.quick)))
        return 0
    started = time.perf_counter()
    rows = []
    for k in (int(s) for s in args.sites.split(",")):
        command = [sys.executable, __file__, "--one", str(k), "--total", str(total), "--rounds", str(rounds)]
        done = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    note = (
        "one process, sites run one after another (local trainer + FedAvg loop, no Flower): round time is the sum "
        "over sites; deployed sites run in parallel. Fixed total data split evenly over K sites."
    )
    print()
    print(text)
    print(f"note: {note}")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"scaling{'_quick' if args.quick else ''}.json"
    payload = {
        "benchmark": "scaling", "quick": args.quick, "total_stays": total, "rounds_timed": rounds, "threads": 1,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "wall_time_s": round(time.perf_counter() - started, 1), "note": note, "rows": rows,
    }
    write_atomically(out, (json.dumps(payload, indent=1) + "\n").encode())
    print(f"wrote {out} ({payload['wall_time_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
