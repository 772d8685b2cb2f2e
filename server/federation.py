"""The coordinating center's side of a run: build the global model from the config, run the
strategy, checkpoint every round, write the run's history and summary into runs/<run-id>/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from server.checkpoints import checkpoint_path, save_checkpoint
from server.evaluation import POOLING_NOTE, decision_threshold, pooled_calibration, pooled_metrics
from server.history import RunHistory, write_json_atomic
from server.strategy import make_strategy
from shared.config import RunConfig, config_from_json
from shared.errors import InputError
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.tasks.registry import build_task

THRESHOLD_RULE = "num-examples-weighted mean of the sites' Youden-optimal validation thresholds"


def run_federation(grid: Grid, rc: dict[str, Any]) -> dict[str, Any]:
    cfg = config_from_json(str(rc["fedcare-config"]))
    run_dir = Path(str(rc["run-dir"]))
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    model = task.build_model()  # same layout at the center and at every site
    history = RunHistory(run_dir, list(cfg.data.sites), task.primary_metric)
    try:
        strategy = make_strategy(cfg, history)
    except TypeError as err:
        raise InputError(cfg.source, "strategy.params", str(err)) from None
    meta = {"config": cfg.to_dict(), "task": cfg.task, "model": cfg.model.name, "run_id": str(rc["run-id"])}

    def checkpoint(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Flower calls this after the round's evaluation: the sites' validation thresholds of this
        # very model are known, and their weighted mean is stored with it (`fedcare predict` uses it).
        threshold = decision_threshold(history.evaluations(server_round))
        save_checkpoint(
            checkpoint_path(run_dir, server_round), arrays.to_torch_state_dict(),
            {**meta, "round": server_round, "decision_threshold": threshold, "decision_threshold_rule": THRESHOLD_RULE},
        )
        return None

    started = time.time()
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=cfg.train.rounds,
        timeout=cfg.federation.round_timeout_s,
        train_config=ConfigRecord({}),
        evaluate_config=ConfigRecord({}),
        evaluate_fn=checkpoint,
    )
    history.save()
    summary = run_summary(
        history, cfg, str(rc["run-id"]), run_dir, wall_time_s=time.time() - started, has_weights=len(result.arrays.keys()) > 0
    )
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def run_summary(
    history: RunHistory, cfg: RunConfig, run_id: str, run_dir: Path, wall_time_s: float, has_weights: bool = True
) -> dict[str, Any]:
    """summary.json: plan, final weighted and pooled metrics of the last round's model (see
    server.evaluation.POOLING_NOTE), calibration, decision threshold, per-site outcome, notes."""
    trained_rounds = [r for r, sites in history.rounds.items() if any(s.get("status") == "trained" for s in sites.values())]
    last = cfg.train.rounds
    final = history.evaluations(last)
    return {
        "run_id": run_id,
        "task": cfg.task,
        "rounds_planned": cfg.train.rounds,
        "rounds_with_training": len(trained_rounds),
        "wall_time_s": round(wall_time_s, 1),
        "final_checkpoint": str(checkpoint_path(run_dir, last).relative_to(run_dir)),
        "primary_metric": history.primary_metric,
        "final_weighted": {m: history.weighted(last, m) for m in history.weighted_metrics()},
        "final_pooled": pooled_metrics(final),
        "final_calibration": pooled_calibration(final),
        "pooling_note": POOLING_NOTE,
        "decision_threshold": decision_threshold(final),
        "sites": {site: _site_summary(history, site) for site in cfg.data.sites},
        "site_level_dp": _site_level_dp_summary(history),
        "events": history.events,
        "complete": bool(trained_rounds) and has_weights,
    }


def _site_level_dp_summary(history: RunHistory) -> dict[str, Any] | None:
    """The center's site-level (client-level) DP: epsilon after the last aggregated round, and per round."""
    if not history.site_level_dp:
        return None
    last = history.site_level_dp[max(history.site_level_dp)]
    return {
        "epsilon": last["epsilon"], "epsilon_independent": last["epsilon_independent"], "delta": last["delta"],
        "accountant": last["accountant"], "mode": last["mode"], "noise_multiplier": last["noise_multiplier"],
        "per_round": {str(r): rec["epsilon"] for r, rec in sorted(history.site_level_dp.items())},
    }


def _site_level_epsilon(history: RunHistory, rounds_trained: list[int]) -> float:
    """Site-level epsilon of one site: the center's release mechanisms of the rounds it contributed to."""
    records = [history.site_level_dp[r] for r in rounds_trained if r in history.site_level_dp]
    if not records:
        return 0.0
    mechanisms = [Mechanism(**m) for rec in records for m in rec["mechanisms"]]
    return epsilon_opacus(mechanisms, records[-1]["delta"], records[-1]["accountant"])


def _site_summary(history: RunHistory, site: str) -> dict[str, Any]:
    trained = [r for r in sorted(history.rounds) if history.rounds[r].get(site, {}).get("status") == "trained"]
    stopped = next(
        (
            {"round": r, "status": history.rounds[r][site]["status"], "reason": history.rounds[r][site].get("reason", "")}
            for r in sorted(history.rounds)
            if history.rounds[r].get(site, {}).get("status") not in ("trained", None)
        ),
        None,
    )
    last_eval = next(
        (history.rounds[r][site]["evaluate"] for r in sorted(history.rounds, reverse=True)
         if "evaluate" in history.rounds[r].get(site, {})),
        {},
    )
    last_eps = next(
        (history.rounds[r][site]["train"].get("epsilon") for r in sorted(history.rounds, reverse=True)
         if "train" in history.rounds[r].get(site, {})),
        None,
    )
    site_level = _site_level_epsilon(history, trained) if history.site_level_dp else None
    return {"rounds_trained": trained, "first_stop": stopped, "final_metrics": last_eval, "epsilon": last_eps,
            "site_level_epsilon": site_level}
