"""`fedcare explain`: a site's explanation report for a saved global checkpoint.

Runs at a site, on the site's own data and state folder (fitted encoders, embedding cache): the
report is written under state_dir/explanations/ (or --out) and sent nowhere."""

from __future__ import annotations

from pathlib import Path

from server.checkpoints import load_checkpoint
from shared.config import config_from_dict
from shared.errors import InputError
from shared.explain.registry import ExplainOptions, ProgressHook, explain_site, explainable_tasks
from shared.explain.report import ReportFiles, figure_stem
from shared.tasks.registry import build_task

EXPLANATIONS_DIR = "explanations"


def report_name(checkpoint: Path, ckpt: dict) -> str:
    """<run id>_round_<NNN> when the checkpoint says so, else the checkpoint's file stem."""
    run_id = ckpt.get("run_id")
    return figure_stem(f"{run_id}_round_{int(ckpt['round']):03d}" if run_id else Path(checkpoint).stem)


def explain_checkpoint(
    checkpoint: Path,
    data_dir: Path,
    state_dir: Path,
    patients: list[str] | None = None,
    out_dir: Path | None = None,
    n_patients: int | None = None,
    progress: ProgressHook | None = None,
) -> ReportFiles:
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"], f"{checkpoint} (config)")
    if cfg.task not in explainable_tasks():
        available = ", ".join(explainable_tasks())
        raise InputError(checkpoint, "task", f"no site explainer for {cfg.task!r} yet; available: {available}")
    if not Path(state_dir).is_dir():
        raise InputError(state_dir, None, "site state folder not found (it holds the site's fitted encoders)")
    task = build_task(cfg)
    model = task.build_model()
    model.load_state_dict(ckpt["state_dict"])
    out_dir = out_dir or Path(state_dir) / EXPLANATIONS_DIR / report_name(checkpoint, ckpt)
    options = ExplainOptions(patients=patients, n_patients=n_patients or cfg.explain.patients, seed=cfg.seed)
    return explain_site(task, model, Path(data_dir), Path(state_dir), out_dir, options, progress,
                        source=f"{Path(checkpoint).name} (run {ckpt.get('run_id', '?')}, round {ckpt['round']})")
