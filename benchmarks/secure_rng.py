"""Cost of the site's secret DP randomness (shared.training.dp_rng) against the old draw.

Old: one `normal_` per logical step from torch's global generator (seeded from the run config).
Now: per round, two fresh generators (the CPU one's whole MT19937 state from `secrets`), and per
logical step Opacus' secure-mode noise (one discarded draw, then four N(0, std^2) draws summed, / 2).
Both paths draw the same Poisson masks the same way, so the difference is the generator set-up (once
per round) and the noise draw (once per logical step). Timed through the trainer's own step objects
(shared.training.dp_trainer.make_training_step), the two variants interleaved step by step so a
loaded machine slows both alike; medians.

    python benchmarks/secure_rng.py --quick    # CPU, one torch thread, ~1-3 min on 2 cores
    python benchmarks/secure_rng.py --device cuda

Prints a table and writes benchmarks/results/secure_rng_<device>.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.io import write_json  # noqa: E402
from shared.models.event_transformer import EventTransformer, EventTransformerConfig  # noqa: E402
from shared.training import fast_dp  # noqa: E402
from shared.training.dp_rng import dp_randomness, gaussian_noise  # noqa: E402
from shared.training.dp_trainer import TrainSettings, make_training_step  # noqa: E402

# (name, model config, events per stay, expected batch)
WORKLOADS = (
    ("event_transformer demo size", dict(d_model=16, layers=1, heads=2, ff=32, pooling_heads=2, mlp_hidden=16,
                                         event_dim=21, static_dim=8), 64, 256),
    ("event_transformer seed size", dict(event_dim=774, static_dim=60), 64, 32),
)


def _plain_noise(like: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.empty_like(like).normal_(0.0, std, generator=generator)  # the old draw: one normal_


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(cfg: EventTransformerConfig, events: int, b: int, device: torch.device) -> list[torch.Tensor]:
    lengths = torch.randint(4, events + 1, (b,), device=device)
    return [torch.randn(b, events, cfg.event_dim, device=device),
            torch.arange(events, device=device)[None, :] < lengths[:, None],
            torch.randn(b, cfg.static_dim, device=device), torch.randint(0, 2, (b,), device=device).float()]


def _loss(m: nn.Module, b: list[torch.Tensor]) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(m(b[0], b[1], b[2]), b[3])


def time_workload(name: str, params: dict, events: int, batch_size: int, mode: str, device: torch.device,
                  repeats: int) -> dict:
    torch.manual_seed(0)
    cfg = EventTransformerConfig(**params)
    batch = _batch(cfg, events, batch_size, device)
    dataset = TensorDataset(torch.zeros(4 * batch_size, 1))
    settings = TrainSettings(expected_batch_size=batch_size, noise_multiplier=1.0, grad_sample_mode=mode, device=str(device))
    steps = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for variant in ("old", "secret"):
            steps[variant] = make_training_step(EventTransformer(cfg).to(device).train(), dataset, settings,
                                                dp_randomness(device))
    if hasattr(steps["old"].optimizer, "secure_mode"):
        steps["old"].optimizer.secure_mode = False  # Opacus: one draw, as before
    times: dict[str, list[float]] = {"old": [], "secret": []}
    original = fast_dp.gaussian_noise
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(repeats + 2):
                for variant in ("old", "secret"):
                    fast_dp.gaussian_noise = _plain_noise if variant == "old" else original
                    _sync(device)
                    start = time.perf_counter()
                    steps[variant].run(_loss, batch)
                    _sync(device)
                    if i >= 2:
                        times[variant].append(time.perf_counter() - start)
    finally:
        fast_dp.gaussian_noise = original
        for step in steps.values():
            step.close()
    n_params = sum(p.numel() for p in EventTransformer(cfg).parameters())
    flat = torch.zeros(n_params, device=device)
    generator = dp_randomness(device).noise
    noise = {}
    for variant, draw in (("old", _plain_noise), ("secret", gaussian_noise)):
        samples = []
        for _ in range(20):
            _sync(device)
            start = time.perf_counter()
            draw(flat, 1.0, generator)
            _sync(device)
            samples.append(time.perf_counter() - start)
        noise[variant] = statistics.median(samples) * 1000
    setup = []
    for _ in range(20):
        start = time.perf_counter()
        dp_randomness(device)
        setup.append(time.perf_counter() - start)
    old_ms, secret_ms = (statistics.median(times[v]) * 1000 for v in ("old", "secret"))
    setup_ms = statistics.median(setup) * 1000
    return {
        "workload": name, "mode": mode, "parameters": n_params, "batch": batch_size, "events": events,
        "step_ms_old": round(old_ms, 3), "step_ms_secret": round(secret_ms, 3),
        "noise_ms_old": round(noise["old"], 4), "noise_ms_secret": round(noise["secret"], 4),
        "generator_setup_ms_per_round": round(setup_ms, 4),
        # the noise draw's extra cost as a share of a DP step (the step-time difference is within timing noise)
        "noise_overhead_pct_of_step": round(100 * (noise["secret"] - noise["old"]) / old_ms, 3),
        "step_overhead_pct_measured": round(100 * (secret_ms - old_ms) / old_ms, 2),
        "setup_pct_of_one_step": round(100 * setup_ms / old_ms, 3),
    }


def _table(rows: list[dict]) -> str:
    cols = ("workload", "mode", "parameters", "batch", "step_ms_old", "step_ms_secret", "noise_ms_old", "noise_ms_secret",
            "noise_overhead_pct_of_step", "step_overhead_pct_measured", "generator_setup_ms_per_round")
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="5 timed steps per variant")
    parser.add_argument("--modes", default="bookkeeping,hooks")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = 5
    device = torch.device(args.device)
    rows = [time_workload(name, params, events, batch, mode, device, args.repeats)
            for name, params, events, batch in WORKLOADS for mode in args.modes.split(",")]
    print(_table(rows))
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"secure_rng_{device.type}.json"
    payload = {"device": str(device), "torch": torch.__version__, "machine": platform.machine(),
               "threads": args.threads, "rows": rows}
    write_json(out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
