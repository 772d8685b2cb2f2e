"""The coordinating center's side of a run: build the global model from the config, run the
strategy, checkpoint every round, write the run's history and summary into runs/<run-id>/.

A resumed run (run config `resume = true`, same run id and run folder) starts from the last
global checkpoint: Flower's Strategy.start always counts rounds from 1, so it runs the remaining
rounds and the strategy shifts every round number by the rounds already done. A checkpoint written while its
round's evaluations were still out (the center sends them with the next round's training,
server/strategy.py) has that evaluation asked for again first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid

from server.checkpoints import (
    checkpoint_path,
    latest_checkpoint,
    latest_loadable_checkpoint,
    save_checkpoint,
)
from server.evaluation import (
    EXACT_METRIC_NOTE,
    POOLING_NOTE,
    aggregate_metrics,
    calibration_map,
    decision_threshold,
    outside_guarantee,
    pooled_calibration,
    pooled_metrics,
    recalibration,
)
from server.history import NOT_ASKED, RunHistory, write_json_atomic
from server.strategy import make_strategy
from shared.config import PRETRAIN_PHASE, TRAIN_PHASE, RunConfig
from shared.errors import InputError
from shared.io import write_text
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.run_config import parse_run_config
from shared.tasks.registry import build_task

THRESHOLD_RULE = ("Youden-optimal bin edge of the sites' summed noisy score histograms (DP evaluation); without them, "
                  "the num-examples-weighted mean of the sites' Youden-optimal validation thresholds")


def run_federation(grid: Grid, rc: Mapping[str, Any], context: Context | None = None) -> dict[str, Any]:
    """`rc`: the Flower run config (shared/run_config.py)."""
    spec = parse_run_config(rc, context.run_id if context is not None else None)
    cfg, run_dir, run_id, resuming = spec.cfg, spec.run_dir, spec.run_id, spec.resume
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    model = task.build_model()  # same layout at the center and at every site
    start_round, evaluation_pending = 0, False
    if resuming:
        if cfg.secure_aggregation.enabled:  # the legacy SecAgg+ workflow numbers its rounds from 1
            raise InputError(run_dir, "secure_aggregation.enabled", "a run with secure aggregation cannot be resumed")
        start_round, skipped, evaluation_pending = _load_resume_point(model, run_dir, run_id)
        history = RunHistory.resume(run_dir, list(cfg.data.sites), task.primary_metric, start_round)
        for problem in skipped:
            history.note(f"resume: skipped a checkpoint that does not load ({problem})")
    else:
        if latest_checkpoint(run_dir) is not None:
            raise InputError(run_dir, "checkpoints", "the run folder already holds checkpoints; resume it or pick a new folder")
        history = RunHistory(run_dir, list(cfg.data.sites), task.primary_metric)
    if start_round < cfg.total_rounds:
        _synthesize_if_no_site_data(cfg, history)
        _wait_for_sites(grid, cfg, history)
    if not (run_dir / "config.yaml").exists():  # `flwr run .`: the fedcare commands wrote it already
        write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if cfg.pretrain_rounds and not resuming:
        pretrained = run_pretraining(grid, cfg, history, run_dir, run_id)
        task.load_pretrained_encoder(model, pretrained)
        start_round = cfg.pretrain_rounds  # fine-tuning round r is global round pretrain_rounds + r
    try:
        strategy = make_strategy(cfg, history, round_offset=start_round)
    except TypeError as err:
        raise InputError(cfg.source, "strategy.params", str(err)) from None
    meta = {"config": cfg.to_dict(), "task": cfg.task, "model": cfg.model.name, "run_id": run_id}

    def checkpoint_before_evaluation(server_round: int, arrays: ArrayRecord) -> None:
        # the strategy sends round r+1's training with round r's evaluation: round r's model (and its training
        # records) are on disk first, so a resumed run continues from the model the sites train round r+1 on
        real_round = server_round + start_round
        history.save()
        save_checkpoint(checkpoint_path(run_dir, real_round), arrays.to_torch_state_dict(),
                        {**meta, "round": real_round, "decision_threshold": None, "calibration": None,
                         "evaluation_pending": True})

    strategy.checkpoint_before_evaluation = checkpoint_before_evaluation

    def checkpoint(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 and resuming:
            return None  # the resumed-from checkpoint is already on disk
        real_round = server_round + start_round
        # written in the background after the round's table and files, while the next round trains
        history.writer.submit(write_round_checkpoint, real_round, arrays.to_torch_state_dict())
        return None

    def write_round_checkpoint(real_round: int, state_dict: dict[str, torch.Tensor]) -> None:
        # Flower calls `checkpoint` after the round's evaluation: the sites' validation thresholds of this
        # very model are known, and their weighted mean is stored with it (`fedcare predict` uses it).
        # (The history's records of this round no longer change: its next change waits for this write.)
        threshold = decision_threshold(history.evaluations(real_round), history.releases(real_round))
        # the recalibration map of this model, from the same released statistics (`fedcare predict` applies it)
        cmap = calibration_map(recalibration(history.evaluations(real_round), history.releases(real_round),
                                             cfg.evaluation.recalibrate))
        save_checkpoint(checkpoint_path(run_dir, real_round), state_dict,
                        {**meta, "round": real_round, "decision_threshold": threshold,
                         "decision_threshold_rule": THRESHOLD_RULE, "calibration": cmap.to_dict() if cmap else None})

    started = time.time()
    secure_summary = None
    try:
        if cfg.secure_aggregation.enabled:
            from server.secure_aggregation import run_secure_federation

            if context is None:
                raise RuntimeError("secure aggregation runs through Flower's legacy workflow, which needs the ServerApp context")
            secure = run_secure_federation(grid, context, cfg, model, strategy, history, checkpoint)
            secure_summary = {**secure.params.__dict__, "quantization_step": secure.params.quantization_step,
                              "rounds_aggregated": sorted(secure.aggregated_rounds), "rounds_failed": secure.rounds_failed,
                              "failure": secure.failure}
        else:
            if resuming and evaluation_pending:
                _evaluate_again(grid, strategy, ArrayRecord(model.state_dict()), cfg, history, start_round)
                write_round_checkpoint(start_round, model.state_dict())
            strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(model.state_dict()),
                num_rounds=cfg.total_rounds - start_round,
                timeout=cfg.federation.round_timeout_s,
                train_config=ConfigRecord({"phase": TRAIN_PHASE}),
                evaluate_config=ConfigRecord({"phase": TRAIN_PHASE}),
                evaluate_fn=checkpoint,
            )
    except BaseException:
        history.writer.close()  # what the finished rounds wrote is on disk before the failure goes on
        raise
    history.save()
    history.writer.close()  # its thread ends with the run
    summary = run_summary(history, cfg, run_id, run_dir, wall_time_s=time.time() - started, secure_summary=secure_summary)
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def run_pretraining(grid: Grid, cfg: RunConfig, history: RunHistory, run_dir: Path, run_id: str) -> dict[str, torch.Tensor]:
    """The pretraining phase: global rounds 1..cfg.pretrain_rounds train the task's contrastive model (without
    DP the sites report their self-supervised validation loss; under DP they release none and are not asked);
    returns its final weights, also saved as run_dir/pretrain/model.pt. The sites spend this phase's privacy
    under the run's one noise plan."""
    task = build_task(cfg)
    model = task.build_pretrain_model()
    try:
        strategy = make_strategy(cfg, history)
    except TypeError as err:
        raise InputError(cfg.source, "strategy.params", str(err)) from None
    history.note(f"pretraining phase: rounds 1-{cfg.pretrain_rounds}; fine-tuning starts from its encoder")
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=cfg.pretrain_rounds,
        timeout=cfg.federation.round_timeout_s,
        train_config=ConfigRecord({"phase": PRETRAIN_PHASE}),
        evaluate_config=ConfigRecord({"phase": PRETRAIN_PHASE}),
    )
    state = result.arrays.to_torch_state_dict()
    save_checkpoint(pretrain_checkpoint_path(run_dir), state, {"config": cfg.to_dict(), "task": cfg.task, "run_id": run_id,
                                                                "round": cfg.pretrain_rounds, "phase": PRETRAIN_PHASE})
    return state


def pretrain_checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "pretrain" / "model.pt"


def run_summary(history: RunHistory, cfg: RunConfig, run_id: str, run_dir: Path, wall_time_s: float,
                secure_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.json: plan, final weighted and pooled metrics of the last round's model (see
    server.evaluation.POOLING_NOTE), calibration, decision threshold, per-site outcome, notes."""
    trained_rounds = [r for r, sites in history.rounds.items() if any(s.get("status") == "trained" for s in sites.values())]
    last = cfg.total_rounds
    final = history.evaluations(last)
    return {
        "run_id": run_id,
        "task": cfg.task,
        "rounds_planned": cfg.total_rounds,
        "pretrain_rounds": cfg.pretrain_rounds,
        "rounds_with_training": len(trained_rounds),
        "wall_time_s": round(wall_time_s, 1),
        "final_checkpoint": str(checkpoint_path(run_dir, last).relative_to(run_dir)),
        "primary_metric": history.primary_metric,
        "final_weighted": {m: history.weighted(last, m) for m in history.weighted_metrics()},
        "final_pooled": pooled_metrics(final),
        "final_calibration": pooled_calibration(final),
        "final_aggregate": aggregate_metrics(history.releases(last)),
        "recalibration": recalibration(final, history.releases(last), cfg.evaluation.recalibrate),
        "pooling_note": POOLING_NOTE,
        "decision_threshold": decision_threshold(final, history.releases(last)),
        "evaluation_privacy": {
            "mechanism": "Gaussian on score histograms / confusion matrices (shared/privacy/dp_evaluation.py)",
            "noise_multiplier": cfg.privacy.evaluation.noise_multiplier, "bins": cfg.privacy.evaluation.bins,
            "rounds": cfg.evaluation_rounds(),
            "outside_guarantee": outside_guarantee(final), "outside_guarantee_note": EXACT_METRIC_NOTE,
        },
        "sites": {site: _site_summary(history, site, last) for site in cfg.data.sites},
        "site_level_dp": _site_level_dp_summary(history),
        "secure_aggregation": secure_summary,
        "events": history.events,
        # a secure round that failed (refusals, a mixed federation, a sum outside the bounds) is never complete
        "complete": bool(trained_rounds) and checkpoint_path(run_dir, last).is_file()
        and not (secure_summary or {}).get("rounds_failed"),
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


def _evaluate_again(grid: Grid, strategy: Any, arrays: ArrayRecord, cfg: RunConfig, history: RunHistory,
                   real_round: int) -> None:
    """The center died while the sites evaluated round `real_round`'s model (already checkpointed, with the next
    round's training sent): ask for that evaluation again before the next round. A site that had answered sends
    the same release again at no cost (client/site_worker.py)."""
    history.note(f"round {real_round}: the center stopped while this round's evaluations were out; asked again")
    # the strategy counts rounds after the resume point: its round 0 is the checkpoint's round
    messages = list(strategy.configure_evaluate(0, arrays, ConfigRecord({"phase": TRAIN_PHASE}), grid))
    replies = grid.send_and_receive(messages, timeout=cfg.federation.round_timeout_s) if messages else []
    strategy.aggregate_evaluate(0, replies)


def _load_resume_point(model: torch.nn.Module, run_dir: Path, run_id: str) -> tuple[int, list[InputError], bool]:
    """The round of the newest checkpoint that loads (its weights go into `model`), the problems of newer ones
    that do not (a damaged newest checkpoint costs a round, not the run), and whether that round's evaluation
    was still out when the center stopped (SiteTracking.start: the checkpoint was written before it came in)."""
    found = latest_loadable_checkpoint(run_dir)
    if found is None:
        if latest_checkpoint(run_dir) is not None:
            raise InputError(run_dir, "checkpoints", "nothing to resume: no global checkpoint in the run folder loads")
        raise InputError(run_dir, "checkpoints", "nothing to resume: no global checkpoint in the run folder")
    path, ckpt, skipped = found
    if ckpt.get("run_id") != run_id:
        raise InputError(path, "run_id", f"checkpoint belongs to run {ckpt.get('run_id')!r}, not {run_id!r}")
    model.load_state_dict(ckpt["state_dict"])
    return int(ckpt["round"]), skipped, bool(ckpt.get("evaluation_pending", False))


def _synthesize_if_no_site_data(cfg: RunConfig, history: RunHistory) -> None:
    """Simulation (`flwr run .` on a fresh checkout): as `fedcare simulate` does, synthetic sites where the data
    root holds none of them, before any site is asked for anything."""
    root = Path(cfg.data.root)
    if cfg.federation.mode == "simulation" and not any((root / s).is_dir() for s in cfg.data.sites):
        build_task(cfg).synthesize(root, list(cfg.data.sites), cfg.seed)
        history.note(f"start: no site data under {root}; wrote synthetic data for {len(cfg.data.sites)} sites")


def _wait_for_sites(grid: Grid, cfg: RunConfig, history: RunHistory) -> None:
    """Deployment: give every configured site time to connect before round 1 (Flower starts a
    round as soon as strategy.min_sites nodes are online)."""
    expected = len(cfg.data.sites)
    simulated = cfg.federation.mode == "simulation"  # virtual SuperNodes register within seconds
    deadline = time.time() + (min(30.0, cfg.federation.wait_for_sites_s) if simulated else cfg.federation.wait_for_sites_s)
    while (online := len(list(grid.get_node_ids()))) < expected and time.time() < deadline:
        time.sleep(1.0)
    if simulated and online != expected:  # partition id i is site i: a count off is a wrong site
        raise InputError("the simulation federation", "num-supernodes",
                         f"{online} virtual SuperNodes for {expected} sites ({', '.join(cfg.data.sites)}): "
                         f"flwr run . --federation-config \"num-supernodes={expected}\"")
    if online < expected:
        waited = cfg.federation.wait_for_sites_s
        history.note(f"start: {online} of {expected} sites connected after {waited:.0f} s; starting anyway")


def _site_summary(history: RunHistory, site: str, last_round: int) -> dict[str, Any]:
    status = {r: history.rounds.get(r, {}).get(site, {}).get("status", NOT_ASKED) for r in range(1, last_round + 1)}
    trained = [r for r, s in status.items() if s == "trained"]
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
    return {
        "rounds_trained": trained,
        "rounds_missed": {str(r): s for r, s in status.items() if s != "trained"},
        "first_stop": stopped,
        "final_metrics": last_eval,
        "epsilon": last_eps,
        "site_level_epsilon": site_level,
    }
