"""A hospital's site policy: which runs may use its data and the privacy floor no run may weaken.

The policy is a YAML file the hospital owns (see README "For hospitals: what runs on your data"). A run is approved when its
*run hash* is listed under `approved_runs`. The run hash identifies what will execute at the site:

    SHA-256 of the canonical JSON {"config": <resolved run config>, "code": {<repo path>: <SHA-256 of file>}}

- "config" is `RunConfig.to_dict()` without the fields that only say where things are kept
  (HASH_EXCLUDED_CONFIG_FIELDS: output folder, data root, site state root, site policies), so the
  same run approved from the coordinator's YAML matches the run the server sends.
- "code" is the digest of the site's installed code (shared/privacy/code_bundle.py): every file of
  server/, client/ and shared/, `__init__.py` and `shared/errors.py` included, read from the packages
  the hospital installed, never from the bundle a run ships. Changing any file changes the hash.

An approval also pins the federation roster (shared/privacy/roster.py): a run is approved only while
the site's roster has the digest recorded with the approval (`approval_for`).

Independently of approval, every run must respect the privacy floor, the round limit and the
allowed tasks, models and strategies (`config_violations`, `noise_violation`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from shared.config_schema import STRATEGIES, RunConfig
from shared.errors import InputError
from shared.io import load_yaml, write_text
from shared.privacy.code_bundle import installed_digest
from shared.privacy.ledger import canonical_json

HASH_EXCLUDED_CONFIG_FIELDS = ("output_dir", "data.root", "federation.site_state_root", "federation.site_policies")
_TOP_KEYS = ("site", "allowed_tasks", "allowed_models", "allowed_strategies", "max_rounds", "privacy", "release",
             "approved_runs")
_HEX = set("0123456789abcdef")


@dataclass
class PrivacyFloor:
    """Strict defaults: DP always on, at most epsilon 8 per run and 16 over the site's lifetime."""

    max_epsilon_per_run: float = 8.0
    max_lifetime_epsilon: float = 16.0
    min_noise_multiplier: float = 0.5
    max_clip_norm: float = 1.0
    max_delta: float = 1.0e-5


@dataclass
class ReleasePolicy:
    """What the site may release outside the DP guarantee. Default: nothing; validation metrics leave the
    site only as noisy sufficient statistics (shared/privacy/dp_evaluation.py), counted in its ledger.
    `exact_metrics: true` sends the exact validation metrics instead (AUROC, AUPRC, Brier, ECE, threshold,
    calibration bins, CIs, val_loss, num-examples): the report marks them as outside the guarantee."""

    exact_metrics: bool = False


@dataclass
class SitePolicy:
    source: str
    site: str | None = None  # when set, the policy only applies to this site
    allowed_tasks: list[str] | None = None  # None = any task (approval still pins the exact run)
    allowed_models: list[str] | None = None
    allowed_strategies: list[str] = field(default_factory=lambda: ["fedavg", "fedprox"])
    max_rounds: int = 20
    privacy: PrivacyFloor = field(default_factory=PrivacyFloor)
    release: ReleasePolicy = field(default_factory=ReleasePolicy)
    approved_runs: list[dict[str, Any]] = field(default_factory=list)

    def approved_hashes(self) -> set[str]:
        return {str(run["hash"]) for run in self.approved_runs}

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "allowed_tasks": self.allowed_tasks,
            "allowed_models": self.allowed_models,
            "allowed_strategies": self.allowed_strategies,
            "max_rounds": self.max_rounds,
            "privacy": dict(self.privacy.__dict__),
            "release": dict(self.release.__dict__),
            "approved_runs": self.approved_runs,
        }


# -- loading ---------------------------------------------------------------------------------
def _names(raw: Any, source: str, where: str) -> list[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise InputError(source, where, "must be a list of names")
    return list(raw)


def _positive(raw: Any, source: str, where: str, integer: bool = False) -> float:
    ok_type = isinstance(raw, int) if integer else isinstance(raw, (int, float))
    if isinstance(raw, bool) or not ok_type or not math.isfinite(raw) or raw <= 0:
        raise InputError(source, where, f"must be a positive {'integer' if integer else 'number'}, got {raw!r}")
    return raw


def policy_from_dict(raw: Any, source: str) -> SitePolicy:
    """Validate a parsed policy; every problem raises InputError(source, field, problem)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InputError(source, None, "a site policy must be a mapping")
    for key in raw:
        if key not in _TOP_KEYS:
            raise InputError(source, str(key), f"unknown field; known: {', '.join(_TOP_KEYS)}")
    policy = SitePolicy(source=source)
    if raw.get("site") is not None:
        if not isinstance(raw["site"], str):
            raise InputError(source, "site", "must be a site name")
        policy.site = raw["site"]
    policy.allowed_tasks = _names(raw.get("allowed_tasks"), source, "allowed_tasks")
    policy.allowed_models = _names(raw.get("allowed_models"), source, "allowed_models")
    if "allowed_strategies" in raw:
        strategies = _names(raw["allowed_strategies"], source, "allowed_strategies") or []
        for name in strategies:
            if name not in STRATEGIES:
                raise InputError(source, "allowed_strategies", f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
        policy.allowed_strategies = strategies
    if "max_rounds" in raw:
        policy.max_rounds = int(_positive(raw["max_rounds"], source, "max_rounds", integer=True))
    privacy = raw.get("privacy") or {}
    if not isinstance(privacy, dict):
        raise InputError(source, "privacy", "must be a mapping")
    for key, value in privacy.items():
        if key not in PrivacyFloor.__dataclass_fields__:
            raise InputError(source, f"privacy.{key}", f"unknown field; known: {', '.join(PrivacyFloor.__dataclass_fields__)}")
        setattr(policy.privacy, key, float(_positive(value, source, f"privacy.{key}")))
    if policy.privacy.max_delta >= 1:
        raise InputError(source, "privacy.max_delta", "must be < 1")
    release = raw.get("release") or {}
    if not isinstance(release, dict):
        raise InputError(source, "release", "must be a mapping")
    for key, value in release.items():
        if key not in ReleasePolicy.__dataclass_fields__:
            raise InputError(source, f"release.{key}", f"unknown field; known: {', '.join(ReleasePolicy.__dataclass_fields__)}")
        if not isinstance(value, bool):
            raise InputError(source, f"release.{key}", f"must be true or false, got {value!r}")
        setattr(policy.release, key, value)
    runs = raw.get("approved_runs") or []
    if not isinstance(runs, list):
        raise InputError(source, "approved_runs", "must be a list")
    for index, run in enumerate(runs):
        digest = run.get("hash") if isinstance(run, dict) else None
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise InputError(source, f"approved_runs[{index}].hash", "must be a 64-character lower-case SHA-256 hex")
        policy.approved_runs.append(dict(run))
    return policy


def load_site_policy(path: Path) -> SitePolicy:
    path = Path(path)
    return policy_from_dict(load_yaml(path, "site policy file"), str(path))


def save_site_policy(policy: SitePolicy, path: Path) -> None:
    """Write the policy (atomically: a reader sees the old or the new file, never half of one)."""
    header = "# fedcare site policy (see README: For hospitals: what runs on your data)\n"
    text = header + yaml.safe_dump(policy.to_dict(), sort_keys=False)
    write_text(Path(path), text)


# -- the run hash ----------------------------------------------------------------------------
def hashed_config(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as hashed: without the fields that only say where things are kept."""
    out = cfg.to_dict()
    for dotted in HASH_EXCLUDED_CONFIG_FIELDS:
        *parents, leaf = dotted.split(".")
        section = out
        for name in parents:
            section = section.get(name, {})
        section.pop(leaf, None)
    return out


def run_hash(cfg: RunConfig, code_digest: str | None = None) -> str:
    """SHA-256 over the hashed config and the installed code's digest (see the module docstring)."""
    code = installed_digest() if code_digest is None else code_digest
    return hashlib.sha256(canonical_json({"config": hashed_config(cfg), "code": code}).encode()).hexdigest()


def approval_for(policy: SitePolicy, digest: str, roster_digest: str | None) -> dict[str, Any] | None:
    """The approval record of run `digest` made with this roster (None: not approved)."""
    return next((r for r in policy.approved_runs if r["hash"] == digest and r.get("roster") == roster_digest), None)


# -- checks ----------------------------------------------------------------------------------
def config_violations(policy: SitePolicy, cfg: RunConfig, site: str) -> list[str]:
    """How `cfg` breaks the policy's floor, limits or allow-lists (empty when it does not)."""
    floor, p = policy.privacy, cfg.privacy
    problems = []
    if policy.site is not None and policy.site != site:
        problems.append(f"the policy is for site {policy.site!r}, not {site!r}")
    if not cfg.dp_enabled(site):  # privacy.enabled false, or a target epsilon of .inf
        problems.append("differential privacy is switched off")
    if math.isfinite(cfg.site_target_epsilon(site)) and cfg.site_target_epsilon(site) > floor.max_epsilon_per_run:
        problems.append(f"epsilon {cfg.site_target_epsilon(site):g} > site maximum {floor.max_epsilon_per_run:g}")
    if p.reproducible_noise:
        problems.append("DP noise reproducible from the run config (privacy.reproducible_noise)")
    if p.delta > floor.max_delta:
        problems.append(f"delta {p.delta:g} > site maximum {floor.max_delta:g}")
    if p.evaluation.noise_multiplier < floor.min_noise_multiplier:
        problems.append(f"evaluation noise multiplier {p.evaluation.noise_multiplier:g} < site minimum "
                        f"{floor.min_noise_multiplier:g}")
    if p.max_grad_norm > floor.max_clip_norm:
        problems.append(f"clip norm {p.max_grad_norm:g} > site maximum {floor.max_clip_norm:g}")
    if cfg.total_rounds > policy.max_rounds:  # pretraining rounds train (and spend budget) too
        problems.append(f"{cfg.total_rounds} rounds > site maximum {policy.max_rounds}")
    if cfg.strategy.name not in policy.allowed_strategies:
        problems.append(f"strategy {cfg.strategy.name!r} not allowed")
    if policy.allowed_tasks is not None and cfg.task not in policy.allowed_tasks:
        problems.append(f"task {cfg.task!r} not allowed")
    if policy.allowed_models is not None and cfg.model.name not in policy.allowed_models:
        problems.append(f"model {cfg.model.name!r} not allowed")
    return problems


def noise_violation(policy: SitePolicy, noise_multiplier: float) -> str | None:
    """The planned noise is below the floor (the run's budget is so large DP is all but off)."""
    if noise_multiplier < policy.privacy.min_noise_multiplier:
        return f"planned noise multiplier {noise_multiplier:.3g} < site minimum {policy.privacy.min_noise_multiplier:g}"
    return None


def approve_run(policy: SitePolicy, cfg: RunConfig, digest: str, parameters: int, code_digest: str | None = None,
                roster_digest: str | None = None) -> dict[str, Any]:
    """Record `digest` as approved (with what it is, for the reader of the policy); return the record.
    `code_digest`: the installed code's digest (part of `digest`); `roster_digest`: the roster pinned."""
    record = {
        "hash": digest,
        "config_digest": hashlib.sha256(canonical_json(hashed_config(cfg)).encode()).hexdigest(),
        "code": code_digest or installed_digest(),
        "roster": roster_digest,
        "task": cfg.task,
        "model": cfg.model.name,
        "parameters": parameters,
        "rounds": cfg.total_rounds,
        "target_epsilon": cfg.privacy.target_epsilon,
        "approved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": cfg.source,
    }
    policy.approved_runs = [r for r in policy.approved_runs if r["hash"] != digest] + [record]
    return record
