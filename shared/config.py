"""Read a run config: YAML -> the task's typed `RunConfig`, checked against the task, model and explainer
registries. One clear one-line error per bad field, exit code 2 at the CLI.

The sections themselves (and the checks that need no registry) are in `shared/config_schema.py`, the bottom
layer; this module sits on top of `shared/` (it imports the registries), so modules inside `shared/` import
`shared.config_schema`, and the applications (`fedcare`, `server`, `client`) load configs here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.config_schema import (
    DEFAULT_TASK,
    PRECISIONS,
    PRETRAIN_PHASE,
    STRATEGIES,
    TRAIN_PHASE,
    RunConfig,
    parse_config,
    validate_section,
)
from shared.data.tabular import check_tabular_config
from shared.errors import InputError
from shared.explain.registry import explainable_tasks
from shared.io import load_yaml
from shared.models.registry import model_params
from shared.privacy.secagg_params import derive_secagg_parameters
from shared.tasks.registry import PRETRAINABLE_TASKS, TABULAR_TASKS, TASKS, task_class

__all__ = [
    "PRECISIONS", "PRETRAIN_PHASE", "PRETRAINABLE_TASKS", "STRATEGIES", "TABULAR_TASKS", "TASKS", "TRAIN_PHASE",
    "RunConfig", "config_from_dict", "config_from_json", "load_config",
]


def _check_model(cfg: RunConfig) -> None:
    """The model section against the model's parameters and the keys the task reads (`Task.model_options`)."""
    cls, name, source = task_class(cfg.task), cfg.model.name, cfg.source
    if name not in cls.models:
        raise InputError(source, "model.name", f"{name!r} is not a model of task {cfg.task} (allowed: {', '.join(cls.models)})")
    model, options = model_params(name), cls.model_options
    allowed = [*model.model_fields, *options.model_fields]
    params = cfg.model.params
    for key in params:
        if key not in allowed:
            raise InputError(source, f"model.{key}", f"unknown key (allowed: {', '.join(allowed)})")
    own = validate_section(model, {k: v for k, v in params.items() if k in model.model_fields}, source, "model")
    task = validate_section(options, {k: v for k, v in params.items() if k in options.model_fields}, source, "model")
    cfg.model.params = {**own.model_dump(exclude_unset=True), **task.model_dump(exclude_unset=True)}


def _check_registries(cfg: RunConfig) -> None:
    source = cfg.source
    _check_model(cfg)
    if cfg.pretrain.enabled and cfg.task not in PRETRAINABLE_TASKS:
        raise InputError(source, "pretrain.enabled",
                         f"no pretraining phase for task {cfg.task!r} (available: {', '.join(PRETRAINABLE_TASKS)})")
    if cfg.task in TABULAR_TASKS:
        check_tabular_config(cfg)  # raises InputError(data.covariates[i]...); fills in each covariate's model inputs
    if cfg.explain.final_round and cfg.task not in explainable_tasks():
        raise InputError(source, "explain.final_round",
                         f"no site explainer for task {cfg.task!r} yet (available: {', '.join(explainable_tasks())})")
    if cfg.secure_aggregation.enabled:
        derive_secagg_parameters(cfg)  # raises InputError naming the field that cannot be met


def config_from_dict(raw: Any, source: str = "<dict>") -> RunConfig:
    task = raw.get("task", DEFAULT_TASK) if isinstance(raw, dict) else DEFAULT_TASK
    if not isinstance(task, str) or task not in TASKS:
        raise InputError(source, "task", f"unknown task {task!r}; known: {', '.join(TASKS)}")
    cls = task_class(task)
    cfg = parse_config(raw, source, cls.data_config, cls.models[0])
    _check_registries(cfg)
    return cfg


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    raw = load_yaml(path, "config file")
    if raw is None:  # an empty file must not silently become the default event config
        raise InputError(path, None, "the config is empty; it needs at least `task:` (see fedcare/configs/)")
    return config_from_dict(raw, str(path))


def config_from_json(text: str) -> RunConfig:
    """The resolved config as it travels inside a Flower run config."""
    return config_from_dict(json.loads(text), "<run config>")
