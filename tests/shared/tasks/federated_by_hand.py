"""A federation without Flower, for utility checks: every site prepares its data, plans its noise
for the whole run (shared.privacy.planner), trains each round with the DP trainer from the global
weights, and the center averages the results weighted by training-set size (FedAvg). Evaluation
weights the sites' validation metrics by validation-set size.

    PYTHONPATH=. python -m tests.shared.tasks.federated_by_hand fedcare/configs/multimodal.yaml [--epsilon 8]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedcare.evaluate import model_outputs as site_outputs  # targets and outputs over a dataset
from shared.config import RunConfig, load_config
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.planner import plan_noise_multiplier
from shared.tasks.base import SiteData, Task
from shared.tasks.registry import build_task
from shared.training.dp_trainer import TrainSettings, sample_rate_for, steps_per_epoch, train_model

_plan = functools.cache(plan_noise_multiplier)  # the accountant is slow; sweeps repeat plans


@dataclass
class FederatedResult:
    weighted: dict[str, float]  # metric -> validation-size-weighted mean over sites
    per_site: dict[str, dict[str, float]]
    epsilon: dict[str, float]  # spent per site over the run
    noise_multiplier: dict[str, float]


def run_federation(cfg: RunConfig, state_root: Path, dp: bool = True) -> FederatedResult:
    task = build_task(cfg)
    root = Path(cfg.data.root)
    if not all((root / s).is_dir() for s in cfg.data.sites):
        task.synthesize(root, list(cfg.data.sites), cfg.seed)
    t, p = cfg.train, cfg.privacy
    sites: dict[str, tuple[Task, SiteData]] = {}
    for site in cfg.data.sites:
        site_task = build_task(cfg)  # one task per site: site state (e.g. pos_weight) stays local
        sites[site] = (site_task, site_task.prepare_site(root / site, site, state_root / site))
    noise: dict[str, float] = {}
    for site, (_, data) in sites.items():
        q = sample_rate_for(data.n_train, t.batch_size)
        steps = t.local_epochs * steps_per_epoch(data.n_train, t.batch_size) * t.rounds
        noise[site] = _plan(cfg.site_target_epsilon(site), p.delta, q, steps, accountant=p.accountant) if dp else 0.0
    torch.manual_seed(cfg.seed)
    global_model = task.build_model()
    mechanisms: dict[str, list[Mechanism]] = {s: [] for s in sites}
    for server_round in range(1, t.rounds + 1):
        states, weights = [], []
        for k, (site, (site_task, data)) in enumerate(sites.items()):
            model = task.build_model()
            model.load_state_dict(global_model.state_dict())
            settings = TrainSettings(
                epochs=t.local_epochs, expected_batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                optimizer=t.optimizer, noise_multiplier=noise[site] if dp else None, max_grad_norm=p.max_grad_norm,
                seed=cfg.seed * 1000 + server_round * 10 + k,
                dp_seed=cfg.seed * 1000 + server_round * 10 + k,  # utility checks: reproducible DP draws
            )
            result = train_model(model, data.train, site_task.loss, settings)
            mechanisms[site].append(Mechanism(noise[site], result.sample_rate, result.steps))
            states.append(model.state_dict())
            weights.append(data.n_train)
        share = np.asarray(weights, dtype=float) / sum(weights)
        global_model.load_state_dict({key: sum(w * s[key] for w, s in zip(share, states)) for key in states[0]})
    per_site, sizes = {}, []
    for site, (site_task, data) in sites.items():
        y, out = site_outputs(site_task, global_model, data.val)
        per_site[site] = site_task.metrics(y, out)
        sizes.append(data.n_val)
    share = np.asarray(sizes, dtype=float) / sum(sizes)
    keys = set.intersection(*(set(m) for m in per_site.values()))
    weighted = {key: float(sum(w * m[key] for w, m in zip(share, per_site.values()))) for key in sorted(keys)}
    epsilon = {s: epsilon_opacus(m, p.delta, p.accountant) if dp else float("inf") for s, m in mechanisms.items()}
    return FederatedResult(weighted, per_site, epsilon, noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--epsilon", type=float, default=None)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--no-dp", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: threads only contend
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            cfg = load_config(args.config)
            cfg.seed = seed
            cfg.data.root = str(Path(tmp) / f"data_{seed}")
            if args.epsilon is not None:
                cfg.privacy.target_epsilon = args.epsilon
            result = run_federation(cfg, Path(tmp) / f"state_{seed}", dp=not args.no_dp)
            metric = build_task(cfg).primary_metric
            sites = " ".join(f"{s}={m.get(metric, float('nan')):.3f}" for s, m in result.per_site.items())
            eps = " ".join(f"{e:.2f}" for e in result.epsilon.values())
            nm = " ".join(f"{v:.2f}" for v in result.noise_multiplier.values())
            weighted = result.weighted.get(metric, float("nan"))
            print(f"seed {seed}: weighted {metric} {weighted:.3f} ({sites}) epsilon {eps} noise {nm}")


if __name__ == "__main__":
    main()
