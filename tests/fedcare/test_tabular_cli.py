"""Tabular inputs through the real CLI: bad data stops `fedcare simulate` with one line naming the table,
column and row before any federation starts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedcare.cli import main

REPO = Path(__file__).resolve().parents[2]


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return out[0]


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("creatinine [mg/dL]", "", "data row 3 (line 4): an empty field is a missing value"),
        ("NYHA class", "V", "data row 3 (line 4): 'V' is not one of the declared levels (I, II, III, IV"),
        ("age (years)", "old", "data row 3 (line 4): 'old' is not a number"),
    ],
)
def test_bad_cell_stops_simulate_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, value: str,
                                               problem: str) -> None:
    assert main(["synth", "--task", "tabular_binary", "--sites", "2", "--sizes", "30,30", "--out", str(tmp_path / "data")]) == 0
    table_path = tmp_path / "data" / "hospital_b" / "table.csv"
    table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    table.loc[2, column] = value
    table.to_csv(table_path, index=False)
    raw = yaml.safe_load((REPO / "fedcare" / "configs" / "tabular_binary.yaml").read_text())
    raw["data"] |= {"root": str(tmp_path / "data"), "sites": ["hospital_a", "hospital_b"]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["simulate", "--config", str(tmp_path / "run.yaml"), "--output", str(tmp_path / "runs")]) == 2
    assert _one_line(capsys).startswith(f"error: {table_path}: {column}: {problem}")  # brackets in names are printed
    assert not (tmp_path / "runs").exists()


def test_bad_declaration_stops_simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load((REPO / "fedcare" / "configs" / "tabular_survival.yaml").read_text())
    del raw["data"]["standardize"]["BMI kg/m^2"]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["simulate", "--config", str(tmp_path / "run.yaml")]) == 2
    assert _one_line(capsys).startswith(f"error: {tmp_path / 'run.yaml'}: data.standardize.BMI kg/m^2: missing")
