"""`fedcare predict --patient FILE.json` (retain_aki): one new patient's AKI probability, visit attention
alpha and variable attention beta from a run's checkpoint, as tables or --json; bad JSON exits 2 with
one line naming the file and the field."""

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcare.cli import main
from fedcare.predict import patient_tables, predict_patient_json
from server.checkpoints import save_checkpoint
from shared.config import config_from_dict
from shared.data.visit_features import VisitEncoder
from shared.errors import InputError
from shared.tasks.registry import build_task
from shared.tasks.retain_aki import ENCODER_FILE, predict_patient

PATIENT = {
    "patient_id": "P-42",
    "visits": [  # out of time order on purpose
        {"visit_id": "v3", "timestamp": "2150-03-06T08:15", "creatinine": 1.9, "bun": 33, "potassium": 5.0, "urine_output": 0.5},
        {"visit_id": "v1", "timestamp": "2150-03-01T09:00", "creatinine": 0.9, "bun": 15, "egfr": 85, "potassium": 4.1,
         "sodium": 139, "bicarbonate": 24, "hemoglobin": 13.1, "urine_output": 1.1},
        {"visit_id": "v2", "timestamp": "2150-03-04 10:30", "creatinine": 1.3, "bun": 24, "urine_output": None},
    ],
}  # fmt: skip
THRESHOLD = 0.2


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: on a busy 2-core machine threads only contend
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run folder as `fedcare simulate` leaves it: checkpoints/round_002.pt and sites/<site>/retain_encoder.json."""
    root = tmp_path_factory.mktemp("predict_patient")
    cfg = config_from_dict({"task": "retain_aki", "data": {"sites": ["hospital_a"], "synth_sizes": [40], "max_events": 32},
                            "model": {"name": "retain", "emb_dim": 6, "alpha_hidden": 4, "beta_hidden": 4, "dropout": 0.0}},
                           "<test>")  # fmt: skip
    task = build_task(cfg)
    task.synthesize(root / "data", ["hospital_a"], seed=2)
    state = root / "run" / "sites" / "hospital_a"
    task.prepare_site(root / "data" / "hospital_a", "hospital_a", state)
    torch.manual_seed(5)
    model = task.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.4 * torch.randn_like(p))  # not the initial weights
    ckpt = root / "run" / "checkpoints" / "round_002.pt"
    save_checkpoint(ckpt, model.state_dict(), {"config": cfg.to_dict(), "round": 2, "decision_threshold": THRESHOLD})
    patient = root / "patient.json"
    patient.write_text(json.dumps(PATIENT))
    expected = predict_patient(model, PATIENT, VisitEncoder.load(state / ENCODER_FILE))
    return {"root": root, "ckpt": ckpt, "patient": patient, "expected": expected, "cfg": cfg}


def test_json_output_equals_the_in_memory_model(run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--checkpoint", str(run["ckpt"]), "--patient", str(run["patient"]), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = run["expected"]
    assert printed["probability"] == pytest.approx(expected["probability"], abs=1e-7)
    assert printed["alpha"] == pytest.approx(expected["alpha"], abs=1e-7)
    assert np.allclose(printed["beta"], expected["beta"], atol=1e-7)
    assert printed["patient_id"] == "P-42" and printed["visit_ids"] == ["v1", "v2", "v3"]
    assert printed["n_visits"] == 3 and np.asarray(printed["beta"]).shape == (3, 6)
    assert sum(printed["alpha"]) == pytest.approx(1.0, abs=1e-6)
    assert printed["decision_threshold"] == THRESHOLD
    assert printed["predicted_label"] == int(printed["probability"] >= THRESHOLD)


def test_table_output_shows_probability_alpha_and_beta(run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--checkpoint", str(run["ckpt"]), "--patient", str(run["patient"])]) == 0
    out = capsys.readouterr().out
    expected = run["expected"]
    assert f"patient P-42: AKI probability {expected['probability']:.3f}" in out
    for visit_id, alpha, beta in zip(expected["visit_ids"], expected["alpha"], expected["beta"]):
        line = next(row for row in out.splitlines() if f" {visit_id} " in row)
        assert f"{alpha:.3f}" in line and f"{beta[0]:+.2f}" in line
    assert "2150-03-04 10:30" in out and "largest lab contributions" in out


def test_patient_tables_rows_add_up_to_the_logit(run: dict) -> None:
    headline, attention, per_visit = patient_tables(run["expected"], top_labs=2)
    assert "3 visits used" in headline and "predicted label" not in headline  # no threshold in this result
    assert attention.row_count == per_visit.row_count == 3
    totals = [float(cell) for cell in per_visit.columns[1].cells]
    assert sum(totals) + run["expected"]["bias"] == pytest.approx(run["expected"]["logit"], abs=3e-3)
    assert all(cell.count(",") == 1 for cell in per_visit.columns[2].cells)  # two labs each


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _visit(**labs: object) -> dict:
    return {"timestamp": "2150-03-01T09:00", "creatinine": 1.0, **labs}


BAD_PATIENTS = [  # (id, file content, field, words in the problem)
    ("corrupt", '{"visits": [{"timestamp": "2150-03-01"', "line 1", "not valid JSON"),
    ("empty file", "", "line 1", "not valid JSON"),
    ("not utf-8", b"\xff\xfe{\x00", None, "not UTF-8"),
    ("missing visits", json.dumps({"patient_id": "P-1"}), "visits", "expected an object with keys"),
    ("missing timestamp", json.dumps([{"creatinine": 1.0}]), "visits[0].timestamp", "ISO-8601"),
    ("timestamp not text", json.dumps([{"timestamp": 20150301}]), "visits[0].timestamp", "ISO-8601"),
    ("lab as text", json.dumps([_visit(), _visit(bun="24")]), "visits[1].bun", "not a number"),
    ("lab as bool", json.dumps([_visit(potassium=True)]), "visits[0].potassium", "not a number"),
    ("NaN", '[{"timestamp": "2150-03-01", "creatinine": NaN}]', "visits[0].creatinine", "not a number"),
    ("Infinity", '[{"timestamp": "2150-03-01", "egfr": Infinity}]', "visits[0].egfr", "not a number"),
    ("negative", json.dumps([_visit(urine_output=-1)]), "visits[0].urine_output", "not a number in 0-50"),
    ("implausible", json.dumps([_visit(creatinine=1e300)]), "visits[0].creatinine", "not a number in 0-40"),
    ("no visits", json.dumps({"patient_id": "P-1", "visits": []}), "visits", "non-empty list"),
    ("empty list", "[]", "visits", "non-empty list"),
    ("visits not a list", json.dumps({"visits": {"timestamp": "2150-03-01"}}), "visits", "non-empty list"),
    ("top level number", "7", "visits", "non-empty list"),
    ("visit not an object", json.dumps([["2150-03-01", 1.0]]), "visits[0]", "expected an object"),
    ("unknown feature", json.dumps([_visit(lactate=2.0)]), "visits[0].lactate", "unknown key"),
    ("misspelt feature", json.dumps([_visit(creatinin=2.0)]), "visits[0].creatinin", "unknown key"),
    ("patient_id wrong type", json.dumps({"patient_id": ["P"], "visits": [_visit()]}), "patient_id", "not an identifier"),
    ("visit_id wrong type", json.dumps([_visit(visit_id={"a": 1})]), "visits[0].visit_id", "not an identifier"),
    ("duplicate visit_id", json.dumps([_visit(visit_id="a"), _visit(visit_id="a")]), "visits[1].visit_id", "duplicate"),
]


@pytest.mark.parametrize(("content", "field", "problem"), [case[1:] for case in BAD_PATIENTS], ids=[c[0] for c in BAD_PATIENTS])
def test_bad_patient_json_names_file_and_field(run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               content: str | bytes, field: str | None, problem: str) -> None:
    path = _write(tmp_path / "new_patient.json", content)
    with pytest.raises(InputError) as info:
        predict_patient_json(run["ckpt"], path)
    assert info.value.source == str(path) and info.value.field == field and problem in info.value.problem

    assert main(["predict", "--checkpoint", str(run["ckpt"]), "--patient", str(path)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {field + ': ' if field else ''}")


def test_missing_patient_file_and_wrong_task(run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--checkpoint", str(run["ckpt"]), "--patient", str(tmp_path / "nobody.json")]) == 2
    assert "nobody.json: patient file not found" in capsys.readouterr().out
    other = config_from_dict({"task": "event_mortality"}).to_dict()  # a valid config of another task
    ckpt = tmp_path / "events.pt"
    save_checkpoint(ckpt, {}, {"config": other, "round": 1})
    with pytest.raises(InputError) as info:
        predict_patient_json(ckpt, run["patient"])
    assert info.value.field == "task" and "retain_aki checkpoint" in info.value.problem


def test_command_line_combinations(run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["predict", "--checkpoint", str(run["ckpt"])]
    assert main([*base, "--data", str(run["root"] / "data" / "hospital_a"), "--json"]) == 2
    assert "--json: only with --patient" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:  # argparse: exactly one of --data / --patient
        main(base)
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main([*base, "--data", "x", "--patient", str(run["patient"])])
    out = tmp_path / "p.csv"
    assert main([*base, "--data", str(run["root"] / "data" / "hospital_a"), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 41  # header + the site's 40 patients
