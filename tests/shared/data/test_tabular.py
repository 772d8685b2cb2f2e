"""Tabular sites: the covariate declaration in the config (one line per bad field, the model inputs
written into the resolved config), the strict table loader (one line per bad cell, naming table and
column) and the synthetic generator's format."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from shared.config import config_from_dict
from shared.data.synth.tabular import synthesize_tabular_sites, synthetic_data_config
from shared.data.tabular import check_tabular_config, load_tabular_site, schema_from_config
from shared.errors import InputError

COVARIATES = [
    {"name": "age, years", "type": "numeric"},
    {"name": "stage (TNM)", "type": "categorical", "levels": ["I", "II", "III"]},
    {"name": "smoker?", "type": "categorical", "levels": [0, 1]},
]
STANDARDIZE = {"age, years": {"mean": 60, "sd": 10}}


def _raw(task: str = "tabular_binary", **data: Any) -> dict[str, Any]:
    base = {"root": "x", "sites": ["a"], "covariates": copy.deepcopy(COVARIATES), "standardize": copy.deepcopy(STANDARDIZE)}
    return {"task": task, "data": {**base, **data}, "model": {"name": "linear"},
            "train": {"loss": "coxph" if task == "tabular_survival" else "bce"}}


def _cfg(task: str = "tabular_binary", **data: Any):  # noqa: ANN202
    return config_from_dict(_raw(task, **data), "run.yaml")


def _write(folder: Path, frame: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "table.csv", index=False)
    return folder


def _frame(**overrides: list[Any]) -> pd.DataFrame:
    cols = {"id": ["p1", "p2", "p3", "p4"], "age, years": [50, 70, "65.5", 40], "stage (TNM)": ["I", "III", "II", "I"],
            "smoker?": [0, 1, 1, 0], "label": [0, 1, 1, 0], "extra": ["ignored"] * 4}
    cols.update(overrides)
    return pd.DataFrame(cols)


# ---------------------------------------------------------------------------------------------
# config


def test_schema_layout_and_the_inputs_shown_in_the_resolved_config() -> None:
    cfg = _cfg()
    schema = schema_from_config(cfg)
    assert schema.input_names == ["age, years", "stage (TNM)=II", "stage (TNM)=III", "smoker?=1"]
    assert cfg.data.covariates[0]["inputs"] == ["x[0] = (age, years - 60) / 10"]
    assert cfg.data.covariates[1]["inputs"] == ["x[1] = 1 if stage (TNM) is II", "x[2] = 1 if stage (TNM) is III",
                                                "(reference level I: all 0)"]
    dumped = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))  # config.yaml of a run
    assert dumped["data"]["covariates"][2]["inputs"] == ["x[3] = 1 if smoker? is 1", "(reference level 0: all 0)"]
    again = config_from_dict(dumped, "config.yaml")  # a resolved config loads again (inputs recomputed)
    assert check_tabular_config(again).input_names == schema.input_names


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"covariates": []}, "data.covariates", "at least one covariate"),
        ({"standardize": {}}, "data.standardize.age, years", "every numeric covariate needs"),
        ({"standardize": {"age, years": {"mean": 1, "sd": 0}}}, "data.standardize.age, years", "sd > 0"),
        ({"standardize": {**STANDARDIZE, "stage (TNM)": {"mean": 0, "sd": 1}}}, "data.standardize.stage (TNM)", "not a numeric"),
        ({"covariates": [{"name": "a", "type": "text"}]}, "data.covariates[0].type", "numeric, categorical"),
        ({"covariates": [{"name": "a", "type": "categorical", "levels": ["x"]}]}, "data.covariates[0].levels", "at least 2"),
        ({"covariates": [{"name": "a", "type": "categorical", "levels": ["x", "x"]}]}, "data.covariates[0].levels", "unique"),
        ({"covariates": [*COVARIATES, {"name": "label", "type": "numeric"}]}, "data.covariates[3].name", "outcome"),
        ({"covariates": [*COVARIATES, COVARIATES[1]]}, "data.covariates[3].name", "declared twice"),
        ({"covariates": [{"name": "a", "type": "numeric", "unit": "mg"}]}, "data.covariates[0]", "unknown key 'unit'"),
    ],
)
def test_bad_declarations_name_the_field(data: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        _cfg(**data)
    assert err.value.source == "run.yaml" and err.value.field == field
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# loader


def test_loads_standardised_one_hot_inputs_and_the_split(tmp_path: Path) -> None:
    schema = schema_from_config(_cfg())
    site = load_tabular_site(_write(tmp_path / "a", _frame(split=["train", "TEST", " val", "train"])), schema)
    np.testing.assert_allclose(site.x, [[-1, 0, 0, 0], [1, 0, 1, 1], [0.55, 1, 0, 1], [-2, 0, 0, 0]])
    np.testing.assert_array_equal(site.outcome, [0, 1, 1, 0])
    assert list(site.ids) == ["p1", "p2", "p3", "p4"] and list(site.split) == ["train", "test", "val", "train"]
    survival = schema_from_config(_cfg("tabular_survival"))
    frame = _frame(time=[10, 0, 3.5, 7], event=[1, 0, 1, 1]).drop(columns="label")
    site = load_tabular_site(_write(tmp_path / "b", frame), survival)
    np.testing.assert_allclose(site.outcome, [[10, 1], [0, 0], [3.5, 1], [7, 1]])
    assert site.split is None
    new_patients = load_tabular_site(_write(tmp_path / "c", _frame().drop(columns="label")), schema, require_outcome=False)
    assert new_patients.outcome is None and new_patients.x.shape == (4, 4)


@pytest.mark.parametrize(
    ("overrides", "column", "message"),
    [
        ({"age, years": [50, "", 1, 2]}, "age, years", "data row 2 (line 3): an empty field is a missing value"),
        ({"age, years": [50, 1, "NaN", 2]}, "age, years", "data row 3 (line 4): 'NaN' is a missing value"),
        ({"age, years": [50, 1, "sixty", 2]}, "age, years", "'sixty' is not a number"),
        ({"age, years": [50, 1, "inf", 2]}, "age, years", "'inf' is not a finite number"),
        ({"stage (TNM)": ["I", "IV", "I", "I"]}, "stage (TNM)", "'IV' is not one of the declared levels"),
        ({"smoker?": ["0", "1", "1.0", "0"]}, "smoker?", "data row 3 (line 4): '1.0' is not one of the declared levels"),
        ({"label": [0, 2, 1, 0]}, "label", "'2' must be 0 or 1"),
        ({"label": [0, 1, None, 0]}, "label", "a missing value"),
        ({"id": ["p1", "p1", "p3", "p4"]}, "id", "'p1' is a duplicate id"),
        ({"split": ["train", "val", "tset", "train"]}, "split", "'tset' must be one of train, val, test"),
        ({"split": ["val", "val", "test", "test"]}, "split", "no 'train' row"),
    ],
)
def test_bad_cells_name_table_column_and_row(tmp_path: Path, overrides: dict[str, Any], column: str, message: str) -> None:
    folder = _write(tmp_path / "a", _frame(**overrides))
    with pytest.raises(InputError, match=re.escape(message)) as err:
        load_tabular_site(folder, schema_from_config(_cfg()))
    assert err.value.source == str(folder / "table.csv") and err.value.field == column
    assert "\n" not in str(err.value)


def test_missing_column_missing_table_and_empty_site(tmp_path: Path) -> None:
    schema = schema_from_config(_cfg())
    with pytest.raises(InputError, match="missing required column") as err:
        load_tabular_site(_write(tmp_path / "a", _frame().drop(columns="stage (TNM)")), schema)
    assert err.value.field == "stage (TNM)"
    (tmp_path / "no_table").mkdir()
    with pytest.raises(InputError, match="missing file"):
        load_tabular_site(tmp_path / "no_table", schema)
    with pytest.raises(InputError, match="no data rows: an empty site"):
        load_tabular_site(_write(tmp_path / "d", _frame().iloc[:0]), schema)
    with pytest.raises(InputError, match="missing required column") as err:  # survival needs time and event
        load_tabular_site(_write(tmp_path / "e", _frame()), schema_from_config(_cfg("tabular_survival")))
    assert err.value.field == "time"


def test_synthetic_sites_match_their_declaration(tmp_path: Path) -> None:
    for outcome, task in (("binary", "tabular_binary"), ("survival", "tabular_survival")):
        cfg = _cfg(task, **synthetic_data_config(outcome))
        made = synthesize_tabular_sites(tmp_path / outcome, ["a", "b"], outcome, [120, 80], seed=1)
        sites = [load_tabular_site(folder, schema_from_config(cfg)) for folder in made]
        assert [len(s.ids) for s in sites] == [120, 80] and sites[0].x.shape[1] == 12
        assert {"train", "val", "test"} == set(sites[0].split)
        if outcome == "survival":
            events = np.concatenate([s.outcome[:, 1] for s in sites])
            assert 0.25 < events.mean() < 0.75
        else:
            labels = np.concatenate([s.outcome for s in sites])
            assert 0.08 < labels.mean() < 0.4  # imbalanced
