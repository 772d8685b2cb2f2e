"""DP vs non-DP training throughput on a GPU: samples/s, ms/step, peak memory and DP / non-DP.

The event transformer and the sleep SetTransformer (seed sizes, as in dp_overhead.py) at large
batches and each precision (fp32, tf32, bf16 autocast on CUDA): non-DP and book-keeping DP-SGD
(optionally Opacus hooks), measured with dp_overhead.measure: all modes of one (model, batch,
precision) interleaved in one process, >= 5 repetitions, each mode's fastest step per repetition
(CUDA synchronised), the DP / non-DP ratio against the same model's fastest plain step of the
same repetition, mean ± sd. Peak memory: torch.cuda.max_memory_allocated during the mode's steps.

It checks issue 22's targets on CUDA: event transformer DP >= 30,000 samples/s in bf16 at batch
2048 and DP / non-DP <= 1.3 at batch >= 512; SetTransformer DP / non-DP <= 1.6.

    python benchmarks/gpu_throughput.py                       # CUDA: batches 512,2048; fp32,tf32,bf16
    python benchmarks/gpu_throughput.py --device cpu --quick  # CI smoke run: small models, batch 8, ~15 s
    python benchmarks/gpu_throughput.py --from-json benchmarks/results/dp_overhead_cuda.json   # targets only

dp_overhead.py --device cuda measures the same rows (same code, plus Opacus hooks by default);
--from-json checks the targets on such a file without measuring again.

Writes benchmarks/results/gpu_throughput_<device>[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.dp_overhead import (  # noqa: E402
    MIN_REPS,
    MODES,
    device_name,
    event_workload,
    measure,
    set_transformer_workload,
    table,
)
from shared.io import write_json  # noqa: E402

EVENT_MIN_DP_SAMPLES_PER_S = 30_000  # bf16, batch 2048
EVENT_MAX_RATIO = 1.3  # batch >= 512
SET_MAX_RATIO = 1.6


def check_targets(rows: list[dict]) -> list[dict]:
    """Issue 22's targets, for the CUDA rows that exist (none apply to a CPU run)."""
    checks = []
    for r in rows:
        if r["mode"] != "bookkeeping" or "error" in r:
            continue
        if r["model"] == "event_transformer" and r["batch"] >= 512:
            checks.append({"target": f"event DP/non-DP <= {EVENT_MAX_RATIO} ({r['precision']}, batch {r['batch']})",
                           "value": r.get("ratio_mean"), "met": r.get("ratio_mean", 99) <= EVENT_MAX_RATIO})
            if r["precision"] == "bf16" and r["batch"] == 2048:
                checks.append({"target": f"event DP >= {EVENT_MIN_DP_SAMPLES_PER_S} samples/s (bf16, batch 2048)",
                               "value": r["samples_per_s"], "met": r["samples_per_s"] >= EVENT_MIN_DP_SAMPLES_PER_S})
        if r["model"] == "set_transformer" and r["batch"] >= 512:
            checks.append({"target": f"SetTransformer DP/non-DP <= {SET_MAX_RATIO} ({r['precision']}, batch {r['batch']})",
                           "value": r.get("ratio_mean"), "met": r.get("ratio_mean", 99) <= SET_MAX_RATIO})
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="comma list of fp32,tf32,bf16 (default: all on CUDA, fp32 on CPU)")
    parser.add_argument("--batches", default=None, help="comma list (default 512,2048; --quick: 8)")
    parser.add_argument("--models", default="event_transformer,set_transformer")
    parser.add_argument("--modes", default="non-dp,bookkeeping", help=f"comma list of {','.join(MODES)}")
    parser.add_argument("--reps", type=int, default=MIN_REPS, help=f"interleaved repetitions (>= {MIN_REPS})")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode and repetition (default 3, quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per mode (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small model presets, batch 8, 1 step per repetition")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    parser.add_argument("--from-json", default=None, help="check the targets on this dp_overhead/gpu_throughput JSON")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_throughput_<device>[_quick].json)")
    args = parser.parse_args(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        checks = check_targets(data["rows"])
        print(table(data["rows"]))
        print(f"device: {data.get('device_name')}; command: {data.get('command')}")
        for c in checks:
            print(f"{'met ' if c['met'] else 'MISS'}  {c['target']}: {c['value']}")
        if args.out:
            write_json(Path(args.out), data | {"targets": checks}, indent=2)
        return 0

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but this machine has no CUDA device")
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    if args.reps < MIN_REPS:
        parser.error(f"--reps must be >= {MIN_REPS}")
    precisions = (args.precision or ("fp32,tf32,bf16" if cuda else "fp32")).split(",")
    if set(precisions) - {"fp32", "tf32", "bf16"}:
        parser.error(f"unknown precision(s) {sorted(set(precisions) - {'fp32', 'tf32', 'bf16'})}")
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES):
        parser.error(f"unknown mode(s) {sorted(set(modes) - set(MODES))}")
    modes = ["non-dp"] + [m for m in modes if m != "non-dp"]
    batches = [int(b) for b in (args.batches or ("8" if args.quick else "512,2048")).split(",") if b]
    steps = args.steps or (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    clock = "wall" if cuda or torch.get_num_threads() > 1 else "cpu"

    plan, notes = [], []
    if "event_transformer" in args.models:
        plan.append(event_workload(small=args.quick))
    if "set_transformer" in args.models:
        work = set_transformer_workload(small=args.quick)
        if isinstance(work, str):
            notes.append(work)
        else:
            plan.append(work)

    started = time.perf_counter()
    rows = []
    for work in plan:
        for precision in precisions:
            for b in batches:
                rows += measure(work, modes, b, precision, device, warmup, args.reps, steps, clock)
    checks = check_targets(rows)
    print(table(rows))
    for c in checks:
        print(f"{'met ' if c['met'] else 'MISS'}  {c['target']}: {c['value']}")
    for note in notes:
        print(f"note: {note}")

    suffix = "_quick" if args.quick else ""
    results = Path(__file__).resolve().parent / "results"
    out = Path(args.out) if args.out else results / f"gpu_throughput_{args.device}{suffix}.json"
    write_json(out, {
        "benchmark": "gpu_throughput",
        "device": args.device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": ("python benchmarks/gpu_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
        "clock": clock,
        "warmup": warmup,
        "reps": args.reps,
        "steps": steps,
        "quick": args.quick,
        "wall_s": round(time.perf_counter() - started, 1),
        "workloads": {w.name: w.note for w in plan},
        "notes": notes,
        "rows": rows,
        "targets": checks,
    }, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
