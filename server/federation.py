"""The coordinating center's side of a run: build the global model from the config, run the
strategy, checkpoint every round, write the run's history and summary into runs/<run-id>/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid

from server.checkpoints import checkpoint_path, save_checkpoint
from server.history import RunHistory, write_json_atomic
from server.strategy import make_strategy
from shared.config import config_from_json
from shared.errors import InputError
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.tasks.registry import build_task


def run_federation(grid: Grid, rc: dict[str, Any], context: Context | None = None) -> dict[str, Any]:
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
        save_checkpoint(checkpoint_path(run_dir, server_round), arrays.to_torch_state_dict(), {**meta, "round": server_round})
        return None

    started = time.time()
    if cfg.secure_aggregation.enabled:
        from server.secure_aggregation import run_secure_federation

        if context is None:
            raise RuntimeError("secure aggregation runs through Flower's legacy workflow, which needs the ServerApp context")
        secure = run_secure_federation(grid, context, cfg, model, strategy, history, checkpoint)
        has_final_model = bool(secure.aggregated_rounds)
        secure_summary = {**secure.params.__dict__, "quantization_step": secure.params.quantization_step,
                          "rounds_aggregated": sorted(secure.aggregated_rounds)}
    else:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=cfg.train.rounds,
            timeout=cfg.federation.round_timeout_s,
            train_config=ConfigRecord({}),
            evaluate_config=ConfigRecord({}),
            evaluate_fn=checkpoint,
        )
        has_final_model = len(result.arrays.keys()) > 0
        secure_summary = None
    history.save()
    trained_rounds = [r for r, sites in history.rounds.items() if any(s.get("status") == "trained" for s in sites.values())]
    last = cfg.train.rounds
    summary = {
        "run_id": str(rc["run-id"]),
        "task": cfg.task,
        "rounds_planned": cfg.train.rounds,
        "rounds_with_training": len(trained_rounds),
        "wall_time_s": round(time.time() - started, 1),
        "final_checkpoint": str(checkpoint_path(run_dir, last).relative_to(run_dir)),
        "primary_metric": task.primary_metric,
        "final_weighted": {m: history.weighted(last, m) for m in history.weighted_metrics()},
        "sites": {site: _site_summary(history, site) for site in cfg.data.sites},
        "site_level_dp": _site_level_dp_summary(history),
        "secure_aggregation": secure_summary,
        "events": history.events,
        "complete": bool(trained_rounds) and has_final_model,
    }
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


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
