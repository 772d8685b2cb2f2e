"""DP-SGD step cost against a non-DP step, per per-sample clipping engine.

For the event transformer (seed size: d_model 256, 4 layers, 8 heads, ff 512, 4 pooling heads,
event_dim 774 = 5 + 768 text + 1, static_dim 60, 128 events) and the sleep SetTransformer (seed
size, one 30-s epoch: 4 channels x 6 patches x 640 samples, + a linear 5-class head) it times one
optimizer step on a fixed batch already on the device: non-DP (forward, backward, AdamW), and
DP-SGD through Opacus hooks, Opacus ghost clipping, Opacus functorch and book-keeping. Every step
goes through shared.training.dp_trainer.make_training_step(...).run(...), the code train_model
runs. Per configuration: warm-up steps, then the median of timed steps (CUDA synchronised around
each), samples/s, peak memory (CUDA: max_memory_allocated; CPU: peak RSS of the process, reset
per configuration) and the DP / non-DP ratio from the same run.

    python benchmarks/dp_overhead.py --device cpu --quick      # ~1 min on 2 cores
    python benchmarks/dp_overhead.py --device cuda --precision fp32,tf32,bf16

Prints a table and writes benchmarks/results/dp_overhead_<device>.json. `--quick` on CPU runs with
one torch thread unless --threads says otherwise: on a shared (oversubscribed) machine OpenMP
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
import tempfile
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

from shared.models.event_transformer import EventTransformer, EventTransformerConfig  # noqa: E402
from shared.training.devices import configure_precision  # noqa: E402
from shared.training.dp_trainer import TrainSettings, make_training_step  # noqa: E402

MODES = ("non-dp", "hooks", "ghost", "functorch", "bookkeeping")
Batch = list[torch.Tensor]
LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class Workload:
    name: str
    model: nn.Module
    make_batch: Callable[[int, torch.device], Batch]
    loss: LossFn
    note: str


def _event_workload() -> Workload:
    cfg = EventTransformerConfig(event_dim=774, static_dim=60)
    events = 128

    def make_batch(b: int, device: torch.device) -> Batch:
        lengths = torch.randint(16, events + 1, (b,), device=device)
        valid = torch.arange(events, device=device)[None, :] < lengths[:, None]
        return [
            torch.randn(b, events, cfg.event_dim, device=device),
            valid,
            torch.randn(b, cfg.static_dim, device=device),
            torch.randint(0, 2, (b,), device=device).float(),
        ]

    def loss(m: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(m(batch[0], batch[1], batch[2]), batch[3])

    return Workload(
        "event_transformer", EventTransformer(cfg), make_batch, loss, "seed size, 128 events, padded"
    )


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


def _set_transformer_workload() -> Workload | str:
    try:
        from shared.models.set_transformer import SetTransformer, SetTransformerConfig
    except ModuleNotFoundError:
        return "shared.models.set_transformer is not in this checkout: skipped"
    cfg = SetTransformerConfig()
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
    return Workload(
        "set_transformer", model, make_batch, loss, f"seed size, {channels} ch x {patches} patches x 640"
    )


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak RSS (VmHWM)


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


def time_mode(
    work: Workload,
    mode: str,
    batch_size: int,
    precision: str,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict:
    """One configuration: build the trainer's step object, warm up, time `repeats` steps."""
    configure_precision(precision)
    torch.manual_seed(0)
    batch = work.make_batch(batch_size, device)
    model = copy.deepcopy(work.model).to(device).train()
    # A stand-in dataset of 4 x batch rows: the Poisson expected batch is then exactly batch_size.
    dataset = TensorDataset(torch.zeros(4 * batch_size, 1))
    settings = TrainSettings(
        expected_batch_size=batch_size,
        noise_multiplier=None if mode == "non-dp" else 1.0,
        grad_sample_mode="hooks" if mode == "non-dp" else mode,
        device=str(device),
        precision=precision,
    )
    row = {"model": work.name, "mode": mode, "batch": batch_size, "precision": precision}
    step = None
    try:
        _reset_peak(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            step = make_training_step(model, dataset, settings)
            times = []
            for i in range(warmup + repeats):
                _sync(device)
                start = time.perf_counter()
                loss, _ = step.run(work.loss, batch)
                _sync(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)}")
        ms = statistics.median(times) * 1000
        row |= {
            "step_ms": round(ms, 2),
            "samples_per_s": round(batch_size / ms * 1000, 1),
            "peak_mb": round(_peak_mb(device), 1),
        }
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as err:  # a mode that does not run on this model is a result, not a crash
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    finally:
        if step is not None:
            step.close()
        del step, model, batch
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _with_ratios(rows: list[dict]) -> list[dict]:
    base = {(r["model"], r["batch"], r["precision"]): r.get("step_ms") for r in rows if r["mode"] == "non-dp"}
    for r in rows:
        ref = base.get((r["model"], r["batch"], r["precision"]))
        if r["mode"] != "non-dp" and ref and r.get("step_ms"):
            r["dp_over_non_dp"] = round(r["step_ms"] / ref, 3)
    return rows


def _table(rows: list[dict]) -> str:
    head = (
        f"{'model':<18}{'batch':>6} {'prec':<5}{'mode':<12}"
        f"{'step ms':>10}{'samples/s':>11}{'peak MB':>10}{'DP/non-DP':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            error = r["error"] if len(r["error"]) <= 90 else r["error"][:87] + "..."
            lines.append(f"{r['model']:<18}{r['batch']:>6} {r['precision']:<5}{r['mode']:<12}  {error}")
            continue
        ratio = f"{r['dp_over_non_dp']:.2f}x" if "dp_over_non_dp" in r else ""
        lines.append(
            f"{r['model']:<18}{r['batch']:>6} {r['precision']:<5}{r['mode']:<12}{r['step_ms']:>10.1f}"
            f"{r['samples_per_s']:>11.0f}{r['peak_mb']:>10.0f}{ratio:>10}"
        )
    return "\n".join(lines)


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--precision", default=None, help="comma list of fp32,tf32,bf16 (default: fp32 on CPU, all on CUDA)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="CPU smoke run: batch 32, 1 warm-up, 2 timed steps, no functorch"
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {','.join(MODES)}")
    parser.add_argument("--models", default="event_transformer,set_transformer")
    parser.add_argument("--event-batches", default=None, help="default: 32 on CPU, 64,512,2048 on CUDA")
    parser.add_argument("--set-batches", default=None, help="default: 32 on CPU and CUDA")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 with --quick on CPU, else torch's)",
    )
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/dp_overhead_<device>.json)"
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    threads = args.threads or (1 if args.quick and device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but this machine has no CUDA device")
    cuda = device.type == "cuda"
    precisions = (args.precision or ("fp32,tf32,bf16" if cuda else "fp32")).split(",")
    bad = set(precisions) - {"fp32", "tf32", "bf16"}
    if bad:
        parser.error(f"unknown precision(s) {sorted(bad)}")
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES):
        parser.error(f"unknown mode(s) {sorted(set(modes) - set(MODES))}")
    if "non-dp" not in modes:
        modes.insert(0, "non-dp")
    if args.quick and "functorch" in modes:
        modes.remove("functorch")  # slowest by far on CPU; run it without --quick
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else (10 if cuda else 5))
    event_batches = [int(b) for b in (args.event_batches or ("64,512,2048" if cuda else "32")).split(",")]
    set_batches = [int(b) for b in (args.set_batches or "32").split(",")]

    notes, plan = [], []
    if "event_transformer" in args.models:
        plan.append((_event_workload(), event_batches))
    if "set_transformer" in args.models:
        work = _set_transformer_workload()
        if isinstance(work, str):
            notes.append(work)
        else:
            plan.append((work, set_batches))

    rows = []
    for work, batches in plan:
        for precision in precisions:
            for b in batches:
                for mode in modes:
                    row = time_mode(work, mode, b, precision, device, warmup, repeats)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    rows = _with_ratios(rows)
    table = _table(rows)
    print()
    print(table)
    for note in notes:
        print(f"note: {note}")

    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    out = (
        Path(args.out)
        if args.out
        else Path(__file__).resolve().parent / "results" / f"dp_overhead_{args.device}.json"
    )
    _write_json(
        out,
        {
            "device": args.device,
            "device_name": device_name,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "warmup": warmup,
            "repeats": repeats,
            "quick": args.quick,
            "workloads": {w.name: w.note for w, _ in plan},
            "notes": notes,
            "rows": rows,
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
