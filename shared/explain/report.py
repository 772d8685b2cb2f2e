"""The site's explanation report: Markdown + HTML (figures linked by relative path) + JSON numbers.

Written under the site's own folder (state_dir/explanations/<run-or-checkpoint>/), every file
atomically; nothing here is sent anywhere. Layout of a report folder:
    report.md, report.html   cohort importance, per-patient "why" lists, figures
    explanations.json        the raw numbers (attributions, ablation effects, attention, deltas)
    figures/*.png
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from shared.io import write_json, write_text
from shared.plots import save_png
from shared.templating import render

FIGURES_DIR = "figures"
FILE_MODE = 0o600  # per-patient content: readable by the site's service account only


@dataclass
class PatientExplanation:
    patient_id: str
    output: float  # the model's output for this patient (e.g. predicted probability)
    reasons: list[str]  # "why", most important first, in clinical terms
    figures: list[str] = field(default_factory=list)  # keys of SiteExplanation.figures
    numbers: dict[str, Any] = field(default_factory=dict)  # raw numbers for the JSON


@dataclass
class SiteExplanation:
    task: str
    model: str
    source: str  # the checkpoint / run the model came from
    output_name: str  # what PatientExplanation.output is ("predicted probability of in-hospital death")
    methods: list[str]  # how each number was computed, baselines included
    cohort: dict[str, dict[str, float]]  # method -> {group: mean |attribution|}
    cohort_size: int
    patients: list[PatientExplanation]
    figures: dict[str, Figure] = field(default_factory=dict)  # file stem -> figure
    figure_titles: dict[str, str] = field(default_factory=dict)
    cohort_figures: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)  # site-level raw numbers


@dataclass
class ReportFiles:
    folder: Path
    markdown: Path
    html: Path
    json: Path
    figures: list[Path]


def direction(value: float) -> str:
    """How a signed effect moved the model's output."""
    return "raised" if value > 0 else "lowered"


def probability_without(probability: float, logit_effect: float) -> float:
    """The predicted probability once a group whose effect on the logit is `logit_effect` is removed."""
    p = float(np.clip(probability, 1e-6, 1 - 1e-6))
    return float(1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) - logit_effect))))


def figure_stem(text: str) -> str:
    """A safe file stem from an id or a title."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "figure"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _markdown(exp: SiteExplanation) -> str:
    lines = [
        f"# Site explanation report: {exp.task}",
        "",
        f"Model `{exp.model}` from `{exp.source}`. Computed at this site; nothing in this folder leaves it.",
        "",
        "## Methods",
        *[f"- {m}" for m in exp.methods],
        "",
        f"## Cohort importance ({exp.cohort_size} patients)",
        "",
    ]
    for method, values in exp.cohort.items():
        lines += [f"### {method}", "", "| group | mean abs. value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in values.items()]
        lines.append("")
    for key in exp.cohort_figures:
        lines += [f"![{exp.figure_titles.get(key, key)}]({FIGURES_DIR}/{key}.png)", ""]
    lines += ["## Patients", ""]
    for p in exp.patients:
        lines += [f"### Patient {p.patient_id}", "", f"{exp.output_name}: **{p.output:.3f}**", "", "Why:"]
        lines += [f"{i + 1}. {reason}" for i, reason in enumerate(p.reasons)]
        lines.append("")
        for key in p.figures:
            lines += [f"![{exp.figure_titles.get(key, key)}]({FIGURES_DIR}/{key}.png)", ""]
    return "\n".join(lines)


def _html(exp: SiteExplanation) -> str:
    def images(keys: list[str]) -> list[dict[str, str]]:
        return [{"src": f"{FIGURES_DIR}/{key}.png", "alt": exp.figure_titles.get(key, key)} for key in keys]

    return render(
        "site_explanation.html.j2",
        title=f"Site explanation report: {exp.task}",
        model=exp.model,
        source=exp.source,
        methods=exp.methods,
        cohort_size=exp.cohort_size,
        cohort=[{"method": method, "rows": [(name, f"{value:.4f}") for name, value in values.items()]}
                for method, values in exp.cohort.items()],
        cohort_figures=images(exp.cohort_figures),
        output_name=exp.output_name,
        patients=[{"id": p.patient_id, "output": f"{p.output:.3f}", "reasons": p.reasons, "figures": images(p.figures)}
                  for p in exp.patients],
    )


def _json(exp: SiteExplanation) -> dict[str, Any]:
    return _jsonable(
        {
            "task": exp.task,
            "model": exp.model,
            "source": exp.source,
            "output_name": exp.output_name,
            "methods": exp.methods,
            "cohort_size": exp.cohort_size,
            "cohort": exp.cohort,
            "site": exp.numbers,
            "patients": [
                {"patient_id": p.patient_id, "output": p.output, "reasons": p.reasons,
                 "figures": [f"{FIGURES_DIR}/{k}.png" for k in p.figures], **p.numbers}
                for p in exp.patients
            ],
            "cohort_figures": [f"{FIGURES_DIR}/{k}.png" for k in exp.cohort_figures],
        }
    )


def write_site_report(out_dir: Path, exp: SiteExplanation) -> ReportFiles:
    """Write the figures, report.md, report.html and explanations.json into `out_dir`."""
    out_dir = Path(out_dir)
    referenced = set(exp.cohort_figures) | {k for p in exp.patients for k in p.figures}
    missing = referenced - set(exp.figures)
    if missing:
        raise ValueError(f"figures referenced but not built: {sorted(missing)}")
    written = [save_png(exp.figures[key], out_dir / FIGURES_DIR / f"{key}.png", FILE_MODE) for key in sorted(referenced)]
    md, page, numbers = out_dir / "report.md", out_dir / "report.html", out_dir / "explanations.json"
    write_text(md, _markdown(exp), FILE_MODE)
    write_text(page, _html(exp), FILE_MODE)
    write_json(numbers, _json(exp), FILE_MODE)
    return ReportFiles(out_dir, md, page, numbers, written)
