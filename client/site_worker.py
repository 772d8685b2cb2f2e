"""What a hospital does each round, without Flower: load its own data once, plan its noise once,
check its budget, train with DP-SGD, append to its privacy ledger, evaluate locally.

Privacy at the site (README "Auditing privacy"):
- check -> train -> append runs under the ledger's exclusive lock (one budget, one writer);
- the run's sample rate, steps and noise are planned from the site's released noisy count (its FedAvg weight,
  a DP release drawn first), never from the exact size: q = 1 / ceil(count / B), and the noisy sum's divisor
  is count x q. So the epsilon and noise multiplier a reply carries and the update's noise scale are
  post-processing of a DP release. Poisson sampling at rate q is private for any number of rows, so a change
  in the data between rounds changes no mechanism; the ledger records the rate that ran and the rows it ran on;
- DP randomness comes from generators seeded per round from the OS CSPRNG (shared.training.dp_rng),
  unless the run sets the recorded `privacy.reproducible_noise` switch;
- `privacy.enabled: false` (or a target epsilon of .inf) really trains without DP and the ledger says
  "no_dp"; that is the one way to train without DP (tests/client/test_no_dp_switch.py keeps it so).

Only `RoundOutcome.arrays` (model weights) and whitelisted aggregate scalars leave this module
towards the server; data, encoders, embeddings and the ledger stay in `state_dir`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from client.site_data_cache import cached_site_data
from shared import timings
from shared.config import PRETRAIN_PHASE, TRAIN_PHASE, RunConfig
from shared.io import atomic_file, write_bytes
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.dp_evaluation import (
    BINARY_SENSITIVITY,
    EXACT_MARKER,
    confusion_counts,
    release_binary,
    release_confusion,
    secure_rng,
)
from shared.privacy.keys import generate_site_key, load_private_key
from shared.privacy.ledger import COUNT_PHASE, LEDGER_FILE, NO_DP, SiteLedger
from shared.privacy.planner import BudgetTooSmall, fits_budget, plan_noise_multiplier
from shared.privacy.roster import load_roster
from shared.privacy.secagg_params import SecAggParameters, derive_secagg_parameters
from shared.privacy.security_log import SECURITY_LOG_FILE, SecurityLog
from shared.privacy.site_policy import (
    SitePolicy,
    approval_for,
    config_violations,
    load_site_policy,
    noise_violation,
    run_hash,
)
from shared.tasks.base import SiteData, Task
from shared.tasks.registry import build_task
from shared.training.devices import autocast_for, resolve_device
from shared.training.dp_trainer import TrainSettings, steps_per_epoch, train_model

EXPLANATIONS_DIR = "explanations"
# the updates last sent per run (updates/<run>/round_NNNN.pt), to answer a repeated round without training again.
# Two: a deployed center sends round r+1's training with round r's evaluation (server/strategy.py); if it resumes
# from an older checkpoint than round r's (round r's did not load), it repeats round r, which this site answered
# before its round r+1.
UPDATES_DIR, KEPT_UPDATES = "updates", 2
REPORTS_DIR = "reports"  # site-only evaluation reports (Task.site_report)
RELEASES_DIR = "releases"  # the DP evaluation releases sent per run and round, to answer a repeated request
EVALUATE_PHASE = "evaluate"  # extra.phase of a ledger entry recording a DP evaluation release
RELEASE_PHASES = (EVALUATE_PHASE, COUNT_PHASE)  # ledger entries of a release, not of a training round


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
    policy: Path | None = None  # the site policy YAML; None = no policy (simulation: the simulated run is approved)
    deployment: bool = False  # from a site.yaml: without a policy nothing is approved (reason no_policy)
    source: str = "<site settings>"
    delta: float | None = None  # the largest delta the site accepts; a run asking more is refused
    roster: Path | None = None  # the federation roster (shared/privacy/roster.py); None in simulation


@dataclass
class RoundOutcome:
    status: str  # "trained" | "budget_exhausted" | "refused" | "evaluated"
    reason: str = ""  # a code from shared.privacy.reason_codes: what the center is told
    arrays: dict[str, torch.Tensor] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    detail: str = ""  # what happened, in words: the site's security log only, never sent


@dataclass(frozen=True)
class Refusal:
    code: str  # sent (shared.privacy.reason_codes)
    detail: str = ""  # kept in the site's security log


class SiteDataError(Exception):
    """The site's data could not be loaded: the center is told `data_error`, the message stays here."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass
class NoisePlan:
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    composed_target: float  # epsilon the lifetime history may reach at the end of this run
    pretrain_steps_per_round: int = 0  # steps of a pretraining-phase round (config `pretrain:`)
    planned_size: int = -1  # the released noisy count q and steps come from (never the exact training size)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class SiteWorker:
    def __init__(self, cfg: RunConfig, settings: SiteSettings, run_id: str) -> None:
        self.cfg, self.settings, self.run_id = cfg, settings, run_id
        self.task: Task = build_task(cfg)
        self.device = resolve_device(
            settings.device or cfg.device, settings.source if settings.device else cfg.source, "device"
        )
        self.precision = settings.precision or cfg.precision
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        key = self._signing_key()
        self.ledger = SiteLedger(settings.state_dir / LEDGER_FILE, settings.site, key)
        self.security_log = SecurityLog(settings.state_dir / SECURITY_LOG_FILE, settings.site, key)
        self.run_hash = run_hash(cfg)
        self._data: SiteData | None = None
        self._plan: NoisePlan | None = None
        self._approval_logged = False
        self.secagg: SecAggParameters | None = derive_secagg_parameters(cfg) if cfg.secure_aggregation.enabled else None

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
        """The site's data, loaded once; any failure (an InputError naming a file and a cell, or anything
        unexpected) becomes a SiteDataError whose message stays at the site."""
        if self._data is None:
            try:
                self._data = cached_site_data(  # built once per site and data, whichever process asks first
                    lambda: self.task.prepare_site(self.settings.data_dir, self.settings.site, self.settings.state_dir),
                    self.settings.state_dir, self.settings.data_dir, self.run_hash,
                )
            except Exception as err:
                raise SiteDataError(f"{type(err).__name__}: {err}") from err
        return self._data

    @property
    def dp_enabled(self) -> bool:
        """False only through the documented config switch: privacy.enabled false or a target of .inf."""
        return self.cfg.dp_enabled(self.settings.site)

    @property
    def policy(self) -> SitePolicy | None:
        """The site policy in force, re-read for every message (an operator may revoke an approval)."""
        return load_site_policy(self.settings.policy) if self.settings.policy is not None else None

    @property
    def lifetime_epsilon(self) -> float:
        base = self.settings.lifetime_epsilon
        if base is None:
            base = self.cfg.site_target_epsilon(self.settings.site)
        policy = self.policy
        return base if policy is None else min(base, policy.privacy.max_lifetime_epsilon)

    # -- the site policy ------------------------------------------------------------------
    def policy_refusal(self) -> Refusal | None:
        """Why the site policy refuses this run (None: approved, or simulation without a policy), as a code
        for the center and a detail for the security log.

        `no_policy`: a deployed site without a policy approves nothing. `not_approved`: the run hash
        (config + installed code) is not under approved_runs with this site's roster digest.
        `policy_refused`: the config weakens the privacy floor or breaks a limit, or the planned noise
        multiplier is below the floor. The first approval is logged."""
        policy = self.policy
        if policy is None:
            if self.settings.deployment:
                return Refusal("no_policy", "no site policy configured (site.yaml policy:)")
            return None
        roster = load_roster(self.settings.roster).digest() if self.settings.roster is not None else None
        problems = config_violations(policy, self.cfg, self.settings.site)
        code = "policy_refused"
        if approval_for(policy, self.run_hash, roster) is None:
            problems.insert(0, f"run {self.run_hash[:16]} not approved" + (" with this roster" if self.run_hash in
                                                                          policy.approved_hashes() else ""))
            code = "not_approved"
        if not problems:
            try:
                violation = noise_violation(policy, self.plan().noise_multiplier)
            except BudgetTooSmall:
                violation = None  # the budget check refuses it as budget_exhausted
            problems += [violation] if violation else []
        if problems:
            return Refusal(code, "site policy refuses: " + "; ".join(problems))
        if not self._approval_logged:
            # once per run and site on disk: simulation may serve one site from several worker processes
            logged = any(e.get("kind") == "policy_approved" and e.get("run_id") == self.run_id
                         and e.get("run_hash") == self.run_hash for e in self.security_log.events())
            if not logged:
                self.security_log.append({"kind": "policy_approved", "run_id": self.run_id, "run_hash": self.run_hash,
                                          "policy": str(self.settings.policy), "roster": roster})
            self._approval_logged = True
        return None

    def refuse(self, phase: str, server_round: int | None, refusal: Refusal) -> RoundOutcome:
        """Log the refusal (code and detail) and return the reply's outcome: {"refused": 1}, the code, no arrays."""
        self.security_log.append({"kind": "refused", "run_id": self.run_id, "run_hash": self.run_hash, "phase": phase,
                                  "round": server_round, "reason": refusal.code, "detail": refusal.detail})
        return RoundOutcome("refused", refusal.code, metrics={"refused": 1}, detail=refusal.detail)

    def _declined(self, server_round: int, outcome: RoundOutcome) -> RoundOutcome:
        """A round this site does not train, for a reason of its own: the detail goes to its security log."""
        self.security_log.append({"kind": "declined", "run_id": self.run_id, "round": server_round,
                                  "status": outcome.status, "reason": outcome.reason, "detail": outcome.detail})
        return outcome

    def _prior(self) -> list[Mechanism]:
        """Mechanisms of earlier runs on this ledger (the lifetime history)."""
        return [
            Mechanism(**e["mechanism"])
            for e in self.ledger.entries()
            if e["status"] == "trained" and e["run_id"] != self.run_id
        ]

    def plan(self, server_round: int | None = None) -> NoisePlan:
        """Planned once per run from the target, the whole run's steps and the released noisy count (drawn
        here first when the run has none yet, in ledger round `server_round`, else 1); persisted so every
        round (and a restarted client) uses the same noise. Raises BudgetTooSmall."""
        if self._plan is not None:
            return self._plan
        with self.ledger.lock():  # one process plans, the others (Ray actors, ClientApp processes) read its plan
            return self._load_or_make_plan(server_round or 1)

    def _saved_plan(self) -> NoisePlan | None:
        """The run's plan when it was made (here or by another process of this site), else None."""
        path = self._plan_path()
        if self._plan is None and path.is_file():
            self._plan = NoisePlan(**json.loads(path.read_text()))
        return self._plan

    def composed_target(self) -> float:
        """The epsilon this run may bring the lifetime history to: the plan's once made; before it (an
        evaluation ahead of any training) the same formula over what earlier runs spent."""
        plan = self._saved_plan()
        if plan is not None:
            return plan.composed_target
        p = self.cfg.privacy
        spent = epsilon_opacus(self._prior(), p.delta, p.accountant)
        return min(self.lifetime_epsilon, spent + self.cfg.site_target_epsilon(self.settings.site))

    def _load_or_make_plan(self, server_round: int) -> NoisePlan:
        saved = self._saved_plan()
        if saved is not None:
            return saved
        t, p = self.cfg.train, self.cfg.privacy
        prior = self._prior()
        composed_target = self.composed_target()
        count = self._released_count(server_round, composed_target)  # raises BudgetTooSmall
        per_epoch = steps_per_epoch(count, t.batch_size)
        steps_round = t.local_epochs * per_epoch
        # both phases share the sample rate and the noise: one mechanism over all the run's steps
        pretrain_round = self.cfg.pretrain.local_epochs * per_epoch if self.cfg.pretrain.enabled else 0
        run_steps = steps_round * t.rounds + pretrain_round * self.cfg.pretrain_rounds
        nm = plan_noise_multiplier(  # the count is in the ledger; the DP evaluation releases share the one target
            composed_target, p.delta, 1.0 / per_epoch, run_steps,
            prior=prior + self._run_releases(COUNT_PHASE) + self.planned_evaluation(),
            accountant=p.accountant, max_noise_multiplier=p.max_noise_multiplier,
        )  # raises BudgetTooSmall
        self._save_plan(NoisePlan(nm, 1.0 / per_epoch, steps_round, composed_target, pretrain_round, count))
        return self._plan

    def _plan_path(self) -> Path:
        return self.settings.state_dir / "plans" / f"{self.run_id}.json"

    def _save_plan(self, plan: NoisePlan) -> None:
        self._plan = plan
        write_bytes(self._plan_path(), json.dumps(plan.__dict__).encode(), 0o600)

    # -- rounds ---------------------------------------------------------------------------
    def _load_global(self, global_state: dict[str, torch.Tensor], phase: str = TRAIN_PHASE) -> torch.nn.Module:
        model = self.task.build_pretrain_model() if phase == PRETRAIN_PHASE else self.task.build_model()
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
            "budget_exhausted", "budget_exhausted",
            metrics={"budget_exhausted": 1, "epsilon": self.ledger.spent_epsilon(), "delta": p.delta}, detail=reason,
        )

    def _round_seed(self, server_round: int) -> int:
        """Distinct per run seed, site and round: the seed of torch's global generator (dropout,
        initialisation), and of the DP randomness only under privacy.reproducible_noise. The center
        knows it: secret DP randomness never derives from it (shared.training.dp_rng)."""
        return self.cfg.seed * 1_000_003 + zlib.crc32(self.settings.site.encode()) % 100_000 * 1000 + server_round

    # -- a round asked again (the center resumed, a reply was lost) ------------------------
    def _ledger_entry(self, server_round: int, phase: str = TRAIN_PHASE) -> dict[str, Any] | None:
        """This run's ledger entry of `server_round`: its training (any phase but a release's) or its release."""
        def kind(p: str | None) -> str | None:
            return p if p in RELEASE_PHASES else None
        return next((e for e in self.ledger.entries() if e["run_id"] == self.run_id and e["round"] == server_round
                     and kind((e.get("extra") or {}).get("phase")) == kind(phase)), None)

    def _update_path(self, server_round: int) -> Path:
        return self.settings.state_dir / UPDATES_DIR / self.run_id / f"round_{server_round:04d}.pt"

    def _save_update(self, server_round: int, global_digest: str, outcome: RoundOutcome) -> None:
        path = self._update_path(server_round)
        with timings.part("checkpoint"):
            with atomic_file(path, 0o600) as handle:
                torch.save({"round": server_round, "global_sha256": global_digest, "state_dict": outcome.arrays,
                            "metrics": outcome.metrics}, handle)
            for older in sorted(path.parent.glob("round_*.pt"))[:-KEPT_UPDATES]:
                older.unlink(missing_ok=True)

    def _repeat_round(self, server_round: int, entry: dict[str, Any], global_digest: str) -> RoundOutcome:
        """The ledger already holds this (run, round): never train or spend budget twice. Send the
        same update again (re-sending a released DP result costs no privacy) when the global model
        is the one it was trained from; otherwise refuse."""
        if entry["status"] not in ("trained", NO_DP):
            detail = str((entry.get("extra") or {}).get("reason", "round already answered"))
            metrics = {"epsilon": self.ledger.spent_epsilon(), "delta": self.cfg.privacy.delta}
            if entry["status"] == "budget_exhausted":
                metrics["budget_exhausted"] = 1
                return RoundOutcome("budget_exhausted", "budget_exhausted", metrics=metrics, detail=detail)
            return RoundOutcome("refused", "round_conflict", metrics=metrics, detail=detail)
        path = self._update_path(server_round)
        saved = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
        if saved is None or saved["round"] != server_round or saved["global_sha256"] != global_digest:
            why = "from another global model" if saved is not None else f"(only the last {KEPT_UPDATES} updates are kept)"
            return self._declined(server_round, RoundOutcome(
                "refused", "round_conflict", detail=f"round {server_round} of this run was already trained here {why}"))
        return RoundOutcome("trained", arrays=saved["state_dict"], metrics=saved["metrics"])

    def _trained_history(self) -> list[Mechanism]:
        return [Mechanism(**e["mechanism"]) for e in self.ledger.entries() if e["status"] == "trained"]

    def round_refusal(self, server_round: int, phase: str = TRAIN_PHASE) -> RoundOutcome | None:
        """What to send instead of weights when this round cannot be trained (recorded in the ledger when it
        is the budget or a data change); None when the round fits or was already answered (train_round repeats
        it). Holds the ledger lock (train_round holds it on to the append)."""
        with self.ledger.lock():
            return self._round_refusal(server_round, phase)

    def _round_refusal(self, server_round: int, phase: str) -> RoundOutcome | None:
        p = self.cfg.privacy
        if self._ledger_entry(server_round) is not None:
            return None
        if phase not in (TRAIN_PHASE, PRETRAIN_PHASE) or (phase == PRETRAIN_PHASE and not self.cfg.pretrain.enabled):
            return self._declined(server_round, RoundOutcome(
                "refused", "phase_refused", detail=f"phase {phase!r} is not part of this run"))
        if self.settings.delta is not None and p.delta > self.settings.delta:
            return self._declined(server_round, RoundOutcome(
                "refused", "delta_refused",
                detail=f"the run's delta {p.delta:g} is above this site's delta {self.settings.delta:g}"))
        if self.data.n_train == 0:
            return self._declined(server_round, RoundOutcome(
                "refused", "no_training_data", detail="no training data at this site"))
        if not self.dp_enabled:
            return None  # no DP, no budget to check: the round is recorded as no_dp (site policies refuse it)
        if self.ledger.dp_off():
            return self._refuse_for_budget(
                server_round, "a round at this site was trained without DP: its lifetime epsilon is unbounded"
            )
        try:
            plan = self.plan(server_round)
        except BudgetTooSmall as err:
            return self._refuse_for_budget(server_round, str(err))
        round_steps = plan.pretrain_steps_per_round if phase == PRETRAIN_PHASE else plan.steps_per_round
        this_round = Mechanism(plan.noise_multiplier, plan.sample_rate, round_steps)
        ok, eps_after = fits_budget(self._trained_history(), this_round, p.delta, plan.composed_target, p.accountant)
        if not ok:
            return self._refuse_for_budget(
                server_round, f"round would reach epsilon {eps_after:.3f} > budget {plan.composed_target:.3f}"
            )
        return None

    def train_round(
        self, server_round: int, global_state: dict[str, torch.Tensor], proximal_mu: float = 0.0, phase: str = TRAIN_PHASE
    ) -> RoundOutcome:
        """One round of DP-SGD; `server_round` is the global round (pretraining rounds first). In the
        pretraining phase the contrastive model trains on the task's self-supervised loss, under the
        same noise plan and ledger."""
        with self.ledger.lock():  # check -> train -> append: no other run at this site spends meanwhile
            return self._train_round(server_round, global_state, proximal_mu, phase)

    def _train_round(
        self, server_round: int, global_state: dict[str, torch.Tensor], proximal_mu: float, phase: str
    ) -> RoundOutcome:
        p, t = self.cfg.privacy, self.cfg.train
        global_digest = state_digest(global_state)
        done_before = self._ledger_entry(server_round)
        if done_before is not None:
            return self._repeat_round(server_round, done_before, global_digest)
        refusal = self.round_refusal(server_round, phase)
        if refusal is not None:
            return refusal
        pretrain = phase == PRETRAIN_PHASE
        dp = self.dp_enabled
        plan = self.plan(server_round) if dp else None
        weight = plan.planned_size if plan is not None else None  # the run's released count (drawn with the plan)
        if weight is not None and self.secagg is not None:
            # post-processing: under SecAgg+ every weight obeys the run's bound, and the saved update says so
            weight = min(weight, int(self.secagg.max_weight))
        history = self._trained_history()
        model = self._load_global(global_state, phase)
        epochs = self.cfg.pretrain.local_epochs if pretrain else t.local_epochs
        settings = TrainSettings(
            epochs=epochs, expected_batch_size=t.batch_size, max_physical_batch_size=t.max_physical_batch_size,
            lr=(self.cfg.pretrain.lr or t.lr) if pretrain else t.lr, weight_decay=t.weight_decay, optimizer=t.optimizer,
            # the one DP-off path: the documented config switch (privacy.enabled false / target .inf)
            noise_multiplier=plan.noise_multiplier if plan is not None else None,
            max_grad_norm=p.max_grad_norm, grad_sample_mode=p.grad_sample_mode, device=str(self.device),
            precision=self.precision, proximal_mu=proximal_mu, seed=self._round_seed(server_round),
            # secret (OS CSPRNG) unless the run asks for reproducible noise, which the ledger records
            dp_seed=self._round_seed(server_round) if p.reproducible_noise else None,
            # the sample rate and the noisy mean's divisor from the released count, not the exact size
            planned_size=plan.planned_size if plan is not None else None,
        )
        result = train_model(model, self.data.train, self.task.pretrain_loss if pretrain else self.task.loss, settings)
        recorded = {
            "expected_batch_size": t.batch_size, "max_physical_batch_size": t.max_physical_batch_size or 0,
            "n_train": result.num_examples, "num_examples": result.num_examples, "epochs": epochs,
            "precision": self.precision, "grad_sample_mode": result.grad_sample_mode, "phase": phase,
            "reproducible_noise": bool(p.reproducible_noise),
        }
        arrays = {k: v.cpu() for k, v in model.state_dict().items()}
        if plan is None:
            outcome = RoundOutcome("trained", arrays=arrays, metrics={
                "num-examples": result.num_examples, "train_loss": result.mean_loss, "steps": result.steps,
            })
            self._save_update(server_round, global_digest, outcome)
            why = "privacy.enabled false" if not p.enabled else "target epsilon inf"
            self.ledger.append(
                run_id=self.run_id, round=server_round, status=NO_DP, mechanism=None, delta=p.delta,
                max_grad_norm=p.max_grad_norm, accountant=p.accountant, cumulative_epsilon=math.inf,
                lifetime_epsilon=self.lifetime_epsilon, extra={**recorded, "dp": "off", "why": why},
            )
            return outcome
        # what actually ran: the sample rate and steps of the data trained on (the accountant uses these)
        done = Mechanism(plan.noise_multiplier, result.sample_rate, result.steps)
        eps = epsilon_opacus(history + [done], p.delta, p.accountant)
        outcome = RoundOutcome(
            "trained",
            arrays=arrays,
            metrics={
                # no train_loss (an un-noised mean over the training data), no exact count, sample rate or steps
                # (they give the training size): the FedAvg weight is the run's noisy count (issue 17)
                "num-examples": weight, "epsilon": eps, "delta": p.delta, "noise_multiplier": plan.noise_multiplier,
            },
        )
        # update first, ledger second: a ledger entry always has its update to send again
        self._save_update(server_round, global_digest, outcome)
        self.ledger.append(
            run_id=self.run_id, round=server_round, status="trained", mechanism=done, delta=p.delta,
            max_grad_norm=p.max_grad_norm, accountant=p.accountant, cumulative_epsilon=eps,
            lifetime_epsilon=self.lifetime_epsilon,
            extra={**recorded, "planned_epsilon": plan.composed_target, "planned_size": plan.planned_size},
        )
        return outcome

    # -- the FedAvg weight: a noisy training count, released once per run ------------------------------------
    def _run_releases(self, phase: str) -> list[Mechanism]:
        """This run's release mechanisms of `phase` already in the ledger."""
        return [Mechanism(**e["mechanism"]) for e in self.ledger.entries() if e["run_id"] == self.run_id
                and e["status"] == "trained" and (e.get("extra") or {}).get("phase") == phase]

    def _count_entry(self) -> dict[str, Any] | None:
        return next((e for e in self.ledger.entries() if e["run_id"] == self.run_id
                     and (e.get("extra") or {}).get("phase") == COUNT_PHASE), None)

    def _released_count(self, server_round: int, composed_target: float) -> int:
        """The run's noisy training count: n_train + N(0, count_noise_multiplier^2) from the OS CSPRNG (the round
        seed under privacy.reproducible_noise), rounded, at least 1; drawn once, before the noise is planned (the
        plan derives the sample rate from it), and recorded in the ledger as a Gaussian mechanism of sensitivity 1.
        Every update of the run carries it as its FedAvg weight (post-processing, no further cost). Called under
        the ledger lock; raises BudgetTooSmall when the release does not fit the composed target."""
        entry = self._count_entry()
        if entry is not None:
            return int(entry["extra"]["released"])
        p = self.cfg.privacy
        mechanism = Mechanism(p.count_noise_multiplier, 1.0, 1)
        ok, eps_after = fits_budget(self._trained_history(), mechanism, p.delta, composed_target, p.accountant)
        if not ok:
            raise BudgetTooSmall(f"the count would reach epsilon {eps_after:.3f} > budget {composed_target:.3f}")
        rng = np.random.default_rng(self._round_seed(server_round)) if p.reproducible_noise else secure_rng()
        released = max(1, round(self.data.n_train + float(rng.normal(0.0, p.count_noise_multiplier))))
        self.ledger.append(
            run_id=self.run_id, round=server_round, status="trained", mechanism=mechanism, delta=p.delta,
            max_grad_norm=p.max_grad_norm, accountant=p.accountant,
            cumulative_epsilon=epsilon_opacus(self._trained_history() + [mechanism], p.delta, p.accountant),
            lifetime_epsilon=self.lifetime_epsilon,
            extra={"phase": COUNT_PHASE, "release": "training_count", "released": released, "l2_sensitivity": 1.0,
                   "neighbouring": "add/remove one record", "reproducible_noise": bool(p.reproducible_noise)},
        )
        return released

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

    # -- evaluation: noisy sufficient statistics, counted in the ledger (shared/privacy/dp_evaluation.py) ------
    @property
    def exact_metrics_allowed(self) -> bool:
        """The site policy lets this site send exact validation metrics (outside the DP guarantee)."""
        policy = self.policy
        return policy is not None and policy.release.exact_metrics

    def releases_evaluation(self) -> bool:
        """Whether this run's evaluations release DP statistics (binary or multiclass task, no exact metrics,
        a run with DP: a run without DP sends its exact metrics, marked outside the guarantee)."""
        return self.task.kind in ("binary", "multiclass") and not self.exact_metrics_allowed and self.dp_enabled

    def planned_evaluation(self, from_round: int = 1) -> list[Mechanism]:
        """The Gaussian mechanisms this run's evaluations will release (one per evaluated round >= from_round)."""
        if not self.releases_evaluation():
            return []
        noise = self.cfg.privacy.evaluation.noise_multiplier
        return [Mechanism(noise, 1.0, 1) for r in self.cfg.evaluation_rounds() if r >= from_round]

    def evaluate(
        self, global_state: dict[str, torch.Tensor], server_round: int | None = None, phase: str = TRAIN_PHASE
    ) -> dict[str, float]:
        """The whitelisted scalars `evaluate_round` releases (see there)."""
        return self.evaluate_round(global_state, server_round, phase).metrics

    def evaluate_round(
        self, global_state: dict[str, torch.Tensor], server_round: int | None = None, phase: str = TRAIN_PHASE
    ) -> RoundOutcome:
        """What the site releases about the global model on its validation split.

        By default (DP): a noisy score histogram per class (binary tasks) or a noisy confusion matrix
        (multiclass), one Gaussian mechanism recorded in the ledger (status trained, extra.phase "evaluate",
        Mechanism(noise_multiplier, 1.0, 1)) and planned with the training noise; the center derives the
        metrics. Rounds outside `privacy.evaluation.rounds`, survival tasks and the pretraining phase release
        nothing. With the site policy's `release.exact_metrics`: the exact metrics (and `exact_metrics: 1`),
        outside the guarantee. After the final round, with `explain.final_round`, the site also writes an
        explanation report into state_dir/explanations/ (nothing of it is returned)."""
        if phase == PRETRAIN_PHASE:
            if self.exact_metrics_allowed or not self.dp_enabled:
                return RoundOutcome("evaluated", metrics={**self.evaluate_pretraining(global_state), EXACT_MARKER: 1})
            return RoundOutcome("evaluated", metrics={})
        model = self._load_global(global_state)
        if self.exact_metrics_allowed or not self.dp_enabled:
            y, out, loss = self.predict(model, self.data.val)
            outcome = RoundOutcome("evaluated", metrics={"num-examples": int(len(y)), "val_loss": loss,
                                                         **self._metrics(y, out), EXACT_MARKER: 1})
        else:
            with self.ledger.lock():  # check -> release -> append: no other run at this site spends meanwhile
                outcome = self._private_evaluation(model, global_state, server_round)
        if self.cfg.explain.final_round and server_round == self.cfg.total_rounds:
            self.explain(model, f"{self.run_id}_round_{server_round:03d}")
        return outcome

    def _metrics(self, y: np.ndarray, out: np.ndarray) -> dict[str, float]:
        """The task's metrics; the site-only report files the task makes of them go to state_dir/reports/."""
        metrics = self.task.metrics(y, out)
        reports = self.task.site_report(y, out, metrics)
        if reports:
            from shared.plots import write_report_files  # matplotlib only for a task that has reports

            write_report_files(self.settings.state_dir / REPORTS_DIR, reports)
        return metrics

    def _release_path(self, server_round: int) -> Path:
        return self.settings.state_dir / RELEASES_DIR / self.run_id / f"round_{server_round:04d}.json"

    def _private_evaluation(
        self, model: torch.nn.Module, global_state: dict[str, torch.Tensor], server_round: int | None
    ) -> RoundOutcome:
        p, e = self.cfg.privacy, self.cfg.privacy.evaluation
        if server_round is None:  # an evaluation outside the federation's rounds: the next free round number
            done = [x["round"] for x in self.ledger.entries() if x["run_id"] == self.run_id
                    and (x.get("extra") or {}).get("phase") == EVALUATE_PHASE]
            server_round = max(done + [self.cfg.total_rounds]) + 1
        elif server_round not in self.cfg.evaluation_rounds():
            return RoundOutcome("evaluated", metrics={})  # privacy.evaluation.rounds: not released this round
        if not self.releases_evaluation():
            return RoundOutcome("evaluated", metrics={})  # survival: no DP validation metric
        digest = state_digest(global_state)
        path = self._release_path(server_round)
        if self._ledger_entry(server_round, EVALUATE_PHASE) is not None:
            saved = json.loads(path.read_text()) if path.is_file() else None
            if saved is not None and saved["global_sha256"] == digest:
                return RoundOutcome("evaluated", metrics=saved["metrics"])  # the same release again: no new cost
            return self._declined(server_round, RoundOutcome(
                "refused", "round_conflict", metrics={"refused": 1},
                detail=f"round {server_round} was already evaluated here on another global model"))
        if self.data.n_val == 0:
            return self._declined(server_round, RoundOutcome(
                "refused", "no_validation_data", metrics={"refused": 1}, detail="no validation data at this site"))
        mechanism = Mechanism(e.noise_multiplier, 1.0, 1)
        limit = self.composed_target()  # no plan needed: an evaluation ahead of training draws no count
        ok, eps_after = fits_budget(self._trained_history(), mechanism, p.delta, limit, p.accountant)
        if not ok:
            return self._declined(server_round, RoundOutcome(
                "refused", "budget_exhausted", metrics={"refused": 1},
                detail=f"evaluation would reach epsilon {eps_after:.3f} > budget {limit:.3f}"))
        y, out, _ = self.predict(model, self.data.val)
        if self.task.has_site_report:  # the report stays at the site (sleep tasks); nothing is sent
            self._metrics(y, out)  # others skip it: bootstrap CIs thrown away cost each site every round
        if self.task.kind == "binary":
            probs = 1.0 / (1.0 + np.exp(-np.asarray(out, dtype=float)))
            release = release_binary(y, probs, e.bins, e.noise_multiplier)
            kind, sensitivity = "binary_score_histograms", BINARY_SENSITIVITY
        else:
            n_classes = int(out.shape[-1])
            units = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1  # scored units (epochs) per record at most
            matrix = confusion_counts(y, np.asarray(out).argmax(-1), n_classes)  # labels outside 0..K-1: unscored
            release = release_confusion(matrix, units, e.noise_multiplier)
            kind, sensitivity = "confusion_matrix", float(units)
        metrics = {**release, "num-examples": float(max(0, round(sum(release.values()) / max(1.0, sensitivity))))}
        eps = epsilon_opacus(self._trained_history() + [mechanism], p.delta, p.accountant)
        # release first, ledger second: a ledger entry always has its release to send again
        write_bytes(path, json.dumps({"round": server_round, "global_sha256": digest, "metrics": metrics}).encode())
        self.ledger.append(
            run_id=self.run_id, round=server_round, status="trained", mechanism=mechanism, delta=p.delta,
            max_grad_norm=p.max_grad_norm, accountant=p.accountant, cumulative_epsilon=eps,
            lifetime_epsilon=self.lifetime_epsilon,
            extra={"phase": EVALUATE_PHASE, "release": kind, "bins": e.bins if kind.startswith("binary") else 0,
                   "l2_sensitivity": sensitivity, "neighbouring": "add/remove one record"},
        )
        return RoundOutcome("evaluated", metrics=metrics)

    def evaluate_pretraining(self, global_state: dict[str, torch.Tensor]) -> dict[str, float]:
        """num-examples and val_loss: the pretraining loss of the global contrastive model on the validation split."""
        model = self._load_global(global_state, PRETRAIN_PHASE).to(self.device).eval()
        val = self.data.val  # loaded outside inference mode: its tensors are trained on later
        loss_sum, n = 0.0, 0
        with torch.inference_mode(), autocast_for(self.precision, self.device):
            for batch in DataLoader(val, batch_size=64):
                batch = [b.to(self.device) for b in batch]
                loss_sum += float(self.task.pretrain_loss(model, batch)) * len(batch[0])
                n += len(batch[0])
        return {"num-examples": n, "val_loss": loss_sum / max(1, n)}

    def explain(self, model: torch.nn.Module, name: str) -> Path | None:
        """Write an explanation report of `model` on this site's data under state_dir/explanations/<name>/.

        An explanation failure must not cost the site its evaluation reply: it is logged and written
        to <name>/explanation_error.txt instead. Returns the report folder (None on failure)."""
        from shared.explain.registry import ExplainOptions, explain_site

        out_dir = self.settings.state_dir / EXPLANATIONS_DIR / name
        try:
            explain_site(
                self.task, model, self.settings.data_dir, self.settings.state_dir, out_dir,
                ExplainOptions(n_patients=self.cfg.explain.patients, device=str(self.device), seed=self.cfg.seed),
                source=f"run {self.run_id}, global model after round {name.rsplit('_', 1)[-1]}",
            )
        except Exception:  # any failure stays at the site, in its log
            message = traceback.format_exc()
            logging.getLogger(__name__).error("site %s: explanation failed:\n%s", self.settings.site, message)
            write_bytes(out_dir / "explanation_error.txt", message.encode(), 0o600)
            return None
        return out_dir
