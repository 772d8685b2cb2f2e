"""The HTML templates: every report section rendered, every value escaped, every template shipped."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import jinja2
import pytest

from server.report import SECTIONS
from shared.templating import TEMPLATES_DIR, render

HOSTILE = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"


def _run_report(**overrides) -> str:
    context = {
        "title": f"fedcare run {HOSTILE}",
        "summary": [("task", HOSTILE), ("complete", True)],
        "notes": [f"round 1: {HOSTILE} dropped"],
        "metrics": {"columns": ("site", "auroc"), "rows": [(HOSTILE, "0.800"), ("weighted mean", "0.800")],
                    "outside": {HOSTILE: ["auroc", "brier"]}, "pooling_note": "weighted: by n & site"},
        "test": {"round": 3, "ci": "bootstrap", "pooled_note": "pooled", "columns": ("site", "n"), "rows": [("a", 4)]},
        "curves": [{"src": 'report/eps.png" onerror="x', "alt": "epsilon", "caption": HOSTILE}],
        "calibration": {"image": "report/calibration.png", "rows": [("[0.0, 0.1)", "12", 2, "0.05", "0.04")]},
        "privacy": {"rows": [(HOSTILE, "1.0", "0.9", "0.9", "0.1 (1)", "1e-05", 2, {"text": HOSTILE, "css": "bad"})],
                    "problems": [f"{HOSTILE}: chain broken"]},
        "explanations": [{"site": "a", "href": "sites/a/report.html", "text": HOSTILE}],
        "config_text": f"task: {HOSTILE}\n",
    }
    return render("run_report.html.j2", **(context | overrides))


def test_the_run_report_has_every_section_in_order_and_escapes_every_value():
    page = _run_report()
    assert re.findall(r'<section id="([a-z_]+)">', page) == list(SECTIONS)
    assert HOSTILE not in page and "<script" not in page
    assert page.count(ESCAPED) == 12  # title x2, summary, note, metrics row + outside, caption, privacy x3, link, config
    assert 'src="report/eps.png&#34; onerror=&#34;x"' in page  # an attribute cannot be broken out of
    assert "by n &amp; site" in page
    assert f'<td><span class="bad">{ESCAPED}</span></td>' in page  # a styled cell: markup ours, text escaped
    assert '<tr class="agg"><td>weighted mean</td><td>0.800</td></tr>' in page  # the last 4 rows are aggregates


def test_empty_sections_say_so():
    page = _run_report(notes=[], metrics=None, test=None, curves=[], calibration=None, privacy=None, explanations=[])
    for text in ("No site was dropped; no notes.", "No site evaluated the final model.", "No rounds recorded.",
                 "No fixed test split was evaluated", "No site reported calibration bins", "No audit available",
                 "No site explanation report in this run folder"):
        assert text in page, text


def test_a_missing_value_is_an_error_not_an_empty_cell():
    with pytest.raises(jinja2.UndefinedError):
        render("run_report.html.j2", title="t")


def test_every_template_is_package_data():
    globs = tomllib.loads((TEMPLATES_DIR.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = [f"shared/{g}" for g in globs["shared"]]
    templates = [p.relative_to(TEMPLATES_DIR.parents[1]).as_posix() for p in Path(TEMPLATES_DIR).iterdir()]
    assert templates and all(any(fnmatch.fnmatch(t, g) for g in shipped) for t in templates), templates
