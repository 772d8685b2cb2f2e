"""`fedcare evaluate --run RUN_DIR` (and the end of `fedcare simulate`): the final global model on
the sites' fixed test splits, per site and pooled, with bootstrap 95 % CIs; writes
``RUN_DIR/test_metrics.json`` and adds it to ``summary.json`` under ``test``.

Each site's report is computed from its own test samples only (the ``split`` column of the table that
defines the task's samples, shared/data/splits.py; a tabular site may also hold a ``test/`` folder);
a site whose rows cannot support a metric says so (``"n/a: no events"``, ``"n/a: one class (all 0)"``).
Binary and single-outcome survival tasks get a report; sleep staging (multiclass) and sleep diagnosis
(several outcomes) keep their test recordings out of training and validation but report "n/a" here.
For survival tasks each site also estimates the Breslow baseline hazard of the final model on its
training and validation rows and keeps it in its state folder (`fedcare predict --horizons` there).

Where this runs: all simulated sites live on this machine, so this process reads every site's
folder, and the *pooled* report is computed from the sites' per-row test outputs concatenated here
(the metric of the pooled test data, between-site pairs included). That is a simulation-only
shortcut: in deployment each hospital runs `fedcare evaluate` on its own data and only its aggregate
report leaves it; a pooled number then needs a federated protocol (not implemented), and the
center's meta-analysis of site metrics (summary.json `final_pooled`) is what it has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from server.checkpoints import latest_checkpoint, load_checkpoint
from shared.calibration import CalibrationMap, sigmoid
from shared.config import config_from_dict
from shared.errors import InputError
from shared.evaluation_report import not_available, test_split_report
from shared.io import load_json, write_json
from shared.metrics import brier, expected_calibration_error
from shared.survival_baseline import BASELINE_FILE, BaselineHazard
from shared.tasks.base import Task
from shared.tasks.registry import build_task

TEST_METRICS_FILE = "test_metrics.json"
N_BOOT = 1000
POOLED_NOTE = (
    "pooled: the metric of all sites' test rows together, computed by the simulating process from the "
    "sites' per-row outputs (simulation only: every site is on this machine); in deployment only each "
    "site's aggregate report leaves it"
)


def model_outputs(task: Task, model: torch.nn.Module, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Targets and outputs (logits / risks) of `model` over `dataset`."""
    model.eval()
    outs, targets = [], []
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=512):
            outs.append(task.forward(model, batch).float())
            targets.append(task.targets(batch))
    return torch.cat(targets).numpy(), torch.cat(outs).numpy()


def _site_state_root(cfg: Any, run_dir: Path) -> Path:
    return Path(cfg.federation.site_state_root) if cfg.federation.site_state_root else run_dir / "sites"


def evaluate_run(run_dir: Path, checkpoint: Path | None = None, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Test metrics of `checkpoint` (default: the run's last) per site and pooled; written to
    RUN_DIR/test_metrics.json and summary.json (`test`)."""
    run_dir = Path(run_dir)
    checkpoint = checkpoint or latest_checkpoint(run_dir)
    if checkpoint is None:
        raise InputError(run_dir, "checkpoints", "no global checkpoint in this run folder")
    ckpt, cfg, task, model = _load_model(checkpoint)
    sites: dict[str, Any] = {}
    pooled_y, pooled_out = [], []
    for site in cfg.data.sites:
        state_dir = _site_state_root(cfg, run_dir) / site
        data_dir = Path(cfg.data.root) / site
        sites[site], outputs = evaluate_site(checkpoint, data_dir, state_dir, site, n_boot, loaded=(ckpt, model))
        if outputs is not None:
            pooled_y.append(outputs[0])
            pooled_out.append(outputs[1])
    pooled = (test_split_report(task.kind, np.concatenate(pooled_y), np.concatenate(pooled_out), n_boot=n_boot, seed=cfg.seed)
              if pooled_y else {"n": 0, "note": "n/a: no site has a test split"})
    result = {
        "task": cfg.task, "kind": task.kind, "primary_metric": task.primary_metric, "checkpoint": str(checkpoint),
        "round": int(ckpt["round"]), "run_id": ckpt.get("run_id"), "sites": sites, "pooled": pooled,
        "pooled_note": POOLED_NOTE, "ci": f"percentile bootstrap 95 %, {n_boot} resamples",
    }
    write_json(run_dir / TEST_METRICS_FILE, result)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = load_json(summary_path)
        summary["test"] = result
        write_json(summary_path, summary)
    return result


def _load_model(checkpoint: Path) -> tuple[dict[str, Any], Any, Task, torch.nn.Module]:
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"], f"{checkpoint} (config)")
    task = build_task(cfg)
    model = task.build_model()
    model.load_state_dict(ckpt["state_dict"])
    return ckpt, cfg, task, model


def evaluate_site(
    checkpoint: Path, data_dir: Path, state_dir: Path, site: str, n_boot: int = N_BOOT,
    loaded: tuple[dict[str, Any], torch.nn.Module] | None = None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """One site's test report of `checkpoint` (what a hospital runs on its own data in deployment), and its
    per-row (targets, outputs), which stay with the caller. Survival: also saves the site's baseline hazard."""
    if loaded is None:
        ckpt, cfg, _, model = _load_model(checkpoint)
    else:
        ckpt, model = loaded
        cfg = config_from_dict(ckpt["config"], f"{checkpoint} (config)")
    site_task = build_task(cfg)  # per site: site-fitted state stays with its site
    data = site_task.prepare_site(Path(data_dir), site, Path(state_dir))
    if site_task.kind == "survival":
        _save_baseline(site_task, model, data, Path(state_dir), ckpt)
    if data.test is None or len(data.test) == 0:  # type: ignore[arg-type]
        return {"n": 0, "note": "n/a: no test split (no `split` column with test rows)"}, None
    y, out = model_outputs(site_task, model, data.test)
    if out.ndim > 1:  # several outcomes per sample (sleep_diagnosis)
        return {"n": int(len(y)), "note": "n/a: no test report for several outcomes yet"}, None
    cmap = ckpt.get("calibration") if site_task.kind == "binary" else None
    if cmap:  # the probabilities `fedcare predict` writes: recalibrated (ranks, hence AUROC, unchanged)
        prob = sigmoid(np.asarray(out, float).reshape(-1))
        uncalibrated = {"ece": expected_calibration_error(y.reshape(-1), prob), "brier": brier(y.reshape(-1), prob)}
        out = CalibrationMap.from_dict(cmap).apply_logits(out)
    report = test_split_report(site_task.kind, y, out, n_boot=n_boot, seed=cfg.seed)
    if cmap:
        report["recalibration"] = {"map": cmap, "uncalibrated": uncalibrated}
    return report, (y, out)


def _save_baseline(task: Task, model: torch.nn.Module, data: Any, state_dir: Path, ckpt: dict[str, Any]) -> None:
    """The site's Breslow baseline hazard of this model on its training + validation rows (stays at the site)."""
    parts = [model_outputs(task, model, part) for part in (data.train, data.val) if len(part)]
    y = np.concatenate([p[0] for p in parts])
    risk = np.concatenate([p[1] for p in parts])
    if risk.ndim > 1:  # several outcomes (sleep_diagnosis): no single baseline hazard
        return
    baseline = BaselineHazard.estimate(y[:, 0], y[:, 1], risk, run_id=ckpt.get("run_id"), round=int(ckpt["round"]))
    baseline.save(state_dir / BASELINE_FILE)


def _cell(report: dict[str, Any], metric: str, with_ci: bool = True) -> str:
    value = report.get(metric)
    if value is None:
        return report.get("note", "-")
    if not_available(value):
        return str(value)
    ci = f" [{value['ci_low']:.3f}, {value['ci_high']:.3f}]" if with_ci and "ci_low" in value else ""
    return f"{value['value']:.3f}{ci}"


def test_table(result: dict[str, Any]) -> Table:
    """The printed form of `evaluate_run`'s result: one row per site, then pooled (when the result has it).
    The primary metric with its CI, the others as points (test_metrics.json has every CI)."""
    survival = result["kind"] == "survival"
    metrics = ["c_index"] if survival else ["auroc", "auprc", "brier", "ece"]
    table = Table(title=f"test split, global model of round {result['round']} (95 % bootstrap CI)")
    table.add_column("site")
    table.add_column("n", justify="right")
    table.add_column("events" if survival else "positives", justify="right")
    for m in metrics:
        table.add_column(m)
    rows = [*result["sites"].items(), *([("pooled", result["pooled"])] if "pooled" in result else [])]
    for site, report in rows:
        count = report.get("n_events" if survival else "n_positive")
        cells = (_cell(report, m, with_ci=(m == metrics[0])) for m in metrics)
        table.add_row(site, str(report.get("n", 0)), "-" if count is None else str(count), *cells)
    return table


test_table.__test__ = False  # type: ignore[attr-defined]
