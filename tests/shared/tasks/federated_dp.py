"""A federation without Flower, for utility checks: each site prepares its data, plans its
noise for the whole run (as the site worker does), trains with DP-SGD each round, and the
weights are averaged by hand (FedAvg, weighted by training size); then each site evaluates."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from shared.config import RunConfig
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.planner import plan_noise_multiplier
from shared.tasks.registry import build_task
from shared.training.dp_trainer import TrainSettings, sample_rate_for, steps_per_epoch, train_model


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    total = sum(weights)
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(s[key] * (w / total) for s, w in zip(states, weights))
        else:
            out[key] = first.clone()
    return out


def run_federation(cfg: RunConfig, state_root: Path) -> dict:
    """Trains cfg.train.rounds FedAvg rounds over cfg.data.sites; returns per-site validation
    metrics, epsilon, noise multiplier, the size-weighted primary metric and seconds per round."""
    t, p = cfg.train, cfg.privacy
    tasks, data, plans = {}, {}, {}
    for site in cfg.data.sites:
        tasks[site] = build_task(cfg)
        data[site] = tasks[site].prepare_site(Path(cfg.data.root) / site, site, state_root / site)
        n = data[site].n_train
        q = sample_rate_for(n, t.batch_size)
        steps = t.rounds * t.local_epochs * steps_per_epoch(n, t.batch_size)
        plans[site] = (plan_noise_multiplier(cfg.site_target_epsilon(site), p.delta, q, steps, accountant=p.accountant), q)
    task = tasks[cfg.data.sites[0]]
    torch.manual_seed(cfg.seed)
    state = task.build_model().state_dict()
    steps_done = {site: 0 for site in cfg.data.sites}
    round_seconds = []
    for rnd in range(1, t.rounds + 1):
        start = time.perf_counter()
        states, weights = [], []
        for site in cfg.data.sites:
            model = task.build_model()
            model.load_state_dict(state)
            settings = TrainSettings(
                epochs=t.local_epochs, expected_batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                optimizer=t.optimizer, noise_multiplier=plans[site][0], max_grad_norm=p.max_grad_norm,
                seed=cfg.seed * 1000 + rnd, dp_seed=cfg.seed * 1000 + rnd,  # utility checks: reproducible DP draws
            )
            result = train_model(model, data[site].train, tasks[site].loss, settings)
            steps_done[site] += result.steps
            states.append(model.state_dict())
            weights.append(float(data[site].n_train))
        state = fedavg(states, weights)
        round_seconds.append(time.perf_counter() - start)
    model = task.build_model()
    model.load_state_dict(state)
    model.eval()
    out: dict = {"sites": {}, "seconds_per_round": float(np.mean(round_seconds))}
    weighted, total = 0.0, 0
    for site in cfg.data.sites:
        outputs, targets = [], []
        with torch.inference_mode():
            for batch in DataLoader(data[site].val, batch_size=64):
                outputs.append(tasks[site].forward(model, batch).float())
                targets.append(tasks[site].targets(batch))
        metrics = tasks[site].metrics(torch.cat(targets).numpy(), torch.cat(outputs).numpy())
        nm, q = plans[site]
        eps = epsilon_opacus([Mechanism(nm, q, steps_done[site])], p.delta, p.accountant)
        out["sites"][site] = {**metrics, "epsilon": eps, "noise_multiplier": nm, "n_train": data[site].n_train}
        weighted += metrics.get(task.primary_metric, float("nan")) * data[site].n_val
        total += data[site].n_val
    out[task.primary_metric] = weighted / max(1, total)
    return out
