"""Task name -> site explainer, and `explain_site`, the one entry point that writes a site report.

A site explainer is `fn(task, model, data_dir, state_dir, options, progress) -> SiteExplanation`:
it reads the site's data with `task.prediction_inputs(data_dir, state_dir)` (the site's fitted
encoders live in state_dir), runs the model-level explainers and builds the report content.
Wiring a new task is one entry in `_SITE_EXPLAINERS`; the model-level pieces for RETAIN,
the multimodal model and the PSG models are ready in retain_explainer.py,
multimodal_explainer.py and sleep_explainer.py (`explain_*_dataset(model, ids, dataset, ...)`,
tensor order as in those tasks' `prediction_inputs`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from shared.explain.report import ReportFiles, SiteExplanation, write_site_report
from shared.tasks.base import Task

ProgressHook = Callable[[str, int, int], None]  # (stage, done, total): "cohort" then "patients"

_SITE_EXPLAINERS = {
    "event_mortality": "shared.explain.event_explainer:explain_event_site",
    "retain_aki": "shared.explain.retain_explainer:explain_retain_site",
    "multimodal": "shared.explain.multimodal_explainer:explain_multimodal_site",
    "sleep_staging": "shared.explain.sleep_explainer:explain_sleep_site",
    "sleep_diagnosis": "shared.explain.sleep_explainer:explain_sleep_site",
    # tabular_binary, tabular_survival: no site explainer yet (a linear model's weights, on inputs named in the
    # resolved config's `data.covariates[*].inputs`, are its explanation); explain.final_round is refused for them
}


@dataclass
class ExplainOptions:
    patients: list[str] | None = None  # ids to explain; None = the n_patients with the highest output
    n_patients: int = 10
    cohort_size: int = 256  # patients for cohort importance (a seeded sample when the site has more)
    ig_steps: int = 50  # per explained patient, doubled (up to ig_max_steps) until IG's delta has converged
    ig_max_steps: int = 400
    cohort_ig_steps: int = 20  # per cohort patient, doubled up to cohort_ig_max_steps likewise
    cohort_ig_max_steps: int = 160
    batch_size: int = 32
    top_items: int = 5  # events / labs named in each patient's "why" list
    heatmap_items: int = 30  # events shown in a patient's attention heatmap
    device: str = "cpu"
    seed: int = 0


SiteExplainer = Callable[[Task, nn.Module, Path, Path, ExplainOptions, "ProgressHook | None"], SiteExplanation]


def explainable_tasks() -> list[str]:
    return sorted(_SITE_EXPLAINERS)


def site_explainer(task_name: str) -> SiteExplainer:
    if task_name not in _SITE_EXPLAINERS:
        raise KeyError(f"no site explainer for task {task_name!r}; available: {', '.join(explainable_tasks())}")
    module, fn = _SITE_EXPLAINERS[task_name].split(":")
    return getattr(importlib.import_module(module), fn)


def explain_site(
    task: Task,
    model: nn.Module,
    data_dir: Path,
    state_dir: Path,
    out_dir: Path,
    options: ExplainOptions | None = None,
    progress: ProgressHook | None = None,
    source: str = "",
) -> ReportFiles:
    """Explain `model` on the site's data and write the report into `out_dir` (at the site)."""
    explanation = site_explainer(task.name)(task, model, Path(data_dir), Path(state_dir), options or ExplainOptions(), progress)
    explanation.source = source or explanation.source
    return write_site_report(Path(out_dir), explanation)
