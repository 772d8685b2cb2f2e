"""Model registry: a config name -> a builder, so YAML configs pick models.

Each model file registers its builder with `@register_model("name")`. A builder takes the
model section of the config (a dict, extra keys allowed) plus the input dimensions the task
derives from its schema, and returns an nn.Module.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

ModelBuilder = Callable[..., nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}
# Modules that register models; imported lazily so importing the registry stays cheap.
_MODEL_MODULES = (
    "shared.models.event_transformer",
    "shared.models.retain",
    "shared.models.set_transformer",
    "shared.models.sleep_heads",
    "shared.models.multimodal",
    "shared.models.tabular_mlp",
    "shared.models.linear",
)


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def deco(fn: ModelBuilder) -> ModelBuilder:
        _BUILDERS[name] = fn
        return fn

    return deco


def _load_all() -> None:
    for mod in _MODEL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:  # a real missing dependency, not a model file not written yet
                raise


def model_names() -> list[str]:
    _load_all()
    return sorted(_BUILDERS)


def model_source_file(name: str) -> Path:
    """The file that defines the model registered as `name` (what a site approves)."""
    _load_all()
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    return Path(inspect.getsourcefile(_BUILDERS[name]) or "")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    _load_all()
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](**kwargs)
