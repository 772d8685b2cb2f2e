"""Figures with named axes, the site report (Markdown, HTML, JSON) and the event task's site
explainer end to end on a tiny synthetic site."""

import json
import re

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from shared.data.event_schema import EVENT_TYPES
from shared.data.events import load_event_site
from shared.errors import InputError
from shared.explain.event_explainer import describe_events
from shared.explain.plots import (
    axis_labels,
    duration_label,
    event_heads_figure,
    event_label,
    importance_figure,
    psg_figure,
    retain_figure,
)
from shared.explain.registry import ExplainOptions, explain_site, site_explainer
from shared.explain.report import PatientExplanation, SiteExplanation, write_site_report
from shared.plots import save_png
from shared.tasks.registry import build_task
from tests.shared.explain.explain_fixtures import tiny_model, tiny_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return tiny_site(tmp_path_factory.mktemp("report"), n=40)


def test_event_label_names_type_text_value_and_hours():
    assert event_label("lab", "Lactate", 3.04, 6.1) == "lab: Lactate 6.1 (-3.0 h)"
    assert event_label("microbiology", "BLOOD CULTURE: E. COLI", 12.0) == "microbiology: BLOOD CULTURE: E. COLI (-12.0 h)"
    assert event_label("lab", "x" * 80, 1.0).endswith("… (-1.0 h)")
    assert [duration_label(s) for s in (30, 90, 3600, 5430)] == ["30s", "1m30", "1h00", "1h30"]


def test_heatmap_axes_carry_names_not_indices(tmp_path):
    labels = [event_label("lab", "Lactate", 5.0, 6.1), event_label("prescription", "Norepinephrine", 1.5)]
    fig = event_heads_figure(np.array([[0.7, 0.2], [0.3, 0.8]]), labels, "stay 1")
    x, y = axis_labels(fig)
    assert y == labels and x == ["head 1", "head 2"]
    assert fig.axes[0].get_ylabel().startswith("event") and fig.axes[0].get_xlabel() == "attention-pooling head"
    fig = retain_figure(np.zeros((3, 2)), ["visit -2", "visit -1", "last visit"], ["creatinine", "bun"], "p")
    assert axis_labels(fig) == (["creatinine", "bun"], ["visit -2", "visit -1", "last visit"])
    times = [duration_label(30 * e) for e in range(100)]
    fig = psg_figure(np.random.rand(3, 100), ["BAS1", "RESP", "EKG"], times, "rec")
    x, y = axis_labels(fig)
    assert y == ["BAS1", "RESP", "EKG"] and set(x) <= set(times) and len(x) <= 40 and x[0] == "0s"
    fig = importance_figure(["age", "lab events", "event text"], [0.1, -0.5, 0.2], "cohort", "mean")
    assert axis_labels(fig)[1] == ["age", "event text", "lab events"]  # largest |value| at the top
    png = save_png(fig, tmp_path / "bar.png")
    assert imread(png).ndim == 3 and not list(tmp_path.glob("*.tmp"))


def _links(text: str, pattern: str) -> list[str]:
    return re.findall(pattern, text)


def test_write_site_report_links_every_figure(tmp_path):
    figures = {"cohort": importance_figure(["a", "b"], [1.0, 0.5], "c", "v"),
               "p1": importance_figure(["c"], [0.2], "p", "v")}
    exp = SiteExplanation(
        task="t", model="M", source="ckpt", output_name="probability", methods=["m <b>"], cohort={"IG": {"a": 1.0, "b": 0.5}},
        cohort_size=2, patients=[PatientExplanation("p<1>", 0.25, ["lab: Lactate rose"], ["p1"], {"ig": np.array([0.5])})],
        figures=figures, cohort_figures=["cohort"],
    )
    files = write_site_report(tmp_path / "out", exp)
    md, page = files.markdown.read_text(), files.html.read_text()
    md_links, html_links = _links(md, r"\]\(([^)]+\.png)\)"), _links(page, r'src="([^"]+\.png)"')
    assert sorted(md_links) == sorted(html_links) == ["figures/cohort.png", "figures/p1.png"]
    for link in md_links:
        assert (files.folder / link).is_file() and imread(files.folder / link).ndim == 3
    assert "p&lt;1&gt;" in page and "m &lt;b&gt;" in page  # escaped
    numbers = json.loads(files.json.read_text())
    assert numbers["patients"][0]["ig"] == [0.5] and numbers["patients"][0]["figures"] == ["figures/p1.png"]
    assert oct(files.json.stat().st_mode & 0o777) == "0o600"
    assert not [p for p in files.folder.rglob("*") if ".tmp" in p.name]
    bad = SiteExplanation("t", "M", "c", "o", [], {}, 0, [PatientExplanation("x", 0.1, [], ["missing"])])
    with pytest.raises(ValueError, match="missing"):
        write_site_report(tmp_path / "bad", bad)


def test_describe_events_aligns_with_the_tensors(site):
    data = load_event_site(site.site_dir, require_label=False)
    described = describe_events(data.stays, data.events, site.tensors[0].shape[1])
    events, valid, hours = site.tensors[0].numpy(), site.tensors[1].numpy(), site.tensors[3].numpy()
    np.testing.assert_array_equal(described.types != "", valid)
    types = np.array(EVENT_TYPES)[events[..., : len(EVENT_TYPES)].argmax(-1)]
    np.testing.assert_array_equal(described.types[valid], types[valid])
    np.testing.assert_allclose(described.hours[valid], hours[valid], atol=1e-3)


def test_event_site_explainer_end_to_end(site, tmp_path):
    task = build_task(site.cfg)
    model = tiny_model(site.cfg)
    seen = []
    options = ExplainOptions(n_patients=2, cohort_size=16, batch_size=8, ig_steps=16, ig_max_steps=64)
    files = explain_site(task, model, site.site_dir, site.state_dir, tmp_path / "rep", options,
                         progress=lambda stage, done, total: seen.append((stage, done, total)), source="round 3")
    assert seen[-1] == ("patients", 2, 2) and ("cohort", 16, 16) in seen
    numbers = json.loads(files.json.read_text())
    assert numbers["cohort_size"] == 16 and numbers["source"] == "round 3"
    with torch.no_grad():
        probs = torch.sigmoid(model(*[t.float() if t.is_floating_point() else t for t in site.tensors[:3]])).numpy()
    top2 = [str(site.ids[i]) for i in np.argsort(-probs, kind="stable")[:2]]
    assert [p["patient_id"] for p in numbers["patients"]] == top2  # the highest predicted risks
    patient = numbers["patients"][0]
    row = list(site.ids.astype(str)).index(patient["patient_id"])
    assert len(patient["events"]) == int(site.tensors[1][row].sum())
    assert abs(sum(e["ig"] for e in patient["events"]) + sum(patient["static_ig"].values())
               - (patient["logit"] - patient["baseline_logit"]) - patient["ig_convergence_delta"]) < 1e-3
    assert set(patient["ablation_effects"]) >= {f"{t} events" for t in EVENT_TYPES} | {"age", "event text"}
    event_reasons = [r for r in patient["reasons"] if "h before the last recorded event" in r]
    assert len(event_reasons) == 5 and all(r.split(":")[0] in EVENT_TYPES for r in event_reasons)
    for link in re.findall(r"\]\(([^)]+)\)", files.markdown.read_text()):
        assert (files.folder / link).is_file()
    assert len(files.figures) == 2 + 2


def test_unknown_patient_and_task_are_refused(site, tmp_path):
    task = build_task(site.cfg)
    with pytest.raises(InputError, match="patients: unknown patient id"):
        explain_site(task, tiny_model(site.cfg), site.site_dir, site.state_dir, tmp_path, ExplainOptions(patients=["nope"]))
    with pytest.raises(KeyError, match="no site explainer"):
        site_explainer("no_such_task")
