"""DP-SGD step cost against a non-DP step, per per-sample clipping engine, measured interleaved.

For the event transformer (seed size: d_model 256, 4 layers, 8 heads, ff 512, 4 pooling heads,
event_dim 774 = 5 + 768 text + 1, static_dim 60, 128 events, lengths 16-128) and the sleep
SetTransformer (seed size, one 30-s epoch: 4 channels x 6 patches x 640 samples, + a linear
5-class head) it times one optimizer step on a fixed batch already on the device: non-DP (forward,
backward, AdamW) and DP-SGD through Opacus hooks, Opacus ghost clipping, Opacus functorch and
book-keeping. Every step goes through shared.training.dp_trainer.make_training_step(...).run(...),
the code train_model runs.

How, per (model, batch, precision): every mode gets its own copy of the model and its own step
object, all built up front in one process with the same torch threads (the plain copy never has a
hook attached; checked). After warm-up, `--reps` repetitions (>= 5) each run every mode for
`--steps` steps back to back, the order of the modes rotating between repetitions; a mode's time in
a repetition is its fastest step (CUDA synchronised around each), by CPU time of the process on
one-thread CPU runs (other processes on a shared machine do not count) and by wall time on CUDA. The DP / non-DP ratio of a
repetition is the DP mode's fastest step over the plain step's fastest step in the same
repetition; the table gives mean +- sd over repetitions (and the median, which the CI regression
check compares). ms/step and samples/s: median over repetitions of the fastest step. Peak memory:
CUDA max_memory_allocated over the mode's own steps (the other modes' model copies included);
CPU: peak RSS of the process during the mode's warm-up (VmHWM reset first; all copies included).

    python benchmarks/dp_overhead.py --device cpu                 # the figures in the README
    python benchmarks/dp_overhead.py --device cpu --quick         # CI: ~20 s on 2 cores
    python benchmarks/dp_overhead.py --device cuda --precision fp32,tf32,bf16

Prints a table and writes benchmarks/results/dp_overhead_<device>[_quick].json. On CPU it runs
with one torch thread unless --threads says otherwise: on a shared (oversubscribed) machine OpenMP
threads that wait for each other make small kernels 100-1000x slower and the ratios meaningless.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcare.progress import track  # noqa: E402
from shared.io import write_json  # noqa: E402
from shared.models.event_transformer import EventTransformer, EventTransformerConfig  # noqa: E402
from shared.training.devices import configure_precision  # noqa: E402
from shared.training.dp_trainer import TrainingStep, TrainSettings, make_training_step  # noqa: E402

MODES = ("non-dp", "hooks", "ghost", "functorch", "bookkeeping")
DEFAULT_MODES = ("non-dp", "bookkeeping", "hooks")
MIN_REPS = 5
Batch = list[torch.Tensor]
LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class Workload:
    name: str
    model: nn.Module
    make_batch: Callable[[int, torch.device], Batch]
    loss: LossFn
    note: str


def event_workload(small: bool = False) -> Workload:
    """The seed-size event transformer, or with `small` a d_model-32 one for smoke runs."""
    sizes = dict(d_model=32, layers=1, heads=2, ff=64, pooling_heads=2, mlp_hidden=16) if small else {}
    cfg = EventTransformerConfig(event_dim=774, static_dim=60, **sizes)
    events = 32 if small else 128

    def make_batch(b: int, device: torch.device) -> Batch:
        lengths = torch.randint(events // 8, events + 1, (b,), device=device)
        valid = torch.arange(events, device=device)[None, :] < lengths[:, None]
        return [
            torch.randn(b, events, cfg.event_dim, device=device),
            valid,
            torch.randn(b, cfg.static_dim, device=device),
            torch.randint(0, 2, (b,), device=device).float(),
        ]

    def loss(m: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(m(batch[0], batch[1], batch[2]), batch[3])

    size = "small" if small else "seed size"
    return Workload("event_transformer", EventTransformer(cfg), make_batch, loss, f"{size}, {events} events, padded")


class _SetTransformerStager(nn.Module):
    """SetTransformer encoder + a linear 5-class head on the pooled embedding (one 30-s epoch)."""

    def __init__(self, encoder: nn.Module, d_model: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(d_model, 5)

    def forward(
        self, x: torch.Tensor, channel_valid: torch.Tensor, patch_valid: torch.Tensor
    ) -> torch.Tensor:
        return self.head(self.encoder(x, channel_valid, patch_valid)["pooled"])


def set_transformer_workload(small: bool = False) -> Workload | str:
    """The seed-size sleep SetTransformer (or its `small` preset) with a 5-class head."""
    try:
        from shared.models.set_transformer import SetTransformer, SetTransformerConfig
    except ModuleNotFoundError:
        return "shared.models.set_transformer is not in this checkout: skipped"
    cfg = SetTransformerConfig.small() if small else SetTransformerConfig()
    channels, patches = 4, 6

    def make_batch(b: int, device: torch.device) -> Batch:
        channel_valid = torch.rand(b, channels, device=device) < 0.9
        channel_valid[:, 0] = True
        return [
            torch.randn(b, channels, patches, cfg.patch_samples, device=device),
            channel_valid,
            torch.ones(b, patches, dtype=torch.bool, device=device),
            torch.randint(0, 5, (b,), device=device),
        ]

    def loss(m: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(m(batch[0], batch[1], batch[2]), batch[3])

    model = _SetTransformerStager(SetTransformer(cfg), cfg.d_model)
    size = "small preset" if small else "seed size"
    return Workload("set_transformer", model, make_batch, loss, f"{size}, {channels} ch x {patches} patches x 640")


# Kept for callers of the old names.
_event_workload = event_workload
_set_transformer_workload = set_transformer_workload


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak RSS (VmHWM)
        except OSError:
            pass


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _hooks_on(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def _error(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError):
        return "out of memory"
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"


def _timed_step(step: TrainingStep, work: Workload, batch: Batch, device: torch.device) -> tuple[float, float]:
    """-> (wall seconds, CPU seconds of this process) of one step."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    loss, _ = step.run(work.loss, batch)
    _sync(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {float(loss)}")
    return wall, cpu


def measure(
    work: Workload,
    modes: Sequence[str],
    batch_size: int,
    precision: str,
    device: torch.device,
    warmup: int,
    reps: int,
    steps: int,
    clock: str = "wall",
) -> list[dict]:
    """One (model, batch, precision): all modes interleaved in this process -> one row per mode.
    clock "cpu" times steps by the process's CPU time (one-thread CPU runs on a shared machine:
    time other processes take is not counted), "wall" by wall time (CUDA)."""
    pick = 1 if clock == "cpu" else 0
    configure_precision(precision)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    batch = work.make_batch(batch_size, device)
    # A stand-in dataset of 4 x batch rows: the Poisson expected batch is then exactly batch_size.
    dataset = TensorDataset(torch.zeros(4 * batch_size, 1))
    rows = {m: {"model": work.name, "mode": m, "batch": batch_size, "precision": precision} for m in modes}
    built: dict[str, tuple[nn.Module, TrainingStep]] = {}
    times: dict[str, list[float]] = {m: [] for m in modes}
    walls: dict[str, list[float]] = {m: [] for m in modes}
    plain = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for mode in modes:
                model = copy.deepcopy(work.model).to(device).train()
                settings = TrainSettings(
                    expected_batch_size=batch_size,
                    noise_multiplier=None if mode == "non-dp" else 1.0,
                    grad_sample_mode="hooks" if mode == "non-dp" else mode,
                    device=str(device),
                    precision=precision,
                )
                try:
                    built[mode] = (model, make_training_step(model, dataset, settings))
                except Exception as err:  # a mode that does not run on this model is a result
                    rows[mode]["error"] = _error(err)
            plain = built.get("non-dp")
            if plain is not None and _hooks_on(plain[0]):
                raise RuntimeError("the plain model has hooks attached")
            for mode, (_model, step) in list(built.items()):
                _reset_peak(device)
                try:
                    for _ in range(warmup):
                        _timed_step(step, work, batch, device)
                    rows[mode]["peak_mb"] = round(_peak_mb(device), 1)
                except Exception as err:
                    rows[mode]["error"] = _error(err)
                    built.pop(mode)[1].close()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            order = list(built)
            for rep in track(range(reps), f"{work.name} batch {batch_size} {precision}: repetitions"):
                shift = rep % max(1, len(order))
                for mode in order[shift:] + order[:shift]:
                    if mode not in built:
                        continue
                    model, step = built[mode]
                    assert model.training and torch.get_num_threads() == threads
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    try:
                        fastest = min((_timed_step(step, work, batch, device) for _ in range(steps)), key=lambda x: x[pick])
                        times[mode].append(fastest[pick])
                        walls[mode].append(fastest[0])
                    except Exception as err:
                        rows[mode]["error"] = _error(err)
                        built.pop(mode)[1].close()
                        continue
                    if device.type == "cuda":
                        rows[mode]["peak_mb"] = round(max(rows[mode].get("peak_mb", 0.0), _peak_mb(device)), 1)
    finally:
        for _model, step in built.values():
            step.close()
        built.clear()
        del batch
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if plain is not None and _hooks_on(plain[0]):
        raise RuntimeError("the plain model has hooks attached")
    base = times.get("non-dp", [])
    for mode, row in rows.items():
        if "error" in row or not times[mode]:
            continue
        ms = statistics.median(times[mode]) * 1000
        row |= {
            "step_ms": round(ms, 2),
            "samples_per_s": round(batch_size / ms * 1000, 1),
            "wall_ms": round(statistics.median(walls[mode]) * 1000, 2),
            "clock": clock,
            "reps": len(times[mode]),
            "threads": threads,
        }
        if mode != "non-dp" and len(base) == len(times[mode]):
            ratios = [d / p for d, p in zip(times[mode], base)]
            row |= {
                "ratios": [round(r, 4) for r in ratios],
                "ratio_mean": round(statistics.fmean(ratios), 4),
                "ratio_sd": round(statistics.stdev(ratios), 4) if len(ratios) > 1 else 0.0,
                "ratio_median": round(statistics.median(ratios), 4),
                "dp_over_non_dp": round(statistics.fmean(ratios), 3),
            }
    return list(rows.values())


def _ratio_text(r: dict) -> str:
    if "ratio_mean" not in r:
        return ""
    return f"{r['ratio_mean']:.3f} ± {r['ratio_sd']:.3f}"


def table(rows: list[dict]) -> str:
    head = (
        f"{'model':<18}{'batch':>6} {'prec':<5}{'mode':<12}"
        f"{'step ms':>10}{'samples/s':>11}{'peak MB':>10}  {'DP/non-DP (mean ± sd)':<22}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            error = r["error"] if len(r["error"]) <= 90 else r["error"][:87] + "..."
            lines.append(f"{r['model']:<18}{r['batch']:>6} {r['precision']:<5}{r['mode']:<12}  {error}")
            continue
        lines.append(
            f"{r['model']:<18}{r['batch']:>6} {r['precision']:<5}{r['mode']:<12}{r['step_ms']:>10.1f}"
            f"{r['samples_per_s']:>11.0f}{r.get('peak_mb', float('nan')):>10.0f}  {_ratio_text(r)}"
        )
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    return platform.processor() or platform.machine()


def _ints(text: str) -> list[int]:
    return [int(b) for b in text.split(",") if b]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--precision", default=None, help="comma list of fp32,tf32,bf16 (default: fp32 on CPU, all on CUDA)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI run: batch 16, non-DP and book-keeping only, 1 warm-up, 5 reps of 1 step",
    )
    parser.add_argument("--modes", default=None, help=f"comma list of {','.join(MODES)} (default {','.join(DEFAULT_MODES)})")
    parser.add_argument("--models", default="event_transformer,set_transformer")
    parser.add_argument("--event-batches", default=None, help="default: 32,256 on CPU, 512,2048 on CUDA")
    parser.add_argument("--set-batches", default=None, help="default: 32,256 on CPU, 512,2048 on CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per mode (default 2, quick 1)")
    parser.add_argument("--reps", type=int, default=None, help=f"interleaved repetitions (>= {MIN_REPS})")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode and repetition (default 2, quick 1)")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="what a step's time is: process CPU time (default on CPU with 1 thread) or wall time (CUDA, threads > 1)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: 1 on CPU, torch's on CUDA)"
    )
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/dp_overhead_<device>[_quick].json)"
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but this machine has no CUDA device")
    cuda = device.type == "cuda"
    threads = args.threads or (None if cuda else 1)
    if threads:
        torch.set_num_threads(threads)
    clock = args.clock or ("cpu" if not cuda and torch.get_num_threads() == 1 else "wall")
    if clock == "cpu" and cuda:
        parser.error("--clock cpu cannot time CUDA kernels")
    precisions = (args.precision or ("fp32,tf32,bf16" if cuda else "fp32")).split(",")
    bad = set(precisions) - {"fp32", "tf32", "bf16"}
    if bad:
        parser.error(f"unknown precision(s) {sorted(bad)}")
    default_modes = ("non-dp", "bookkeeping") if args.quick else DEFAULT_MODES
    modes = [m for m in (args.modes or ",".join(default_modes)).split(",") if m]
    if set(modes) - set(MODES):
        parser.error(f"unknown mode(s) {sorted(set(modes) - set(MODES))}")
    modes = ["non-dp"] + [m for m in modes if m != "non-dp"]
    reps = args.reps if args.reps is not None else MIN_REPS
    if reps < MIN_REPS:
        parser.error(f"--reps must be >= {MIN_REPS} (mean ± sd of interleaved ratios)")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    steps = args.steps if args.steps is not None else (1 if args.quick else 2)
    big = "512,2048" if cuda else "32,256"
    event_batches = _ints(args.event_batches or ("16" if args.quick else big))
    set_batches = _ints(args.set_batches or ("16" if args.quick else big))

    notes, plan = [], []
    if "event_transformer" in args.models:
        plan.append((event_workload(), event_batches))
    if "set_transformer" in args.models:
        work = set_transformer_workload()
        if isinstance(work, str):
            notes.append(work)
        else:
            plan.append((work, set_batches))

    started = time.perf_counter()
    rows = []
    for work, batches in plan:
        for precision in precisions:
            for b in batches:
                for row in measure(work, modes, b, precision, device, warmup, reps, steps, clock):
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print()
    print(table(rows))
    for note in notes:
        print(f"note: {note}")

    suffix = "_quick" if args.quick else ""
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"dp_overhead_{args.device}{suffix}.json"
    command = "python benchmarks/dp_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(
        out,
        {
            "benchmark": "dp_overhead",
            "device": args.device,
            "device_name": device_name(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "command": command.strip(),
            "clock": clock,
            "warmup": warmup,
            "reps": reps,
            "steps": steps,
            "quick": args.quick,
            "wall_s": round(time.perf_counter() - started, 1),
            "workloads": {w.name: w.note for w, _ in plan},
            "notes": notes,
            "rows": rows,
        },
        indent=2,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
