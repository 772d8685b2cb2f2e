"""FedAvg + DP-SGD across synthetic AKI sites without Flower: the utility check for fedcare/configs/retain_aki.yaml.

Each site prepares its data with the task, plans its noise multiplier for the whole run at the
config's target epsilon (as client/site_worker.py does), trains `local_epochs` per round from the
global weights with shared.training.dp_trainer; the global weights are the n_train-weighted mean of
the sites' weights. Reports the final global model's validation AUROC per site, the n_val-weighted
AUROC (as the server's round table) and each site's epsilon.

    PYTHONPATH=. python -m tests.shared.tasks.retain_fedavg fedcare/configs/retain_aki.yaml [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from shared.config import RunConfig, load_config
from shared.metrics import auroc
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.planner import plan_noise_multiplier
from shared.tasks.base import SiteData, Task
from shared.tasks.registry import build_task
from shared.training.dp_trainer import TrainSettings, sample_rate_for, steps_per_epoch, train_model


@dataclass
class SiteResult:
    n_train: int
    n_val: int
    auroc: float
    epsilon: float
    noise_multiplier: float | None


def site_auroc(task: Task, model: torch.nn.Module, data: SiteData) -> float:
    model.eval()
    outs, ys = [], []
    with torch.inference_mode():
        for batch in DataLoader(data.val, batch_size=512):
            outs.append(task.forward(model, batch))
            ys.append(task.targets(batch))
    return auroc(torch.cat(ys).numpy(), torch.cat(outs).numpy())


def run_fedavg(cfg: RunConfig, data_root: Path, state_root: Path) -> tuple[dict[str, SiteResult], float]:
    """Per-site results of the final global model and the n_val-weighted validation AUROC."""
    t, p = cfg.train, cfg.privacy
    tasks = {site: build_task(cfg) for site in cfg.data.sites}
    data = {site: tasks[site].prepare_site(data_root / site, site, state_root / site) for site in cfg.data.sites}
    plans: dict[str, tuple[float | None, float, int]] = {}
    for site, d in data.items():
        q = sample_rate_for(d.n_train, t.batch_size)
        steps = t.local_epochs * steps_per_epoch(d.n_train, t.batch_size) * t.rounds
        nm = None
        if p.enabled:
            nm = plan_noise_multiplier(cfg.site_target_epsilon(site), p.delta, q, steps, accountant=p.accountant,
                                       max_noise_multiplier=p.max_noise_multiplier)
        plans[site] = (nm, q, 0)
    torch.manual_seed(cfg.seed)
    global_model = tasks[cfg.data.sites[0]].build_model()
    for server_round in range(1, t.rounds + 1):
        states, weights = [], []
        for site, d in data.items():
            model = copy.deepcopy(global_model)
            nm, q, steps = plans[site]
            settings = TrainSettings(
                epochs=t.local_epochs, expected_batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                optimizer=t.optimizer, noise_multiplier=nm, max_grad_norm=p.max_grad_norm,
                grad_sample_mode=p.grad_sample_mode, seed=cfg.seed * 1000 + server_round,
                dp_seed=cfg.seed * 1000 + server_round,  # a utility check: reproducible DP draws, not secret ones
            )
            result = train_model(model, d.train, tasks[site].loss, settings)
            plans[site] = (nm, q, steps + result.steps)
            states.append(model.state_dict())
            weights.append(d.n_train)
        w = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        averaged = {k: sum(wi * s[k].double() for wi, s in zip(w, states)).to(states[0][k].dtype) for k in states[0]}
        global_model.load_state_dict(averaged)
    results = {}
    for site, d in data.items():
        nm, q, steps = plans[site]
        eps = epsilon_opacus([Mechanism(nm, q, steps)], p.delta, p.accountant) if nm is not None else float("inf")
        results[site] = SiteResult(d.n_train, d.n_val, site_auroc(tasks[site], global_model, d), eps, nm)
    n_val = sum(r.n_val for r in results.values())
    return results, sum(r.auroc * r.n_val for r in results.values()) / n_val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", default="0", help="comma-separated data/training seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny model on a shared machine: more threads were up to 40x slower under load
    weighted = []
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = load_config(args.config)
        cfg.seed = seed
        with tempfile.TemporaryDirectory() as tmp:
            build_task(cfg).synthesize(Path(tmp) / "data", list(cfg.data.sites), seed)
            started = time.time()
            results, w = run_fedavg(cfg, Path(tmp) / "data", Path(tmp) / "state")
        weighted.append(w)
        for site, r in results.items():
            print(f"seed {seed} {site}: n_train {r.n_train} n_val {r.n_val} AUROC {r.auroc:.3f} "
                  f"epsilon {r.epsilon:.2f} noise multiplier {r.noise_multiplier}")
        print(f"seed {seed} weighted val AUROC {w:.3f} ({time.time() - started:.0f} s)")
    print(f"mean weighted AUROC over seeds {np.mean(weighted):.3f} (min {np.min(weighted):.3f})")


if __name__ == "__main__":
    main()
