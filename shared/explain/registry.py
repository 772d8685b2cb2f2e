"""Task -> site explainer, and `explain_site`, the one entry point that writes a site report.

A site explainer is `fn(task, model, data_dir, state_dir, options, progress) -> SiteExplanation`:
it reads the site's data with `task.prediction_inputs(data_dir, state_dir)` (the site's fitted
encoders live in state_dir), runs the model-level explainers and builds the report content.
Wiring a new task is one entry in `_SITE_EXPLAINERS` (keyed by the task class, so task names stay
in shared/tasks/registry.py alone).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from shared.explain.event_explainer import explain_event_site
from shared.explain.multimodal_explainer import explain_multimodal_site
from shared.explain.options import ExplainOptions, ProgressHook
from shared.explain.report import ReportFiles, SiteExplanation, write_site_report
from shared.explain.retain_explainer import explain_retain_site
from shared.explain.sleep_explainer import explain_sleep_site
from shared.tasks.base import Task
from shared.tasks.event_mortality import EventMortalityTask
from shared.tasks.multimodal import MultimodalTask
from shared.tasks.registry import TASKS
from shared.tasks.retain_aki import RetainAkiTask
from shared.tasks.sleep import SleepDiagnosisTask, SleepStagingTask

__all__ = ["ExplainOptions", "ProgressHook", "explain_site", "explainable_tasks", "site_explainer"]

SiteExplainer = Callable[[Task, nn.Module, Path, Path, ExplainOptions, "ProgressHook | None"], SiteExplanation]

_SITE_EXPLAINERS: dict[type[Task], SiteExplainer] = {
    EventMortalityTask: explain_event_site,
    RetainAkiTask: explain_retain_site,
    MultimodalTask: explain_multimodal_site,
    SleepStagingTask: explain_sleep_site,
    SleepDiagnosisTask: explain_sleep_site,
    # the tabular tasks: no site explainer yet (a linear model's weights, on inputs named in the resolved config's
    # `data.covariates[*].inputs`, are its explanation); explain.final_round is refused for them
}


def explainable_tasks() -> list[str]:
    return sorted(cls.name for cls in _SITE_EXPLAINERS)


def site_explainer(task_name: str) -> SiteExplainer:
    cls = TASKS.get(task_name)
    if cls not in _SITE_EXPLAINERS:
        raise KeyError(f"no site explainer for task {task_name!r}; available: {', '.join(explainable_tasks())}")
    return _SITE_EXPLAINERS[cls]


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
