"""Task name (config `task:`) -> Task class."""

from __future__ import annotations

import importlib
from pathlib import Path

from shared.config import RunConfig
from shared.tasks.base import Task

_TASK_CLASSES = {
    "event_mortality": "shared.tasks.event_mortality:EventMortalityTask",
    "multimodal": "shared.tasks.multimodal:MultimodalTask",
    "retain_aki": "shared.tasks.retain_aki:RetainAkiTask",
    "sleep_staging": "shared.tasks.sleep:SleepStagingTask",
    "sleep_diagnosis": "shared.tasks.sleep:SleepDiagnosisTask",
    "tabular_binary": "shared.tasks.tabular:TabularBinaryTask",
    "tabular_survival": "shared.tasks.tabular:TabularSurvivalTask",
}


def task_class(task: str) -> type[Task]:
    if task not in _TASK_CLASSES:
        raise KeyError(f"task {task!r} is not implemented yet; available: {', '.join(_TASK_CLASSES)}")
    module, cls = _TASK_CLASSES[task].split(":")
    return getattr(importlib.import_module(module), cls)


def build_task(cfg: RunConfig) -> Task:
    return task_class(cfg.task)(cfg)


def task_source_file(task: str) -> Path:
    """The file that defines the task class (what a site approves)."""
    if task not in _TASK_CLASSES:
        raise KeyError(f"task {task!r} is not implemented yet; available: {', '.join(_TASK_CLASSES)}")
    module = importlib.import_module(_TASK_CLASSES[task].split(":")[0])
    return Path(module.__file__ or "")
