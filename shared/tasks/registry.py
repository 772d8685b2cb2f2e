"""The task registry: the one list of task names (config `task:`), each bound to its Task class.

A new task is a Task subclass (shared/tasks/base.py) and one entry below; the config's `task:` values,
the `data:` section's fields, the models a task accepts and whether it has a pretraining phase all come
from here (shared/config.py).
"""

from __future__ import annotations

from pathlib import Path

from shared.config_schema import RunConfig
from shared.tasks.base import Task
from shared.tasks.event_mortality import EventMortalityTask
from shared.tasks.multimodal import MultimodalTask
from shared.tasks.retain_aki import RetainAkiTask
from shared.tasks.sleep import SleepDiagnosisTask, SleepStagingTask
from shared.tasks.tabular import TabularBinaryTask, TabularSurvivalTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        EventMortalityTask,
        RetainAkiTask,
        SleepStagingTask,
        SleepDiagnosisTask,
        MultimodalTask,
        TabularBinaryTask,
        TabularSurvivalTask,
    )
}
TASK_NAMES = tuple(TASKS)
PRETRAINABLE_TASKS = tuple(name for name, cls in TASKS.items() if cls.pretrainable)
TABULAR_TASKS = tuple(name for name, cls in TASKS.items() if cls.fixed_test_split)  # one table.csv per site


def task_class(task: str) -> type[Task]:
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; known: {', '.join(TASK_NAMES)}")
    return TASKS[task]


def build_task(cfg: RunConfig) -> Task:
    return task_class(cfg.task)(cfg)


def task_source_file(task: str) -> Path:
    """The file that defines the task class (what a site approves)."""
    import inspect

    return Path(inspect.getsourcefile(task_class(task)) or "")
