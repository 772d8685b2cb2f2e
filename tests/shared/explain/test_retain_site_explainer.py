"""The retain_aki task's site explainer on a tiny synthetic site: visit descriptions aligned with
the tensors, IG completeness, RETAIN attention on padded visits, and the written report (names on
every axis, real lab values in the "why" lists)."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread

from shared.data.visit_features import VisitEncoder, encode_visits
from shared.data.visits import FEATURES, LAB_FEATURES, load_visit_site
from shared.explain.attention import retain_attention
from shared.explain.integrated_gradients import REL_TOLERANCE
from shared.explain.plots import axis_labels
from shared.explain.registry import ExplainOptions, explain_site, explainable_tasks, site_explainer
from shared.explain.retain_explainer import describe_visits, explain_retain_site, trend_phrase
from shared.tasks.registry import build_task
from shared.tasks.retain_aki import ENCODER_FILE
from tests.shared.explain.explain_fixtures import prepared_site, retain_config, tiny_model

OPTIONS = ExplainOptions(n_patients=2, cohort_size=16, batch_size=8, ig_steps=16, ig_max_steps=128,
                         cohort_ig_steps=8, cohort_ig_max_steps=32)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return prepared_site(retain_config(tmp_path_factory.mktemp("retain_site") / "data", sizes=[30], max_visits=6),
                         tmp_path_factory.mktemp("retain_root"))


@pytest.fixture(scope="module")
def report(site, tmp_path_factory):
    task = build_task(site.cfg)
    model = tiny_model(site.cfg)
    with torch.no_grad():  # a steeper model than at initialisation: IG needs more steps, attention is not flat
        for p in model.parameters():
            p.mul_(4.0)
    files = explain_site(task, model, site.site_dir, site.state_dir, tmp_path_factory.mktemp("rep"), OPTIONS,
                         source="round 2")
    return model, files, json.loads(files.json.read_text())


def test_registered_for_retain_aki():
    assert {"event_mortality", "retain_aki", "multimodal"} <= set(explainable_tasks())
    assert site_explainer("retain_aki") is explain_retain_site


def test_describe_visits_aligns_with_the_tensors(site):
    data = load_visit_site(site.site_dir, require_label=False)
    encoder = VisitEncoder.load(site.state_dir / ENCODER_FILE)
    described = describe_visits(data.visits, data.patients, encoder, 6)
    x, valid = site.tensors[0].numpy(), site.tensors[1].numpy()
    assert described.values.shape == x.shape and valid.sum() < valid.size  # some patients are padded
    np.testing.assert_array_equal(~np.isnat(described.times), valid)
    assert np.isnan(described.values[~valid]).all()
    # the described raw values, encoded, are the model's inputs
    rows, steps = np.nonzero(valid)
    frame = pd.DataFrame(described.values[rows, steps], columns=list(FEATURES)).assign(patient_id="p")
    np.testing.assert_allclose(encoder.transform(frame), x[rows, steps], atol=1e-5)
    # the most recent visits are kept, in time order, and measured flags follow the file
    for row, pid in enumerate(data.patients[:5]):
        own = data.visits[data.visits["patient_id"] == pid].tail(6)
        n = len(own)
        np.testing.assert_array_equal(described.times[row, :n], own["timestamp"].to_numpy())
        np.testing.assert_array_equal(described.measured[row, :n], own[list(FEATURES)].notna().to_numpy())
        measured = own[list(FEATURES)].to_numpy()
        np.testing.assert_allclose(described.values[row, :n][described.measured[row, :n]], measured[~np.isnan(measured)])
    assert encode_visits(data.visits, data.patients, encoder, 6).x.shape == x.shape


def test_trend_phrase_quotes_real_values():
    z = np.array([0.0, 0.0, 0.8, 1.9])
    raw = np.array([1.1, 1.1, 1.6, 2.3])
    assert trend_phrase("creatinine", z, raw=raw, unit="mg/dL") == "creatinine rose in the last 2 visits (1.1 -> 2.3 mg/dL)"
    assert trend_phrase("sodium", np.array([0.1, 0.1]), raw=np.array([139.0, 139.0]), unit="mmol/L") == (
        "sodium was steady, near the site average (139 mmol/L at the last visit)")


def test_alpha_sums_to_one_over_valid_visits_and_padding_gets_zero(site, report):
    model, _, numbers = report
    x, valid = site.tensors[0], site.tensors[1]
    att = retain_attention(model, x, valid)
    torch.testing.assert_close(att.alpha.sum(1), torch.ones(len(x)))
    assert torch.all(att.alpha[~valid] == 0) and torch.all(att.lab_weights[~valid] == 0)
    assert att.lab_weights.shape == x.shape
    torch.testing.assert_close(att.lab_weights * torch.where(valid[..., None], x, 0.0), att.contributions)
    for patient in numbers["patients"]:
        alpha = np.asarray(patient["alpha"])
        row = list(site.ids).index(patient["patient_id"])
        assert len(alpha) == int(valid[row].sum()) and abs(alpha.sum() - 1) < 1e-5
        assert np.asarray(patient["lab_weights"]).shape == (len(alpha), len(FEATURES))


def test_ig_completeness_within_the_reported_delta(report):
    model, _, numbers = report
    for patient in numbers["patients"]:
        total = float(np.sum(patient["ig"]))
        change = patient["logit"] - patient["baseline_logit"]
        assert abs(total - change - patient["ig_convergence_delta"]) < 1e-4  # Captum's delta is exactly this gap
        assert patient["ig_converged"] and abs(patient["ig_convergence_delta"]) <= REL_TOLERANCE * abs(change) + 1e-3
        # layer IG on the visit embedding: per-visit relevances, same baseline, same completeness
        assert len(patient["layer_ig_per_visit"]) == len(patient["alpha"])
        assert abs(sum(patient["layer_ig_per_visit"]) - change) < abs(patient["layer_ig_convergence_delta"]) + 1e-4
        # RETAIN's decomposition is exact: contributions + output bias = logit
        assert abs(np.sum(patient["contributions"]) + float(model.out.bias.detach()[0]) - patient["logit"]) < 1e-4
        assert patient["ablation_effects"].keys() == set(FEATURES)


def test_report_files_with_named_axes_and_real_values(site, report):
    model, files, numbers = report
    assert numbers["task"] == "retain_aki" and numbers["source"] == "round 2" and numbers["cohort_size"] == 16
    assert set(numbers["cohort"]) == {
        "RETAIN contributions (mean |sum over visits|, logit units)",
        "integrated gradients (mean |attribution|, logit units)",
        "feature ablation (mean |change of the logit| with the lab at the site mean at every visit)",
    }
    assert all(set(values) == set(FEATURES) for values in numbers["cohort"].values())
    with torch.no_grad():
        probs = torch.sigmoid(model(site.tensors[0], site.tensors[1])).numpy()
    assert [p["patient_id"] for p in numbers["patients"]] == [str(site.ids[i]) for i in np.argsort(-probs, kind="stable")[:2]]

    data = load_visit_site(site.site_dir, require_label=False)
    patient = numbers["patients"][0]
    own = data.visits[data.visits["patient_id"] == patient["patient_id"]].tail(6)
    assert patient["visit_times"] == [str(t) for t in own["timestamp"]]
    lab_reasons = [r for r in patient["reasons"] if "RETAIN contribution" in r]
    assert len(lab_reasons) == 5
    for reason in lab_reasons:
        lab = reason.split(" ")[0]
        assert lab in FEATURES and re.search(r"\((\S+ -> )?\S+ " + re.escape(LAB_FEATURES[lab]), reason), reason
        quoted = float(re.search(r"([0-9][0-9.e+-]*) " + re.escape(LAB_FEATURES[lab]), reason).group(1))
        raw = np.asarray(patient["raw_values"])[:, FEATURES.index(lab)]
        assert abs(quoted - raw[-1]) <= 0.006 * abs(raw[-1]) + 1e-9  # the last visit's real value, 3 digits
    assert any(r.startswith("the model attended most to the visit ") for r in patient["reasons"])
    assert any(r.startswith("Ablation: with ") for r in patient["reasons"])

    md, page = files.markdown.read_text(), files.html.read_text()
    md_links = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert sorted(md_links) == sorted(re.findall(r'src="([^"]+\.png)"', page))
    assert len(md_links) == 3 + 2 * 2 and all(imread(files.folder / link).ndim == 3 for link in md_links)
    assert oct(files.json.stat().st_mode & 0o777) == "0o600"


def test_heatmaps_name_labs_and_visit_times(site, report):
    from shared.explain.retain_explainer import explain_retain_dataset

    model, _, numbers = report
    patient = numbers["patients"][0]
    task = build_task(site.cfg)
    ids, dataset = task.prediction_inputs(site.site_dir, site.state_dir)
    data = load_visit_site(site.site_dir, require_label=False)
    described = describe_visits(data.visits, pd.Index(ids), VisitEncoder.load(site.state_dir / ENCODER_FILE), 6)
    options = ExplainOptions(**{**OPTIONS.__dict__, "patients": [patient["patient_id"]], "cohort_size": 4})
    exp = explain_retain_dataset(model, ids, dataset, FEATURES, options, described=described)
    n = len(patient["alpha"])
    expected_rows = [f"{pd.Timestamp(t):%Y-%m-%d %H:%M} (" for t in patient["visit_times"]]
    for key in exp.patients[0].figures:
        x_labels, y_labels = axis_labels(exp.figures[key])
        assert x_labels == list(FEATURES)
        assert len(y_labels) == n and all(y.startswith(e) for y, e in zip(y_labels, expected_rows))
        assert y_labels[-1].endswith("(last visit)")
    for key in exp.cohort_figures:
        assert set(axis_labels(exp.figures[key])[1]) == set(FEATURES)
