"""Federated and pooled training by hand, for the benchmarks (one process, no Flower).

Federated: every round each site starts from the global weights and trains with the local trainer
(shared.training.dp_trainer.train_model, DP-SGD at the noise multiplier planned once per site for
the whole run with shared.privacy.planner.plan_noise_multiplier, or without DP at epsilon = inf);
the center averages the weights by training-set size (FedAvg), optionally followed by a server optimiser
step (server/server_optimizer.py: FedAvgM, FedAdam, FedYogi, as the Flower strategy does it). An optional `transfer` function is
applied to each site's weights before averaging and to the averaged weights (upload and download,
e.g. a float16 round trip).
Pooled: one model trained without DP on all sites' training data together for the same number of
epochs (rounds x local epochs), with the same optimiser, learning rate and batch size.
Both are scored on the union of the sites' validation splits.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

from server.server_optimizer import ServerOptimizer
from shared import metrics as m
from shared.config import RunConfig
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.planner import plan_noise_multiplier
from shared.tasks.registry import build_task
from shared.training.dp_trainer import TrainSettings, sample_rate_for, steps_per_epoch, train_model

Batch = Sequence[torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
StateDict = dict[str, torch.Tensor]
_plan = functools.cache(plan_noise_multiplier)  # the accountant is slow; epsilons repeat across seeds


@dataclass
class TrainPlan:
    rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adamw"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    delta: float = 1e-5


@dataclass
class Workload:
    name: str
    data: str  # "synthetic" or "real"
    sites: dict[str, tuple[Dataset, Dataset]]  # site -> (train, validation)
    build_model: Callable[[], nn.Module]
    forward: Callable[[nn.Module, Batch], torch.Tensor]
    targets: Callable[[Batch], torch.Tensor]
    site_loss: dict[str, LossFn]  # a site's loss may hold site state (e.g. its class weights)
    metric: str  # auroc | accuracy | kappa | c_index
    plan: TrainPlan
    note: str = ""

    @property
    def n_train(self) -> dict[str, int]:
        return {s: len(train) for s, (train, _) in self.sites.items()}  # type: ignore[arg-type]


@dataclass
class FederatedRun:
    model: nn.Module
    noise_multiplier: dict[str, float | None]
    epsilon: dict[str, float]  # spent per site (inf without DP)
    seconds_per_round: list[float] = field(default_factory=list)


def score(metric: str, targets: np.ndarray, outputs: np.ndarray) -> float:
    """AUROC of logits, accuracy at logit 0, Cohen's kappa of the argmax class, or Harrell's C-index of risks."""
    if metric == "auroc":
        return m.auroc(targets, outputs)
    if metric == "accuracy":  # at probability 0.5 (logit 0), as FLamby scores Fed-Heart-Disease
        return float(np.mean((np.asarray(outputs).reshape(-1) > 0) == (np.asarray(targets).reshape(-1) > 0.5)))
    if metric == "kappa":
        return m.cohen_kappa(targets, outputs.argmax(axis=1))
    if metric == "c_index":
        return m.c_index(targets[:, 0], targets[:, 1], outputs)
    raise ValueError(f"unknown metric {metric!r}")


def evaluate(wl: Workload, model: nn.Module) -> float:
    """`wl.metric` of `model` on all sites' validation rows together; NaN when undefined."""
    model.eval()
    outs, targets = [], []
    with torch.inference_mode():
        for batch in DataLoader(ConcatDataset([val for _, val in wl.sites.values()]), batch_size=512):
            outs.append(wl.forward(model, batch).float())
            targets.append(wl.targets(batch))
    try:
        return score(wl.metric, torch.cat(targets).numpy(), torch.cat(outs).numpy())
    except ValueError:
        return float("nan")


def _settings(plan: TrainPlan, epochs: int, noise: float | None, seed: int) -> TrainSettings:
    return TrainSettings(
        epochs=epochs, expected_batch_size=plan.batch_size, lr=plan.lr, weight_decay=plan.weight_decay,
        optimizer=plan.optimizer, noise_multiplier=noise, max_grad_norm=plan.max_grad_norm, grad_sample_mode="auto",
        seed=seed,
    )


def plan_noise(wl: Workload, epsilon: float) -> dict[str, float | None]:
    """Per site: the noise multiplier that spends `epsilon` over the whole run (None for inf)."""
    p = wl.plan
    if math.isinf(epsilon):
        return dict.fromkeys(wl.sites)
    out: dict[str, float | None] = {}
    for site, n in wl.n_train.items():
        steps = p.local_epochs * steps_per_epoch(n, p.batch_size) * p.rounds
        out[site] = _plan(epsilon, p.delta, sample_rate_for(n, p.batch_size), steps)
    return out


def fedavg(states: list[StateDict], weights: list[float]) -> StateDict:
    share = np.asarray(weights, dtype=float) / sum(weights)
    return {k: sum(float(w) * s[k].float() for w, s in zip(share, states)).to(states[0][k].dtype) for k in states[0]}


def train_federated(
    wl: Workload, epsilon: float, seed: int, transfer: Callable[[StateDict], StateDict] | None = None,
    server: ServerOptimizer | None = None,
) -> FederatedRun:
    """`server`: the center's optimiser applied to the weighted mean (server/server_optimizer.py); None = FedAvg."""
    p = wl.plan
    noise = plan_noise(wl, epsilon)
    torch.manual_seed(seed)
    global_model = wl.build_model()
    mechanisms: dict[str, list[Mechanism]] = {s: [] for s in wl.sites}
    seconds = []
    for server_round in range(1, p.rounds + 1):
        started = time.perf_counter()
        states, weights = [], []
        for k, (site, (train, _)) in enumerate(wl.sites.items()):
            model = wl.build_model()
            model.load_state_dict(global_model.state_dict())
            settings = _settings(p, p.local_epochs, noise[site], seed * 1000 + server_round * 50 + k)
            result = train_model(model, train, wl.site_loss[site], settings)
            if noise[site] is not None:
                mechanisms[site].append(Mechanism(noise[site], result.sample_rate, result.steps))
            state = {key: v.detach().clone() for key, v in model.state_dict().items()}
            states.append(transfer(state) if transfer else state)
            weights.append(result.num_examples)
        averaged = fedavg(states, weights)
        if server is not None:
            current = {k: v.numpy() for k, v in global_model.state_dict().items()}
            averaged = {k: torch.from_numpy(np.asarray(v)) for k, v in server.step(current, {
                k: v.numpy() for k, v in averaged.items()}).items()}
        global_model.load_state_dict(transfer(averaged) if transfer else averaged)  # the next round's download
        seconds.append(time.perf_counter() - started)
    spent = {s: epsilon_opacus(mech, p.delta, "rdp") if mech else math.inf for s, mech in mechanisms.items()}
    return FederatedRun(global_model, noise, spent, seconds)


def train_pooled(wl: Workload, seed: int) -> nn.Module:
    """Non-DP training on all sites' training rows, rounds x local_epochs epochs."""
    p = wl.plan
    torch.manual_seed(seed)
    model = wl.build_model()
    pooled = ConcatDataset([train for train, _ in wl.sites.values()])
    loss = next(iter(wl.site_loss.values()))
    train_model(model, pooled, loss, _settings(p, p.rounds * p.local_epochs, None, seed * 1000))
    return model


# ---------------------------------------------------------------- workloads built from a task config


def task_workload(name: str, data: str, cfg: RunConfig, state_root: Path, metric: str, note: str = "") -> Workload:
    """Sites prepared by the task itself (synthesised when the data root holds none): its model,
    forward, targets and each site's own loss; training settings from the config."""
    task = build_task(cfg)
    root = Path(cfg.data.root)
    if not all((root / s).is_dir() for s in cfg.data.sites):
        task.synthesize(root, list(cfg.data.sites), cfg.seed)
    sites, losses = {}, {}
    for site in cfg.data.sites:
        site_task = build_task(cfg)  # one per site: site state (e.g. its class weights) stays local
        prepared = site_task.prepare_site(root / site, site, state_root / site)
        sites[site], losses[site] = (prepared.train, prepared.val), site_task.loss
    t, pr = cfg.train, cfg.privacy
    plan = TrainPlan(t.rounds, t.local_epochs, t.batch_size, t.lr, t.optimizer, pr.max_grad_norm, t.weight_decay, pr.delta)
    return Workload(name, data, sites, task.build_model, task.forward, task.targets, losses, metric, plan, note)


def tensor_workload(
    name: str,
    data: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    build_model: Callable[[], nn.Module],
    loss: LossFn,
    metric: str,
    plan: TrainPlan,
    note: str = "",
) -> Workload:
    """Sites from arrays (x_train, y_train, x_val, y_val); the model takes x alone."""
    def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    sites = {site: (tensors(xt, yt), tensors(xv, yv)) for site, (xt, yt, xv, yv) in splits.items()}
    return Workload(
        name, data, sites, build_model, lambda model, batch: model(batch[0]), lambda batch: batch[-1],
        dict.fromkeys(sites, loss), metric, plan, note,
    )
