"""Typed configs per task (shared/config_schema.py, shared/config.py): an unknown key anywhere is one line
naming it, each task's data section holds only its own fields, the model section is typed per model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.config import config_from_dict, load_config
from shared.config_schema import SleepDiagnosisDataConfig
from shared.errors import InputError
from shared.tasks.registry import TASKS

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (REPO / "fedcare" / "configs").glob("*.yaml") if not p.name.startswith("site"))


def _retain(tmp_path: Path, **sections: object) -> Path:
    raw = yaml.safe_load((REPO / "fedcare" / "configs" / "retain_aki.yaml").read_text())
    for dotted, value in sections.items():
        *parents, leaf = dotted.split("__")
        node = raw
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    path = tmp_path / "retain_aki.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "key, field",
    [
        ("model__emb_dimm", "model.emb_dimm"),  # a typo the RETAIN builder used to drop silently
        ("data__max_epochs", "data.max_epochs"),  # a sleep field is not a RETAIN field
        ("privacy__site_level_dp__clip", "privacy.site_level_dp.clip"),
        ("privacy__targt_epsilon", "privacy.targt_epsilon"),
        ("roundz", "roundz"),
    ],
)
def test_an_unknown_key_is_one_line_naming_it_and_the_allowed_keys(tmp_path: Path, key: str, field: str) -> None:
    path = _retain(tmp_path, **{key: 3})
    with pytest.raises(InputError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {field}: unknown key (allowed: ") and "\n" not in msg
    if field == "model.emb_dimm":
        assert "emb_dim, alpha_hidden, beta_hidden, dropout, n_outputs" in msg
    if field == "data.max_epochs":
        assert "max_events" in msg and "channel_slots" not in msg


def test_the_cli_exits_2_with_the_line_and_writes_nothing(tmp_path: Path) -> None:
    path = _retain(tmp_path, model__emb_dimm=8, output_dir=str(tmp_path / "runs"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "fedcare", "simulate", "--config", str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{path}: model.emb_dimm: unknown key (allowed: emb_dim," in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "section, value, field, problem",
    [
        ("model__emb_dim", "big", "model.emb_dim", "must be a valid integer, got 'big'"),
        ("model__name", "event_transformer", "model.name", "is not a model of task retain_aki (allowed: retain)"),
        ("data__max_events", 0, "data.max_events", "must be greater than or equal to 1, got 0"),
        ("train__rounds", True, "train.rounds", "must be a valid integer, got True"),
    ],
)
def test_wrong_values_name_the_field(tmp_path: Path, section: str, value: object, field: str, problem: str) -> None:
    path = _retain(tmp_path, **{section: value})
    with pytest.raises(InputError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {field}: ") and problem in str(err.value)


def test_a_retain_dump_holds_only_retain_fields(tmp_path: Path) -> None:
    from fedcare.simulation import write_resolved_config

    cfg = load_config(REPO / "fedcare" / "configs" / "retain_aki.yaml")
    write_resolved_config(cfg, tmp_path)
    dumped = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert set(dumped["data"]) == {"root", "sites", "val_fraction", "split_seed", "synth_sizes", "max_events", "standardize"}
    assert dumped["model"] == {"name": "retain", "emb_dim": 8, "alpha_hidden": 8, "beta_hidden": 8, "dropout": 0.0}
    assert config_from_dict(dumped, "config.yaml").to_dict() == cfg.to_dict()  # the dump loads back unchanged


def test_each_task_has_its_own_data_fields() -> None:
    fields = {name: set(cls.data_config.model_fields) for name, cls in TASKS.items()}
    assert "channel_slots" not in fields["retain_aki"] | fields["event_mortality"] | fields["tabular_binary"]
    assert "covariates" not in fields["sleep_staging"] | fields["multimodal"]
    assert "outcomes" in fields["sleep_diagnosis"] and "outcomes" not in fields["sleep_staging"]
    assert "label_column" in fields["tabular_binary"] and "label_column" not in fields["tabular_survival"]
    assert TASKS["sleep_diagnosis"].data_config is SleepDiagnosisDataConfig


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_loads_and_builds_its_model(path: Path) -> None:
    cfg = load_config(path)
    task = TASKS[cfg.task](cfg)
    assert sum(p.numel() for p in task.build_model().parameters()) > 0
    assert set(cfg.to_dict()["data"]) == set(TASKS[cfg.task].data_config.model_fields)
