"""RETAIN, multimodal and PSG explainers at the model level (their tasks are wired elsewhere):
report content with clinical sentences and named axes, written as a site report."""

import json

import numpy as np
import torch
from torch.utils.data import TensorDataset

from shared.explain.multimodal_explainer import explain_multimodal_dataset
from shared.explain.plots import axis_labels
from shared.explain.registry import ExplainOptions
from shared.explain.report import write_site_report
from shared.explain.retain_explainer import explain_retain_dataset, trend_phrase, visit_labels
from shared.explain.sleep_explainer import explain_sleep_tensors
from tests.shared.explain.explain_fixtures import tiny_diagnosis, tiny_multimodal, tiny_retain, tiny_staging

LABS = ["creatinine", "bun", "potassium", "urine_output"]
OPTIONS = ExplainOptions(n_patients=2, ig_steps=16, ig_max_steps=64, cohort_ig_steps=8, cohort_ig_max_steps=32, batch_size=4)


def test_trend_phrases_from_visit_values():
    assert trend_phrase("creatinine", np.array([1.0, 1.0, 1.2, 1.5])) == "creatinine rose in the last 2 visits"
    assert trend_phrase("creatinine", np.array([1.0, 2.0, 1.5])) == "creatinine fell at the last visit"
    assert trend_phrase("bun", np.array([1.0, 1.0])) == "bun was steady, above the site average"
    assert trend_phrase("bun", np.array([0.1])) == "bun was steady, near the site average"
    assert visit_labels(3) == ["visit -2", "visit -1", "last visit"]


def test_retain_explainer(tmp_path):
    model = tiny_retain()
    x = torch.randn(6, 5, 4)
    x[0, :, 0] = torch.tensor([-1.0, -0.5, 0.0, 0.8, 1.6])  # patient p0: creatinine rising at every visit
    valid = torch.ones(6, 5, dtype=torch.bool)
    valid[3, 2:] = False
    ids = np.array([f"p{i}" for i in range(6)])
    exp = explain_retain_dataset(model, ids, TensorDataset(x, valid, torch.zeros(6)), LABS,
                                 ExplainOptions(**{**OPTIONS.__dict__, "patients": ["p0", "p3"], "top_items": 4}))
    assert [p.patient_id for p in exp.patients] == ["p0", "p3"]
    lab_reasons = [r for r in exp.patients[0].reasons if "RETAIN contribution" in r]
    assert len(lab_reasons) == 4 and [r.split(" ")[0] for r in lab_reasons] != LABS  # every lab, largest |contribution| first
    totals = np.abs(np.asarray(exp.patients[0].numbers["contributions"]).sum(0))
    assert [r.split(" ")[0] for r in lab_reasons] == [LABS[k] for k in np.argsort(-totals, kind="stable")]
    assert exp.patients[0].reasons[4].startswith("the model attended most to the visit ")
    assert any(r.startswith("creatinine rose in the last 4 visits, ") for r in exp.patients[0].reasons)
    p3 = exp.patients[1]
    assert np.asarray(p3.numbers["contributions"]).shape == (2, 4)  # only the 2 real visits
    fig = exp.figures[p3.figures[0]]
    assert axis_labels(fig) == (LABS, ["visit -1", "last visit"])
    assert axis_labels(exp.figures[p3.figures[1]]) == (LABS, ["visit -1", "last visit"])  # the attention figure
    assert set(exp.cohort) and all(set(v) == set(LABS) for v in exp.cohort.values())
    files = write_site_report(tmp_path, exp)
    assert json.loads(files.json.read_text())["patients"][0]["features"] == LABS


def test_multimodal_explainer():
    model = tiny_multimodal()
    omics, text = torch.randn(5, 6), torch.randn(5, 5)
    present = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [1, 1]], dtype=torch.bool)
    names = ["ESR1", "ERBB2", "MKI67", "PGR", "age", "tumor_size"]
    exp = explain_multimodal_dataset(model, np.arange(5), TensorDataset(omics, text, present, torch.zeros(5)), names,
                                     ExplainOptions(**{**OPTIONS.__dict__, "patients": ["1", "2"]}),
                                     omics_blocks={"expression": slice(0, 4), "clinical": slice(4, 6)})
    no_text, no_omics = exp.patients
    assert "no clinical note for this patient" in no_text.reasons[1]
    assert "no omics profile" in no_omics.reasons[0] and not any(r.split(" ")[0] in names for r in no_omics.reasons)
    blocks = [r for r in no_text.reasons if r.startswith("omics block ")]
    assert len(blocks) == 2 and all(r.split(" ")[2] in ("expression", "clinical") for r in blocks)
    assert set(exp.cohort["feature ablation: omics blocks and modalities removed (mean |change of the output|)"]) == {
        "expression", "clinical", "omics", "text"}
    y_labels = axis_labels(exp.figures[no_text.figures[0]])[1]
    assert set(y_labels) == {"expression", "clinical", "text embedding"}


def test_sleep_explainers_staging_and_diagnosis():
    x = torch.randn(3, 3, 2 * 6, 64)
    channel_valid = torch.tensor([[True, True, True], [True, False, True], [True, True, True]])
    epoch_valid = torch.tensor([[True, True], [True, True], [True, False]])
    channels, modality = ["C3-M2", "Airflow", "ECG"], torch.tensor([0, 1, 2])
    options = ExplainOptions(**{**OPTIONS.__dict__, "patients": ["r1", "r2"]})
    exp = explain_sleep_tensors(tiny_staging(), np.array(["r1", "r2", "r3"]), x, channel_valid, epoch_valid, channels,
                                modality, ["BAS", "RESP", "EKG"], options)
    first, second = exp.patients
    assert first.reasons[0].startswith("predicted stages over")
    x_labels, y_labels = axis_labels(exp.figures[first.figures[0]])
    assert y_labels == channels and x_labels == ["0s", "30s"]
    assert abs(second.numbers["ablation_effects"]["RESP"]) < 1e-5  # its RESP channel is missing already
    assert abs(first.numbers["ablation_effects"]["RESP"]) > 1e-5
    diag = explain_sleep_tensors(tiny_diagnosis(), np.array(["r1", "r2", "r3"]), x, channel_valid, epoch_valid, channels,
                                 modality, ["BAS", "RESP", "EKG"], OPTIONS, demographics=torch.randn(3, 2),
                                 demographics_names=["age", "sex"], outcome=1, outcome_name="stroke")
    assert diag.output_name == "hazard logit (stroke)"
    assert set(diag.patients[0].numbers["ablation_effects"]) == {"BAS", "RESP", "EKG", "age", "sex"}
