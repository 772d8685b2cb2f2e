"""`fedcare report`: one HTML page per run, built at the coordinating center from the run folder.

The page opens offline: no JavaScript, no stylesheet or font from the network; its figures are PNG
files in a folder beside it (`report.html` -> `report/`), referenced by relative paths. Sections:
summary and run notes, per-site final metrics with CIs plus weighted and pooled estimates,
per-round curves, calibration, privacy audit, links to the sites' explanation reports, config.

It reads only what the center holds: config.yaml, metrics.json, summary.json, audit.json (or the
audit records handed in), and the site folders inside the run folder (simulation) for links.
"""

from __future__ import annotations

import html
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from server.evaluation import POOLING_NOTE, outside_guarantee, pooled_calibration, pooled_metrics, site_calibration
from shared.errors import InputError
from shared.privacy.atomic_write import write_atomically
from shared.privacy.dp_evaluation import EXACT_MARKER

SECTIONS = ("summary", "notes", "metrics", "test", "curves", "calibration", "privacy", "explanations", "config")
_EXPLANATION_PATTERNS = ("explanations/**/report.html", "explanations/**/report.md")
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}tr.agg td{background:#fafafa;font-style:italic}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.85em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.bad{color:#b00020;font-weight:bold}.ok{color:#1b5e20}.note{color:#555;font-size:.9em}
"""


@dataclass
class RunFolder:
    """What a run folder holds that the report shows (read once)."""

    path: Path
    config_text: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    summary: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path) -> RunFolder:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise InputError(run_dir, None, "no such run folder")
        loaded: dict[str, Any] = {}
        for name in ("metrics.json", "summary.json"):
            path = run_dir / name
            if not path.is_file():
                raise InputError(path, None, "missing: not a finished fedcare run folder")
            try:
                loaded[name] = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise InputError(path, f"line {err.lineno}", "not valid JSON") from None
        config_file = run_dir / "config.yaml"
        config_text = config_file.read_text() if config_file.is_file() else ""
        try:
            config = yaml.safe_load(config_text) or {}
        except yaml.YAMLError:
            raise InputError(config_file, None, "not valid YAML") from None
        return cls(run_dir, config_text, config, loaded["metrics.json"], loaded["summary.json"])

    @property
    def sites(self) -> list[str]:
        return list(self.metrics.get("sites") or self.summary.get("sites", {}))

    @property
    def rounds(self) -> list[int]:
        return sorted(int(r) for r in self.metrics.get("rounds", {}))

    def record(self, server_round: int, site: str) -> dict[str, Any]:
        return self.metrics.get("rounds", {}).get(str(server_round), {}).get(site, {})

    def final_evaluations(self) -> dict[str, dict[str, float]]:
        """site -> its evaluation of the last round's global model (what the summary pools)."""
        last = self.rounds[-1] if self.rounds else None
        return {site: rec["evaluate"] for site in self.sites if "evaluate" in (rec := self.record(last, site))} if last else {}

    def site_state_dirs(self) -> dict[str, Path]:
        root = self.path / "sites"
        state_root = (self.config.get("federation") or {}).get("site_state_root")
        if not root.is_dir() and state_root:
            root = Path(state_root)
        return {site: root / site for site in self.sites if (root / site).is_dir()}


def default_report_path(run_dir: Path) -> Path:
    return Path(run_dir) / "report.html"


def figures_dir_for(out: Path) -> Path:
    """report.html -> report/ beside it."""
    return out.with_name(out.stem)


def write_run_report(run_dir: Path, out: Path | None = None, audits: Sequence[dict[str, Any]] | None = None) -> Path:
    """Write the HTML report (and its PNG figures) for `run_dir`; returns the page's path.

    `audits`: privacy-audit records (dicts with the fields of shared.privacy.audit.LedgerAudit);
    None = read RUN_DIR/audit.json when present. Every file is written atomically.
    """
    run = RunFolder.read(run_dir)
    out = Path(out) if out is not None else default_report_path(run.path)
    figures = figures_dir_for(out)
    if audits is None and (run.path / "audit.json").is_file():
        audits = json.loads((run.path / "audit.json").read_text())
    images = _write_figures(run, figures, out.parent)
    body = [
        _summary_section(run),
        _notes_section(run),
        _metrics_section(run),
        _test_section(run),
        _curves_section(images),
        _calibration_section(run, images.get("calibration")),
        _privacy_section(audits),
        _explanations_section(run, out.parent),
        _config_section(run),
    ]
    title = f"fedcare run {run.summary.get('run_id', run.path.name)}"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>\n<h1>{_e(title)}</h1>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    write_atomically(out, page.encode("utf-8"))
    return out


# ---------------------------------------------------------------- sections


def _section(key: str, title: str, content: str) -> str:
    return f'<section id="{key}">\n<h2>{_e(title)}</h2>\n{content}\n</section>'


def _summary_section(run: RunFolder) -> str:
    s = run.summary
    pm = s.get("primary_metric", "auroc")
    threshold = s.get("decision_threshold")
    rows = [
        ("task", s.get("task")),
        ("sites", ", ".join(run.sites)),
        ("rounds planned / with training", f"{s.get('rounds_planned', '-')} / {s.get('rounds_with_training', '-')}"),
        ("complete", s.get("complete")),
        ("wall time", f"{s.get('wall_time_s', '-')} s"),
        (f"final weighted {pm}", _num(s.get("final_weighted", {}).get(pm))),
        ("decision threshold (stored with the model)", _num(threshold)),
        ("final checkpoint", s.get("final_checkpoint")),
    ]
    return _section("summary", "Summary", _table(("", ""), rows, show_header=False))


def _notes_section(run: RunFolder) -> str:
    events = run.summary.get("events") or run.metrics.get("events") or []
    stopped = [
        f"{site}: stopped in round {stop['round']} ({stop['status']}: {stop.get('reason', '')})"
        for site, info in run.summary.get("sites", {}).items()
        if (stop := info.get("first_stop"))
    ]
    notes = list(dict.fromkeys([*events, *stopped]))
    content = "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>" if notes else "<p>No site was dropped; no notes.</p>"
    return _section("notes", "Run notes", content)


def _metric_names(evaluations: dict[str, dict[str, float]], primary: str) -> list[str]:
    names = {
        m for ev in evaluations.values() for m in ev
        if m not in ("num-examples", "threshold", EXACT_MARKER, "sensitivity", "specificity")
        and not m.endswith(("_ci_low", "_ci_high")) and not m.startswith(("calib_bin_", "f1_class_"))
    }
    return sorted(names, key=lambda m: (m != primary, m == "val_loss", m))


def _metrics_section(run: RunFolder) -> str:
    evaluations = run.final_evaluations()
    if not evaluations:
        return _section("metrics", "Final metrics per site", "<p>No site evaluated the final model.</p>")
    primary = run.summary.get("primary_metric", "auroc")
    names = _metric_names(evaluations, primary)
    sites_info = run.summary.get("sites", {})
    header = ("site", "released as", "n val", "rounds trained", "epsilon", *names, "threshold")
    rows: list[tuple[Any, ...]] = []
    for site, ev in evaluations.items():
        info = sites_info.get(site, {})
        released_as = "exact: OUTSIDE the DP guarantee" if ev.get(EXACT_MARKER) else "DP (noisy sufficient statistics)"
        rows.append((
            site, released_as, _num(ev.get("num-examples"), 0), len(info.get("rounds_trained", [])),
            _num(info.get("epsilon"), 2), *(_with_ci(ev, m) for m in names), _num(ev.get("threshold")),
        ))
    pooled = run.summary.get("final_pooled") or pooled_metrics(evaluations)
    weighted = run.summary.get("final_weighted", {})
    total_n = sum(ev.get("num-examples", 0) for ev in evaluations.values())
    aggregate = run.summary.get("final_aggregate") or {}
    rows.append(("weighted mean", "", _num(total_n, 0), "", "", *(_num(weighted.get(m)) for m in names),
                 _num(run.summary.get("decision_threshold", weighted.get("threshold")))))
    rows.append(("all patients (summed DP releases)", "", _num(aggregate.get("num-examples"), 0), "", "",
                 *(_num(aggregate.get(m)) for m in names), _num(aggregate.get("threshold"))))
    rows.append(("range of site CIs", "", "", "", "", *(_range(pooled.get(m)) for m in names), ""))
    rows.append(("pooled (random effects)", "", "", "", "", *(_random_effects(pooled.get(m)) for m in names), ""))
    table = _table(header, rows, aggregate_rows=4)
    outside = outside_guarantee(evaluations)
    if outside:
        table += '<p class="bad">Outside the DP guarantee (the site policy allows exact metrics): ' + "; ".join(
            f"{_e(site)}: {_e(', '.join(keys))}" for site, keys in outside.items()) + "</p>"
    note = (
        f'<p class="note">Values of the last round\'s global model on each site\'s validation split. "DP": '
        "derived at the center from the site's noisy score histograms (inside its privacy guarantee, counted in "
        "its ledger; no CI); \"exact\": sent as computed, with the site's bootstrap 95% CI [low, high]. "
        f"{_e(POOLING_NOTE)} tau² and I² describe between-site "
        "heterogeneity of the pooled estimate.</p>"
    )
    return _section("metrics", "Final metrics per site", table + note)


def _test_section(run: RunFolder) -> str:
    """The final model on the sites' fixed test splits (summary.json `test`, written by `fedcare evaluate`)."""
    test = run.summary.get("test")
    if not test:
        return _section("test", "Test split", "<p>No fixed test split was evaluated in this run (tabular tasks: a "
                                              "<code>split</code> column, then <code>fedcare evaluate --run RUN_DIR</code>).</p>")
    survival = test.get("kind") == "survival"
    metrics = ["c_index"] if survival else ["auroc", "auprc", "brier", "ece"]

    def cell(report: dict[str, Any], metric: str) -> str:
        value = report.get(metric)
        if value is None or isinstance(value, str):
            return str(value or report.get("note", "-"))
        ci = f" [{_num(value['ci_low'])}, {_num(value['ci_high'])}]" if "ci_low" in value else ""
        return f"{_num(value['value'])}{ci}"

    rows = [
        (site, report.get("n", 0), report.get("n_events" if survival else "n_positive", "-"), *(cell(report, m) for m in metrics))
        for site, report in [*test.get("sites", {}).items(), ("pooled", test.get("pooled", {}))]
    ]
    columns = ("site", "n", "events" if survival else "positives", *metrics)
    note = (f"<p>Global model of round {_e(test.get('round'))}; {_e(test.get('ci', ''))}. "
            f"{_e(test.get('pooled_note', ''))}.</p>")
    return _section("test", "Test split", note + _table(columns, rows, aggregate_rows=1))


def _curves_section(images: dict[str, str]) -> str:
    captions = {
        "train_loss": "Training loss per site and round (mean over the round's DP-SGD steps).",
        "primary_metric": "Validation metric of each round's global model per site, and the weighted mean.",
        "epsilon": "Cumulative privacy spent (epsilon) per site after each round; dashed: each site's target.",
    }
    parts = [
        f'<figure><img src="{_e(images[key])}" alt="{_e(key)}"><figcaption>{_e(text)}</figcaption></figure>'
        for key, text in captions.items() if key in images
    ]
    return _section("curves", "Per-round curves", "\n".join(parts) or "<p>No rounds recorded.</p>")


def _calibration_section(run: RunFolder, image: str | None) -> str:
    if image is None:
        return _section("calibration", "Calibration", "<p>No site reported calibration bins for the final model.</p>")
    bins = run.summary.get("final_calibration") or pooled_calibration(run.final_evaluations())
    rows = [
        (f"[{b['bin'] / 10:.1f}, {(b['bin'] + 1) / 10:.1f})", _num(b["count"], 0), b["n_sites"], _num(b["predicted"]),
         _num(b["observed"]))
        for b in bins
    ]
    table = _table(("prediction bin", "patients", "sites", "mean predicted", "observed rate"), rows)
    note = (
        '<p class="note">Reliability bins as sent by the sites: 10 equal-width bins of the predicted '
        "probability; a site sends a bin only when it holds at least 10 validation patients, so small bins "
        "are missing. The pooled curve sums counts over the sites that sent a bin.</p>"
    )
    return _section(
        "calibration", "Calibration",
        f'<figure><img src="{_e(image)}" alt="calibration"><figcaption>Observed event rate against mean '
        "predicted probability per bin (marker area ~ patients).</figcaption></figure>" + table + note
        + _recalibration_html(run.summary.get("recalibration")),
    )


def recalibration_rows(recal: dict[str, Any] | None) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]] | None:
    """The data of the report's recalibration part (summary.json `recalibration`): (ECE rows: what, value),
    (reliability rows after recalibration: bin, patients, mean predicted, observed rate). None without a fit."""
    if not recal:
        return None
    cmap = recal.get("map")
    how = (f"{cmap['method']}: sigmoid({cmap['slope']:.3f} x logit + {cmap['intercept']:+.3f})" if cmap
           else f"{recal.get('method')}: no map fitted")
    summary = [("recalibration", how), ("fitted on", f"{recal.get('fitted_on')} ({_num(recal.get('patients'), 0)} patients)"),
               ("ECE before", _num(recal.get("ece_before"))), ("ECE after", _num(recal.get("ece_after"))),
               ("ECE after, each site under a map fitted on the others", _num(recal.get("ece_after_held_out_sites")))]
    bins = [(f"[{b['bin'] / 10:.1f}, {(b['bin'] + 1) / 10:.1f})", _num(b["count"], 0), _num(b["predicted"]),
             _num(b["observed"])) for b in recal.get("bins_after", [])]
    return summary, bins


def _recalibration_html(recal: dict[str, Any] | None) -> str:
    data = recalibration_rows(recal)
    if data is None:
        return ""
    summary, bins = data
    html = "<h3>Federated recalibration</h3>" + _table(("", "value"), summary)
    if bins:
        html += _table(("recalibrated bin", "patients", "mean predicted (recalibrated)", "observed rate"), bins)
    return html + f'<p class="note">{_e(recal.get("note", ""))}. `fedcare predict` applies the map.</p>'


def _privacy_section(audits: Sequence[dict[str, Any]] | None) -> str:
    if not audits:
        return _section("privacy", "Privacy audit", "<p>No audit available (no ledgers found).</p>")
    rows = []
    problems = []
    for a in audits:
        target = a.get("target_epsilon") if a.get("target_epsilon") is not None else a.get("lifetime_epsilon")
        status = str(a.get("status"))
        css = "ok" if status in ("ok", "budget_exhausted") else "bad"
        rows.append((
            a.get("site"), _num(target, 4), _num(a.get("recorded_epsilon"), 4), _num(a.get("recomputed_epsilon"), 4),
            f"{_num(a.get('evaluation_epsilon', 0.0), 4)} ({a.get('evaluation_releases', 0)})",
            "-" if a.get("delta") is None else f"{a['delta']:g}", a.get("rounds_trained"),
            f'<span class="{css}">{_e(status)}</span>',
        ))
        problems.extend(f"{a.get('site')}: {p}" for p in a.get("problems", []))
    table = _table(("site", "target epsilon", "spent epsilon (ledger)", "recomputed epsilon",
                    "of it evaluation (releases)", "delta", "rounds trained", "status"), rows, raw_columns={7})
    extra = "<ul>" + "".join(f'<li class="bad">{_e(p)}</li>' for p in problems) + "</ul>" if problems else ""
    note = (
        '<p class="note">Each site\'s signed, hash-chained ledger verified, and epsilon recomputed from the '
        "recorded mechanisms with an independent accountant (dp-accounting).</p>"
    )
    return _section("privacy", "Privacy audit", table + extra + note)


def _explanations_section(run: RunFolder, page_dir: Path) -> str:
    links = []
    for site, state in run.site_state_dirs().items():
        for pattern in _EXPLANATION_PATTERNS:
            for path in sorted(state.glob(pattern)):
                rel = os.path.relpath(path, page_dir)
                links.append(f'<li>{_e(site)}: <a href="{_e(rel)}">{_e(str(path.relative_to(state)))}</a></li>')
    content = (
        "<ul>" + "".join(links) + "</ul>" if links
        else "<p>No site explanation report in this run folder (explanations are written at each site).</p>"
    )
    return _section("explanations", "Site explanation reports", content)


def _config_section(run: RunFolder) -> str:
    text = run.config_text or "(config.yaml missing)"
    return _section("config", "Configuration", f"<pre>{_e(text)}</pre>")


# ---------------------------------------------------------------- figures


def _write_figures(run: RunFolder, figures: Path, page_dir: Path) -> dict[str, str]:
    """Draws the PNGs; returns name -> path relative to the page."""
    from matplotlib.figure import Figure  # the Agg canvas, without pyplot's global state

    made: dict[str, Figure] = {}
    rounds, sites = run.rounds, run.sites
    primary = run.summary.get("primary_metric", "auroc")
    if rounds:
        losses = {s: [run.record(r, s).get("train", {}).get("train_loss") for r in rounds] for s in sites}
        if any(v is not None for values in losses.values() for v in values):  # runs from before issue 17 only
            made["train_loss"] = _round_figure(rounds, losses, "training loss", "Training loss")
        weighted = [run.metrics.get("weighted", {}).get(str(r), {}).get(primary) for r in rounds]
        made["primary_metric"] = _round_figure(
            rounds, {s: [run.record(r, s).get("evaluate", {}).get(primary) for r in rounds] for s in sites},
            f"validation {primary}", f"Validation {primary} per round", extra=("weighted mean", weighted),
        )
        targets = _site_targets(run.config, sites)
        made["epsilon"] = _round_figure(
            rounds, {s: [run.record(r, s).get("train", {}).get("epsilon") for r in rounds] for s in sites},
            "cumulative epsilon", "Privacy spent per site", targets=targets,
        )
    evaluations = run.final_evaluations()
    if any(site_calibration(ev) for ev in evaluations.values()):
        made["calibration"] = _calibration_figure(evaluations)
    paths = {}
    for name, figure in made.items():
        path = figures / f"{name}.png"
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        write_atomically(path, buffer.getvalue())
        paths[name] = Path(os.path.relpath(path, page_dir)).as_posix()
    return paths


def _site_targets(config: dict[str, Any], sites: Iterable[str]) -> dict[str, float]:
    privacy = config.get("privacy") or {}
    if "target_epsilon" not in privacy:
        return {}
    return {s: float((privacy.get("site_targets") or {}).get(s, privacy["target_epsilon"])) for s in sites}


def _round_figure(
    rounds: list[int],
    series: dict[str, list[float | None]],
    ylabel: str,
    title: str,
    extra: tuple[str, list[float | None]] | None = None,
    targets: dict[str, float] | None = None,
) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.6), dpi=110)
    axes = figure.add_subplot()
    for index, (site, values) in enumerate(series.items()):
        points = [(r, v) for r, v in zip(rounds, values) if v is not None]
        color = f"C{index % 10}"
        if points:
            axes.plot(*zip(*points), marker="o", color=color, label=site)
        if targets and site in targets:
            axes.axhline(targets[site], linestyle="--", linewidth=0.8, color=color)
    if extra is not None:
        points = [(r, v) for r, v in zip(rounds, extra[1]) if v is not None]
        if points:
            axes.plot(*zip(*points), marker="s", color="black", linewidth=2, label=extra[0])
    if targets:
        axes.set_ylim(bottom=0)
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    axes.set_xticks(rounds)
    axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _calibration_figure(evaluations: dict[str, dict[str, float]]) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2, 5), dpi=110)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    for index, (site, ev) in enumerate(evaluations.items()):
        bins = site_calibration(ev)
        if bins:
            axes.scatter([b["predicted"] for b in bins], [b["observed"] for b in bins],
                         s=[12 + 2 * b["count"] ** 0.8 for b in bins], alpha=0.6, color=f"C{index % 10}", label=site)
    pooled = pooled_calibration(evaluations)
    axes.plot([b["predicted"] for b in pooled], [b["observed"] for b in pooled], marker="s", color="black", label="pooled")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("mean predicted probability")
    axes.set_ylabel("observed event rate")
    axes.set_title("Calibration (bins with >= 10 patients)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------- formatting


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return "-"
    return f"{value:.{digits}f}"


def _with_ci(values: dict[str, float], metric: str) -> str:
    point = _num(values.get(metric))
    if f"{metric}_ci_low" in values and f"{metric}_ci_high" in values:
        return f"{point} [{_num(values[f'{metric}_ci_low'])}, {_num(values[f'{metric}_ci_high'])}]"
    return point


def _range(pooled: dict[str, Any] | None) -> str:
    if not pooled or pooled.get("site_ci_min") is None:
        return ""
    return f"[{_num(pooled['site_ci_min'])}, {_num(pooled['site_ci_max'])}]"


def _random_effects(pooled: dict[str, Any] | None) -> str:
    re_ = (pooled or {}).get("random_effects")
    if not re_:
        return ""
    return (f"{_num(re_['estimate'])} [{_num(re_['ci_low'])}, {_num(re_['ci_high'])}] "
            f"(sites {re_['n_sites']}, tau² {re_['tau2']:.3g}, I² {100 * re_['i2']:.0f}%)")


def _table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], show_header: bool = True, aggregate_rows: int = 0,
    raw_columns: set[int] | None = None,
) -> str:
    """An HTML table; cells are escaped except in `raw_columns`; the last `aggregate_rows` rows are styled
    as aggregates."""
    raw_columns = raw_columns or set()
    lines = ["<table>"]
    if show_header:
        lines.append("<tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>")
    for index, row in enumerate(rows):
        css = ' class="agg"' if index >= len(rows) - aggregate_rows else ""
        cells = "".join(
            f"<td>{cell if i in raw_columns else _e('' if cell is None else cell)}</td>" for i, cell in enumerate(row)
        )
        lines.append(f"<tr{css}>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)
