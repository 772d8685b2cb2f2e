"""Model registry: a config name -> a builder, so YAML configs pick models.

Each model file registers its builder with `@register_model("name", params=...)`. A builder takes the
model section of the config plus the input dimensions the task derives from its schema, and returns an
nn.Module. `params` is a strict pydantic model of the section's keys (`params_schema` builds it from the
model's config dataclass and constructor), so a misspelt key is an error, in the config and here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from torch import nn

ModelBuilder = Callable[..., nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}
_PARAMS: dict[str, type[ModelParams]] = {}
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


class ModelParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _as_list(tp: Any) -> Any:
    """tuple[X, ...] -> list[X]: YAML has lists, the builders turn them into tuples where a model wants one."""
    if typing.get_origin(tp) is tuple:
        return list[typing.get_args(tp)[0]]  # type: ignore[valid-type]
    return tp


def params_schema(name: str, *sources: Any, exclude: Iterable[str] = (), **extra: Any) -> type[ModelParams]:
    """A strict pydantic model of the keyword parameters of a builder: the fields of the dataclasses and the
    keyword arguments of the classes in `sources`, less `exclude` (what the task derives, e.g. input sizes),
    plus `extra` (name=(type, default))."""
    fields: dict[str, Any] = {}
    for source in sources:
        if dataclasses.is_dataclass(source):
            hints = typing.get_type_hints(source)
            for f in dataclasses.fields(source):
                default = f.default if f.default is not dataclasses.MISSING else Field(default_factory=f.default_factory)
                fields[f.name] = (_as_list(hints[f.name]), default)
        else:
            hints = typing.get_type_hints(source.__init__)
            for arg in inspect.signature(source.__init__).parameters.values():
                if arg.name != "self" and arg.default is not inspect.Parameter.empty:
                    fields[arg.name] = (_as_list(hints[arg.name]), arg.default)
    for key in exclude:
        fields.pop(key, None)
    return create_model(name, __base__=ModelParams, **fields, **extra)


def register_model(name: str, params: type[ModelParams]) -> Callable[[ModelBuilder], ModelBuilder]:
    def deco(fn: ModelBuilder) -> ModelBuilder:
        _BUILDERS[name] = fn
        _PARAMS[name] = params
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


def model_params(name: str) -> type[ModelParams]:
    """The keys the model section of `name` may hold (shared/config.py checks a config against it)."""
    _load_all()
    if name not in _PARAMS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _PARAMS[name]


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """The model `name` from its parameters plus the task's input sizes; an unknown parameter is a KeyError."""
    schema = model_params(name)
    unknown = sorted(k for k in kwargs if k not in schema.model_fields and k not in _input_names(name))
    if unknown:
        raise KeyError(f"unknown {name} parameter(s): {', '.join(unknown)} (allowed: {', '.join(schema.model_fields)})")
    return _BUILDERS[name](**kwargs)


def _input_names(name: str) -> set[str]:
    """The builder's own arguments (input sizes a task derives), which are not config keys."""
    return {a.name for a in inspect.signature(_BUILDERS[name]).parameters.values() if a.kind is a.POSITIONAL_OR_KEYWORD}
