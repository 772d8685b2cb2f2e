"""Simulators live in shared/data/synth/, loaders only load: `fedcare synth` imports no loader, and
no module outside synth/ simulates."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from shared.data.event_schema import STATIC_CATEGORICAL
from shared.data.synth import SYNTH_TASKS

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "shared" / "data"
# draws from a distribution: what simulating data is made of (a seeded permutation that assigns a
# public cohort's patients to sites is not)
DRAWS = {"normal", "standard_normal", "lognormal", "poisson", "exponential", "binomial", "dirichlet", "gamma", "beta",
         "uniform", "integers", "choice", "random"}


def test_synth_command_imports_only_the_generators(tmp_path: Path):
    script = f"""
import json, sys
from fedcare.cli import main
for task, sizes in {{"events": "3,2", "retain_aki": "3,2", "multimodal": "3,2", "sleep_staging": "1,1",
                    "tabular_survival": "20,20"}}.items():
    assert main(["synth", "--task", task, "--sites", "2", "--sizes", sizes, "--out", {str(tmp_path)!r} + "/" + task]) == 0
print(json.dumps(sorted(sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    data_modules = {m for m in modules if m.startswith("shared.data.")}
    schemas = {f"shared.data.{s}_schema" for s in ("event", "visit", "omics", "psg")}
    allowed = {"shared.data.synth", "shared.data.writers"} | schemas
    assert {m for m in data_modules if not m.startswith("shared.data.synth.")} <= allowed
    assert {"shared.data.synth.events", "shared.data.synth.psg", "shared.data.synth.tabular"} <= data_modules
    for forbidden in ("shared.tasks", "shared.models", "shared.config", "torch", "server", "shared.data.tables"):
        assert not any(m == forbidden or m.startswith(forbidden + ".") for m in modules), forbidden
    # and it did write every task's sites, under the names asked for
    assert (tmp_path / "events" / "hospital_b" / "stays.csv").is_file()
    assert (tmp_path / "sleep_staging" / "hospital_a" / "recordings.csv").is_file()
    assert len(pd.read_csv(tmp_path / "tabular_survival" / "hospital_b" / "table.csv")) == 20


def _functions_and_draws(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    draws = {n.func.attr for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in DRAWS}
    return names, draws


def test_no_simulator_code_outside_synth():
    modules = sorted(DATA.glob("*.py"))
    assert len(modules) >= 10
    for path in modules:
        names, draws = _functions_and_draws(path)
        assert not {n for n in names if "synth" in n.lower() or "simulat" in n.lower()}, path.name
        assert not draws, f"{path.name} draws random data: {sorted(draws)}"
    # the check itself finds simulator code where it is
    names, draws = _functions_and_draws(DATA / "synth" / "events.py")
    assert "synthesize_event_sites" in names and {"normal", "choice"} <= draws


def test_generators_import_no_loader():
    for path in (DATA / "synth").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        loaders = {m for m in imported if m.startswith("shared.data.") and not m.startswith("shared.data.synth")
                   and not m.endswith("_schema") and m != "shared.data.writers"}
        assert not loaders, f"{path.name} imports {loaders}"
    assert set(SYNTH_TASKS.values()) == {p.stem for p in (DATA / "synth").glob("*.py")} - {"__init__"}


def test_care_units_have_one_definition(tmp_path: Path):
    from shared.data.synth.events import synthesize_event_sites

    stays = pd.read_csv(synthesize_event_sites(tmp_path, n_sites=1, sizes=[300])[0] / "stays.csv")
    assert set(stays["first_careunit"]) <= set(STATIC_CATEGORICAL["first_careunit"])
    assert len(set(stays["first_careunit"])) >= 5
    text = "\n".join(p.read_text() for p in DATA.rglob("*.py"))
    assert text.count('"Neuro Stepdown"') == 1
