"""What a hospital does each round, without Flower: load its own data once, plan its noise once,
check its budget, train with DP-SGD, append to its privacy ledger, evaluate locally.

Only `RoundOutcome.arrays` (model weights) and whitelisted aggregate scalars leave this module
towards the server; data, encoders, embeddings and the ledger stay in `state_dir`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from shared.config import RunConfig
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.keys import generate_site_key, load_private_key
from shared.privacy.ledger import SiteLedger
from shared.privacy.planner import BudgetTooSmall, fits_budget, plan_noise_multiplier
from shared.tasks.base import SiteData, Task
from shared.tasks.registry import build_task
from shared.training.devices import autocast_for, resolve_device
from shared.training.dp_trainer import TrainSettings, sample_rate_for, steps_per_epoch, train_model

LEDGER_FILE = "privacy_ledger.jsonl"


@dataclass
class SiteSettings:
    """The hospital's own settings (site.yaml in deployment; derived from the run in simulation)."""

    site: str
    data_dir: Path
    state_dir: Path
    lifetime_epsilon: float | None = None  # None = the run's target for this site
    signing_key: Path | None = None  # None = a key kept in state_dir/keys (created on first use)
    device: str | None = None  # the hospital's setting wins over the run config's
    precision: str | None = None
    source: str = "<site settings>"


@dataclass
class RoundOutcome:
    status: str  # "trained" | "budget_exhausted" | "refused"
    reason: str = ""
    arrays: dict[str, torch.Tensor] | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class NoisePlan:
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    composed_target: float  # epsilon the lifetime history may reach at the end of this run


class SiteWorker:
    def __init__(self, cfg: RunConfig, settings: SiteSettings, run_id: str) -> None:
        self.cfg, self.settings, self.run_id = cfg, settings, run_id
        self.task: Task = build_task(cfg)
        self.device = resolve_device(
            settings.device or cfg.device, settings.source if settings.device else cfg.source, "device"
        )
        self.precision = settings.precision or cfg.precision
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = SiteLedger(settings.state_dir / LEDGER_FILE, settings.site, self._signing_key())
        self._data: SiteData | None = None
        self._plan: NoisePlan | None = None

    # -- set-up ---------------------------------------------------------------------------
    def _signing_key(self) -> Any:
        path = self.settings.signing_key
        if path is None:
            path = self.settings.state_dir / "keys" / f"{self.settings.site}.key"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                generate_site_key(path, path.with_suffix(".pub"))
        return load_private_key(path)

    @property
    def data(self) -> SiteData:
        if self._data is None:
            self._data = self.task.prepare_site(self.settings.data_dir, self.settings.site, self.settings.state_dir)
        return self._data

    @property
    def lifetime_epsilon(self) -> float:
        if self.settings.lifetime_epsilon is not None:
            return self.settings.lifetime_epsilon
        return self.cfg.site_target_epsilon(self.settings.site)

    def _prior(self) -> list[Mechanism]:
        """Mechanisms of earlier runs on this ledger (the lifetime history)."""
        return [
            Mechanism(**e["mechanism"])
            for e in self.ledger.entries()
            if e["status"] == "trained" and e["run_id"] != self.run_id
        ]

    def plan(self) -> NoisePlan:
        """Planned once per run from the target and the whole run's steps; persisted so every
        round (and a restarted client) uses the same noise."""
        if self._plan is not None:
            return self._plan
        path = self.settings.state_dir / "plans" / f"{self.run_id}.json"
        if path.is_file():
            self._plan = NoisePlan(**json.loads(path.read_text()))
            return self._plan
        n, t, p = self.data.n_train, self.cfg.train, self.cfg.privacy
        q = sample_rate_for(n, t.batch_size)
        steps_round = t.local_epochs * steps_per_epoch(n, t.batch_size)
        prior = self._prior()
        spent = epsilon_opacus(prior, p.delta, p.accountant)
        composed_target = min(self.lifetime_epsilon, spent + self.cfg.site_target_epsilon(self.settings.site))
        nm = plan_noise_multiplier(
            composed_target, p.delta, q, steps_round * t.rounds, prior=prior,
            accountant=p.accountant, max_noise_multiplier=p.max_noise_multiplier,
        )  # raises BudgetTooSmall
        self._plan = NoisePlan(nm, q, steps_round, composed_target)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._plan.__dict__))
        os.replace(tmp, path)
        return self._plan

    # -- rounds ---------------------------------------------------------------------------
    def _load_global(self, global_state: dict[str, torch.Tensor]) -> torch.nn.Module:
        model = self.task.build_model()
        model.load_state_dict(global_state)
        return model

    def _refuse_for_budget(self, server_round: int, reason: str) -> RoundOutcome:
        p = self.cfg.privacy
        self.ledger.append(
            run_id=self.run_id, round=server_round, status="budget_exhausted", mechanism=None,
            delta=p.delta, max_grad_norm=p.max_grad_norm, accountant=p.accountant,
            cumulative_epsilon=self.ledger.spent_epsilon(), lifetime_epsilon=self.lifetime_epsilon,
            extra={"reason": reason},
        )
        return RoundOutcome(
            "budget_exhausted", reason,
            metrics={"budget_exhausted": 1, "epsilon": self.ledger.spent_epsilon(), "delta": p.delta},
        )

    def train_round(self, server_round: int, global_state: dict[str, torch.Tensor], proximal_mu: float = 0.0) -> RoundOutcome:
        p, t = self.cfg.privacy, self.cfg.train
        if self.data.n_train == 0:
            return RoundOutcome("refused", "no training data at this site")
        try:
            plan = self.plan()
        except BudgetTooSmall as err:
            return self._refuse_for_budget(server_round, str(err))
        history = [Mechanism(**e["mechanism"]) for e in self.ledger.entries() if e["status"] == "trained"]
        this_round = Mechanism(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
        ok, eps_after = fits_budget(history, this_round, p.delta, plan.composed_target, p.accountant)
        if not ok:
            return self._refuse_for_budget(
                server_round, f"round would reach epsilon {eps_after:.3f} > budget {plan.composed_target:.3f}"
            )
        model = self._load_global(global_state)
        settings = TrainSettings(
            epochs=t.local_epochs, expected_batch_size=t.batch_size, max_physical_batch_size=t.max_physical_batch_size,
            lr=t.lr, weight_decay=t.weight_decay, optimizer=t.optimizer, noise_multiplier=plan.noise_multiplier,
            max_grad_norm=p.max_grad_norm, grad_sample_mode=p.grad_sample_mode, device=str(self.device),
            precision=self.precision, proximal_mu=proximal_mu, seed=self.cfg.seed * 1000 + server_round,
        )
        result = train_model(model, self.data.train, self.task.loss, settings)
        done = Mechanism(plan.noise_multiplier, plan.sample_rate, result.steps)
        eps = epsilon_opacus(history + [done], p.delta, p.accountant)
        self.ledger.append(
            run_id=self.run_id, round=server_round, status="trained", mechanism=done, delta=p.delta,
            max_grad_norm=p.max_grad_norm, accountant=p.accountant, cumulative_epsilon=eps,
            lifetime_epsilon=self.lifetime_epsilon,
            extra={
                "expected_batch_size": t.batch_size, "max_physical_batch_size": t.max_physical_batch_size or 0,
                "num_examples": result.num_examples, "precision": self.precision,
                "planned_epsilon": plan.composed_target, "grad_sample_mode": result.grad_sample_mode,
            },
        )
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        return RoundOutcome(
            "trained",
            arrays=state,
            metrics={
                "num-examples": result.num_examples, "train_loss": result.mean_loss, "epsilon": eps,
                "delta": p.delta, "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
                "steps": result.steps,
            },
        )

    def predict(self, model: torch.nn.Module, dataset: Any) -> tuple[np.ndarray, np.ndarray, float]:
        """Targets, outputs and mean loss of `model` over `dataset`, at the site."""
        model = model.to(self.device).eval()
        outs, targets, loss_sum = [], [], 0.0
        with torch.inference_mode(), autocast_for(self.precision, self.device):
            for batch in DataLoader(dataset, batch_size=256):
                batch = [b.to(self.device) for b in batch]
                outs.append(self.task.forward(model, batch).float().cpu())
                targets.append(self.task.targets(batch).cpu())
                loss_sum += float(self.task.loss(model, batch)) * len(batch[0])
        n = sum(len(t) for t in targets)
        return torch.cat(targets).numpy(), torch.cat(outs).numpy(), loss_sum / max(1, n)

    def evaluate(self, global_state: dict[str, torch.Tensor]) -> dict[str, float]:
        y, out, loss = self.predict(self._load_global(global_state), self.data.val)
        return {"num-examples": int(len(y)), "val_loss": loss, **self.task.metrics(y, out)}
