"""The multimodal task's site explainer (binary and survival labels) on tiny synthetic sites: omics
blocks from the config, IG and layer-IG completeness, real omics values in the "why" lists, and
the written report."""

import json
import re

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from shared.data.omics import load_multimodal_site
from shared.errors import InputError
from shared.explain.multimodal_explainer import explain_multimodal_site, omics_block_columns, omics_column_names
from shared.explain.plots import axis_labels
from shared.explain.registry import ExplainOptions, explain_site, site_explainer
from shared.tasks.multimodal import OTHER_BLOCK
from shared.tasks.registry import build_task
from tests.shared.explain.explain_fixtures import MULTIMODAL_FEATURES, multimodal_config, prepared_site, tiny_model

BLOCKS = {"first four": MULTIMODAL_FEATURES[:4], "next three": MULTIMODAL_FEATURES[4:7]}
OPTIONS = ExplainOptions(n_patients=3, cohort_size=20, batch_size=10, ig_steps=16, ig_max_steps=128,
                         cohort_ig_steps=8, cohort_ig_max_steps=32)


@pytest.fixture(scope="module", params=["binary", "survival"])
def explained(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"mm_{request.param}")
    blocks = BLOCKS if request.param == "binary" else None  # survival: one block per feature (the default)
    site = prepared_site(multimodal_config(root / "data", request.param, blocks=blocks), root, seed=1)
    task = build_task(site.cfg)
    model = tiny_model(site.cfg)
    files = explain_site(task, model, site.site_dir, site.state_dir, root / "rep", OPTIONS)
    return request.param, site, model, files, json.loads(files.json.read_text())


def test_registered_for_multimodal():
    assert site_explainer("multimodal") is explain_multimodal_site


def test_block_columns_take_values_and_indicators():
    names = omics_column_names(["a", "b", "c"], missing_indicators=True)
    assert names == ["a", "b", "c", "a missing", "b missing", "c missing"]
    assert omics_block_columns({"ab": ["a", "b"], "c": ["c"]}, ["a", "b", "c"], True) == {"ab": [0, 1, 3, 4], "c": [2, 5]}
    assert omics_block_columns({"ab": ["a", "b"]}, ["a", "b", "c"], False) == {"ab": [0, 1]}


def test_omics_blocks_config_is_checked(tmp_path):
    task = build_task(multimodal_config(tmp_path, blocks=BLOCKS))
    assert task.omics_blocks == {**BLOCKS, OTHER_BLOCK: MULTIMODAL_FEATURES[7:]}
    assert build_task(multimodal_config(tmp_path)).omics_blocks == {f: [f] for f in MULTIMODAL_FEATURES}
    with pytest.raises(InputError, match=r"model.omics_blocks.bad: not in model.features: GENE999"):
        build_task(multimodal_config(tmp_path, blocks={"bad": ["GENE999"]}))
    with pytest.raises(InputError, match=r"model.omics_blocks.empty: expected a non-empty list"):
        build_task(multimodal_config(tmp_path, blocks={"empty": []}))


def test_cohort_groups_are_the_blocks_and_modalities(explained):
    label_type, _, _, _, numbers = explained
    blocks = [*BLOCKS, OTHER_BLOCK] if label_type == "binary" else MULTIMODAL_FEATURES
    cohort = numbers["cohort"]
    assert set(cohort["modality contributions (mean |output - output without the modality|)"]) == {"omics", "text"}
    assert set(cohort["layer integrated gradients on each modality's input projection (mean |relevance|)"]) == {"omics", "text"}
    assert set(cohort["integrated gradients per omics block and for the whole text embedding (mean |attribution|)"]) == {
        *blocks, "text"}
    assert set(cohort["feature ablation: omics blocks and modalities removed (mean |change of the output|)"]) == {
        *blocks, "omics", "text"}
    assert numbers["output_name"] == ("predicted probability" if label_type == "binary"
                                      else "predicted risk score (log relative hazard)")


def test_ig_and_layer_ig_completeness(explained):
    _, site, model, _, numbers = explained
    for patient in numbers["patients"]:
        change = patient["output"] - patient["baseline_output"]
        total = sum(patient["omics_ig"].values()) + patient["text_ig"]
        assert abs(total - change - patient["ig_convergence_delta"]) < 1e-4
        assert patient["ig_converged"]
        assert abs(sum(patient["omics_block_ig"].values()) - sum(patient["omics_ig"].values())) < 1e-4  # blocks partition
        layer = patient["layer_ig"]
        assert abs(layer["omics"] + layer["text"] - change) <= abs(patient["layer_ig_convergence_delta"]) + 1e-4
        for modality in ("omics", "text"):
            if not patient["present"][modality]:
                assert layer[modality] == 0 and patient["modality_contributions"][modality] == 0


def test_ablation_really_removes_a_modality(explained):
    _, site, model, _, numbers = explained
    patient = numbers["patients"][0]
    row = list(site.ids.astype(str)).index(patient["patient_id"])
    omics, text, present = (t[row : row + 1] for t in site.tensors[:3])
    without_text = present.clone().bool()
    without_text[:, 1] = False
    with torch.no_grad():
        full, rerun = model(omics, text, present.bool()), model(omics, text, without_text)
    assert abs(patient["ablation_effects"]["text"] - float(full - rerun)) < 1e-5


def test_report_with_real_omics_values_and_named_axes(explained):
    label_type, site, _, files, numbers = explained
    data = load_multimodal_site(site.site_dir, MULTIMODAL_FEATURES, None)
    for patient in numbers["patients"]:
        assert patient["reasons"][0].startswith(("the omics profile ", "no omics profile"))
        assert patient["reasons"][1].startswith(("the clinical note", "no clinical note"))
        n_notes = int((data.notes["patient_id"] == patient["patient_id"]).sum())
        assert patient["n_notes"] == n_notes
        if patient["present"]["omics"]:
            raw = data.omics.loc[patient["patient_id"]]
            expected = {f: None if np.isnan(raw[f]) else pytest.approx(raw[f]) for f in MULTIMODAL_FEATURES}  # JSON: NaN -> null
            assert patient["raw_omics"] == expected
        if label_type == "survival" and patient["present"]["omics"]:  # one block per gene: each named with its count
            genes = [r for r in patient["reasons"] if r.split(" ")[0] in MULTIMODAL_FEATURES]
            assert len(genes) == OPTIONS.top_items
            for reason in genes:
                gene = reason.split(" ")[0]
                value = data.omics.loc[patient["patient_id"], gene]
                assert f"({value:.4g}; z " in reason or "not measured" in reason
    md = files.markdown.read_text()
    links = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert len(links) == 4 + 3 and all(imread(files.folder / link).ndim == 3 for link in links)


def test_patient_figure_names_blocks(explained, tmp_path):
    from shared.explain.multimodal_explainer import explain_multimodal_dataset

    label_type, site, model, _, _ = explained
    task = build_task(site.cfg)
    ids, dataset = task.prediction_inputs(site.site_dir, site.state_dir)
    blocks = omics_block_columns(task.omics_blocks, MULTIMODAL_FEATURES, True)
    exp = explain_multimodal_dataset(model, ids, dataset, omics_column_names(MULTIMODAL_FEATURES, True),
                                     ExplainOptions(**{**OPTIONS.__dict__, "n_patients": 1, "cohort_size": 4}), blocks,
                                     binary=label_type == "binary")
    _, y_labels = axis_labels(exp.figures[exp.patients[0].figures[0]])
    assert y_labels and set(y_labels) <= set(blocks) | {"text embedding"}
    for key in exp.cohort_figures:
        assert not any(label.isdigit() for label in axis_labels(exp.figures[key])[1])
    assert np.isfinite(exp.patients[0].output)
