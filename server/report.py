"""`fedcare report`: one HTML page per run, built at the coordinating center from the run folder.

The page opens offline: no JavaScript, no stylesheet or font from the network; its figures are PNG
files in a folder beside it (`report.html` -> `report/`), referenced by relative paths. Sections:
summary and run notes, per-site final metrics with CIs plus weighted and pooled estimates,
per-round curves, calibration, privacy audit, links to the sites' explanation reports, config.

It reads only what the center holds: config.yaml, metrics.json, summary.json, audit.json (or the
audit records handed in), and the site folders inside the run folder (simulation) for links.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.evaluation import POOLING_NOTE, outside_guarantee, pooled_calibration, pooled_metrics, site_calibration
from shared.errors import InputError
from shared.io import load_json, parse_yaml, read_text, write_text
from shared.privacy.dp_evaluation import EXACT_MARKER
from shared.templating import render

SECTIONS = ("summary", "notes", "metrics", "test", "curves", "calibration", "privacy", "explanations", "config")
_EXPLANATION_PATTERNS = ("explanations/**/report.html", "explanations/**/report.md")


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
            if not (run_dir / name).is_file():
                raise InputError(run_dir / name, None, "missing: not a finished fedcare run folder")
            loaded[name] = load_json(run_dir / name)
        config_file = run_dir / "config.yaml"
        config_text = read_text(config_file) if config_file.is_file() else ""
        config = parse_yaml(config_text, config_file) or {}
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
        audits = load_json(run.path / "audit.json")
    images = _write_figures(run, figures, out.parent)
    page = render(
        "run_report.html.j2",
        title=f"fedcare run {run.summary.get('run_id', run.path.name)}",
        summary=_summary(run),
        notes=_notes(run),
        metrics=_metrics(run),
        test=_test(run),
        curves=_curves(images),
        calibration=_calibration(run, images.get("calibration")),
        privacy=_privacy(audits),
        explanations=_explanations(run, out.parent),
        config_text=run.config_text or "(config.yaml missing)",
    )
    write_text(out, page)
    return out


# ---------------------------------------------------------------- sections: the template's values


def _summary(run: RunFolder) -> list[tuple[str, Any]]:
    s = run.summary
    pm = s.get("primary_metric", "auroc")
    return [
        ("task", s.get("task")),
        ("sites", ", ".join(run.sites)),
        ("rounds planned / with training", f"{s.get('rounds_planned', '-')} / {s.get('rounds_with_training', '-')}"),
        ("complete", s.get("complete")),
        ("wall time", f"{s.get('wall_time_s', '-')} s"),
        (f"final weighted {pm}", _num(s.get("final_weighted", {}).get(pm))),
        ("decision threshold (stored with the model)", _num(s.get("decision_threshold"))),
        ("final checkpoint", s.get("final_checkpoint")),
    ]


def _notes(run: RunFolder) -> list[str]:
    events = run.summary.get("events") or run.metrics.get("events") or []
    stopped = [
        f"{site}: stopped in round {stop['round']} ({stop['status']}: {stop.get('reason', '')})"
        for site, info in run.summary.get("sites", {}).items()
        if (stop := info.get("first_stop"))
    ]
    return list(dict.fromkeys([*events, *stopped]))


def _metric_names(evaluations: dict[str, dict[str, float]], primary: str) -> list[str]:
    names = {
        m for ev in evaluations.values() for m in ev
        if m not in ("num-examples", "threshold", EXACT_MARKER, "sensitivity", "specificity")
        and not m.endswith(("_ci_low", "_ci_high")) and not m.startswith(("calib_bin_", "f1_class_"))
    }
    return sorted(names, key=lambda m: (m != primary, m == "val_loss", m))


def _metrics(run: RunFolder) -> dict[str, Any] | None:
    evaluations = run.final_evaluations()
    if not evaluations:
        return None
    primary = run.summary.get("primary_metric", "auroc")
    names = _metric_names(evaluations, primary)
    sites_info = run.summary.get("sites", {})
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
    return {
        "columns": ("site", "released as", "n val", "rounds trained", "epsilon", *names, "threshold"),
        "rows": rows,
        "outside": outside_guarantee(evaluations),
        "pooling_note": POOLING_NOTE,
    }


def _test(run: RunFolder) -> dict[str, Any] | None:
    """The final model on the sites' fixed test splits (summary.json `test`, written by `fedcare evaluate`)."""
    test = run.summary.get("test")
    if not test:
        return None
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
    return {"round": test.get("round"), "ci": test.get("ci", ""), "pooled_note": test.get("pooled_note", ""),
            "columns": ("site", "n", "events" if survival else "positives", *metrics), "rows": rows}


_CURVE_CAPTIONS = {
    "train_loss": "Training loss per site and round (mean over the round's DP-SGD steps).",
    "primary_metric": "Validation metric of each round's global model per site, and the weighted mean.",
    "epsilon": "Cumulative privacy spent (epsilon) per site after each round; dashed: each site's target.",
}


def _curves(images: dict[str, str]) -> list[dict[str, str]]:
    return [{"src": images[key], "alt": key, "caption": text} for key, text in _CURVE_CAPTIONS.items() if key in images]


def _calibration(run: RunFolder, image: str | None) -> dict[str, Any] | None:
    if image is None:
        return None
    bins = run.summary.get("final_calibration") or pooled_calibration(run.final_evaluations())
    rows = [
        (f"[{b['bin'] / 10:.1f}, {(b['bin'] + 1) / 10:.1f})", _num(b["count"], 0), b["n_sites"], _num(b["predicted"]),
         _num(b["observed"]))
        for b in bins
    ]
    return {"image": image, "rows": rows, "recalibration": _recalibration(run.summary.get("recalibration"))}


def _recalibration_rows(recal: dict[str, Any] | None) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]] | None:
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


def _recalibration(recal: dict[str, Any] | None) -> dict[str, Any] | None:
    data = _recalibration_rows(recal)
    if data is None:
        return None
    summary, bins = data
    return {"summary": summary, "bins": bins, "note": recal.get("note", "")}


def _privacy(audits: Sequence[dict[str, Any]] | None) -> dict[str, Any] | None:
    if not audits:
        return None
    rows, problems = [], []
    for a in audits:
        target = a.get("target_epsilon") if a.get("target_epsilon") is not None else a.get("lifetime_epsilon")
        status = str(a.get("status"))
        rows.append((
            a.get("site"), _num(target, 4), _num(a.get("recorded_epsilon"), 4), _num(a.get("recomputed_epsilon"), 4),
            f"{_num(a.get('evaluation_epsilon', 0.0), 4)} ({a.get('evaluation_releases', 0)})",
            "-" if a.get("delta") is None else f"{a['delta']:g}", a.get("rounds_trained"),
            {"text": status, "css": "ok" if status in ("ok", "budget_exhausted") else "bad"},
        ))
        problems.extend(f"{a.get('site')}: {p}" for p in a.get("problems", []))
    return {"rows": rows, "problems": problems}


def _explanations(run: RunFolder, page_dir: Path) -> list[dict[str, str]]:
    return [
        {"site": site, "href": os.path.relpath(path, page_dir), "text": str(path.relative_to(state))}
        for site, state in run.site_state_dirs().items()
        for pattern in _EXPLANATION_PATTERNS
        for path in sorted(state.glob(pattern))
    ]


# ---------------------------------------------------------------- figures


def _write_figures(run: RunFolder, figures: Path, page_dir: Path) -> dict[str, str]:
    """Draws the PNGs; returns name -> path relative to the page."""
    from matplotlib.figure import Figure  # the Agg canvas, without pyplot's global state

    from shared.plots import epsilon_figure, save_png, series_figure

    made: dict[str, Figure] = {}
    rounds, sites = run.rounds, run.sites
    primary = run.summary.get("primary_metric", "auroc")

    def per_site(phase: str, metric: str) -> dict[str, list[tuple[int, float | None]]]:
        return {s: [(r, run.record(r, s).get(phase, {}).get(metric)) for r in rounds] for s in sites}

    if rounds:
        losses = per_site("train", "train_loss")
        if any(v is not None for points in losses.values() for _, v in points):  # runs from before issue 17 only
            made["train_loss"] = series_figure(losses, "training loss", "Training loss")
        weighted = [(r, run.metrics.get("weighted", {}).get(str(r), {}).get(primary)) for r in rounds]
        made["primary_metric"] = series_figure(
            per_site("evaluate", primary), f"validation {primary}", f"Validation {primary} per round",
            extra=("weighted mean", weighted),
        )
        made["epsilon"] = epsilon_figure(per_site("train", "epsilon"), _site_targets(run.config, sites))
    evaluations = run.final_evaluations()
    if any(site_calibration(ev) for ev in evaluations.values()):
        made["calibration"] = _calibration_figure(evaluations)
    return {name: Path(os.path.relpath(save_png(figure, figures / f"{name}.png"), page_dir)).as_posix()
            for name, figure in made.items()}


def _site_targets(config: dict[str, Any], sites: Iterable[str]) -> dict[str, float]:
    privacy = config.get("privacy") or {}
    if "target_epsilon" not in privacy:
        return {}
    return {s: float((privacy.get("site_targets") or {}).get(s, privacy["target_epsilon"])) for s in sites}


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
