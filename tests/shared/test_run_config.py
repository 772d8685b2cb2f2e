"""The flat run-config keys (pyproject `[tool.flwr.app.config]`) as the ServerApp and every ClientApp parse them:
defaults, command-line overrides, a config by name, by path or as resolved JSON, and one-line refusals."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict

from shared.config import load_config
from shared.errors import InputError
from shared.run_config import parse_run_config, run_config_keys

REPO = Path(__file__).resolve().parents[2]


def _defaults() -> dict:
    return flatten_dict(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])


def test_pyproject_defaults_name_a_shipped_config_and_a_run_named_after_flowers_run_id():
    spec = parse_run_config(_defaults(), 42)
    shipped = load_config(REPO / "fedcare" / "configs" / "event_mortality.yaml")
    assert spec.cfg.to_dict() == shipped.to_dict()
    assert spec.run_id == "flwr-42" and spec.run_dir == Path(shipped.output_dir) / "flwr-42" and not spec.resume


def test_command_line_overrides_change_only_what_they_name(tmp_path):
    rc = _defaults() | {"config": "tabular_binary", "rounds": 1, "seed": 3, "out": str(tmp_path / "runs"),
                        "data-root": str(tmp_path / "data"), "cpus-per-site": 2, "run-id": "trial-1", "resume": True}
    spec = parse_run_config(rc, 42)
    assert spec.cfg.task == "tabular_binary" and spec.cfg.train.rounds == 1 and spec.cfg.seed == 3
    assert spec.cfg.data.root == str(tmp_path / "data") and spec.cfg.federation.cpus_per_site == 2
    assert spec.run_id == "trial-1" and spec.run_dir == tmp_path / "runs" / "trial-1" and spec.resume
    untouched = load_config(REPO / "fedcare" / "configs" / "tabular_binary.yaml")
    assert spec.cfg.privacy == untouched.privacy and spec.cfg.model == untouched.model


def test_what_the_fedcare_commands_send_round_trips(tmp_path):
    cfg = load_config(REPO / "fedcare" / "configs" / "retain_aki.yaml")
    cfg.train.rounds = 7
    spec = parse_run_config(_defaults() | run_config_keys(cfg, "r-1", tmp_path / "run"), 99)
    assert spec.cfg.to_dict() == cfg.to_dict() and spec.run_id == "r-1" and spec.run_dir == (tmp_path / "run").resolve()


@pytest.mark.parametrize(("override", "field", "problem"), [
    ({"rounds": -1}, "rounds", "must be >= 1"),
    ({"rounds": 1.5}, "rounds", "whole number"),
    ({"seed": "x"}, "seed", "expected a number"),
    ({"cpus-per-site": -2}, "cpus-per-site", "must be > 0"),
    ({"config": ""}, "config", "empty"),
    ({"config": "{not json"}, "config", "not valid JSON"),
    ({"run-id": "../../x"}, "run-id", "letters, digits"),
])
def test_bad_values_are_one_line_naming_the_key(override, field, problem):
    with pytest.raises(InputError) as err:
        parse_run_config(_defaults() | override, 42)
    assert f"run config: {field}: " in str(err.value) and problem in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_config_name_is_named():
    with pytest.raises(InputError, match="no_such_task: config file not found"):
        parse_run_config(_defaults() | {"config": "no_such_task"}, 42)
