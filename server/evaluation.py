"""Federated evaluation at the center: the sites' whitelisted validation scalars combined into
weighted means, pooled (meta-analysis) estimates with CIs, a pooled calibration curve and the
decision threshold stored with the model. Only aggregate scalars are used; see POOLING_NOTE.

Under DP evaluation (the default) sites send noisy score histograms or confusion matrices
(shared/privacy/dp_evaluation.py); RunHistory derives each site's metrics from its release, and
`aggregate_metrics` derives the metrics of all validation patients together from the summed releases
(the pooled-data AUROC, with between-site pairs, which a mean of site AUROCs is not)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.calibration import CalibrationMap, fit_calibration
from shared.meta_analysis import random_effects_pool, scale_for
from shared.privacy.dp_evaluation import (
    EXACT_MARKER,
    aggregate_release,
    bin_centers,
    histogram_calibration,
    histograms_of,
    released_metrics,
)

SiteMetrics = Mapping[str, Mapping[str, float]]  # site -> its evaluation scalars (incl. num-examples)

POOLING_NOTE = (
    "weighted_mean: mean of the site metrics weighted by each site's number of validation examples "
    "(not the metric of the pooled data: e.g. AUROC leaves out between-site pairs). "
    "site_ci_min / site_ci_max: the lowest lower and highest upper bound of the sites' own bootstrap "
    "95% CIs, a range, not a confidence interval of the mean. "
    "random_effects: DerSimonian-Laird random-effects meta-analysis of the site estimates, with standard "
    "errors from the sites' bootstrap CIs on the logit scale for metrics in [0, 1]; its CI is for the "
    "mean performance across sites and widens with between-site heterogeneity (tau2, i2). "
    "aggregate (DP evaluation): the metrics of the sum of the sites' noisy score histograms / confusion "
    "matrices, i.e. of all validation patients together; sites' DP metrics carry no bootstrap CI."
)
EXACT_METRIC_NOTE = "exact validation metrics sent under the site policy's release.exact_metrics: outside the DP guarantee"
_BIN_KEY = re.compile(r"calib_bin_(\d+)_count")


def is_calibration_key(metric: str) -> bool:
    return metric.startswith("calib_bin_")


def weighted_mean(sites: SiteMetrics, metric: str) -> float | None:
    """Mean of `metric` over the sites that report it, weighted by num-examples."""
    num = den = 0.0
    for values in sites.values():
        value, n = values.get(metric), float(values.get("num-examples", 0))
        if value is not None and math.isfinite(value) and n > 0:
            num += value * n
            den += n
    return num / den if den else None


def pooled_metrics(sites: SiteMetrics) -> dict[str, dict[str, Any]]:
    """For every metric some site reports with a CI (`<m>_ci_low/_ci_high`): weighted_mean,
    site_ci_min, site_ci_max, n_sites (reporting the metric) and random_effects (a
    PooledEstimate dict, or None when no site has a usable CI)."""
    names = sorted({m[: -len("_ci_low")] for values in sites.values() for m in values if m.endswith("_ci_low")})
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        with_ci = [v for v in sites.values() if all(k in v for k in (name, f"{name}_ci_low", f"{name}_ci_high"))]
        pooled = random_effects_pool(
            [v[name] for v in with_ci], [v[f"{name}_ci_low"] for v in with_ci], [v[f"{name}_ci_high"] for v in with_ci],
            scale=scale_for(name),
        )
        out[name] = {
            "weighted_mean": weighted_mean(sites, name),
            "site_ci_min": min((v[f"{name}_ci_low"] for v in with_ci), default=None),
            "site_ci_max": max((v[f"{name}_ci_high"] for v in with_ci), default=None),
            "n_sites": sum(1 for v in sites.values() if name in v),
            "random_effects": pooled.to_dict() if pooled else None,
        }
    return out


def pooled_calibration(sites: SiteMetrics) -> list[dict[str, float]]:
    """Reliability curve over all sites from their reported bins (only bins a site sent: those with
    >= 10 patients there). Per bin index: count = sum of counts, observed and predicted =
    count-weighted means, n_sites = sites that reported the bin. Sorted by bin."""
    totals: dict[int, list[float]] = {}
    for values in sites.values():
        for key, count in values.items():
            match = _BIN_KEY.fullmatch(key)
            if not match or count <= 0:
                continue
            i = int(match.group(1))
            t = totals.setdefault(i, [0.0, 0.0, 0.0, 0.0])
            t[0] += count
            t[1] += count * values[f"calib_bin_{i}_observed"]
            t[2] += count * values[f"calib_bin_{i}_predicted"]
            t[3] += 1
    return [
        {"bin": i, "count": c, "observed": o / c, "predicted": p / c, "n_sites": int(k)}
        for i, (c, o, p, k) in sorted(totals.items())
    ]


def site_calibration(values: Mapping[str, float]) -> list[dict[str, float]]:
    """One site's reported bins: [{bin, count, observed, predicted}], sorted by bin."""
    return pooled_calibration({"site": values})


def aggregate_metrics(releases: SiteMetrics) -> dict[str, float]:
    """Metrics of the element-wise sum of the sites' DP releases (empty without releases)."""
    total = aggregate_release(releases)
    return released_metrics(total) if total else {}


def decision_threshold(sites: SiteMetrics, releases: SiteMetrics | None = None) -> float | None:
    """The operating threshold stored with the model: with DP releases, the Youden-optimal bin edge of the
    summed noisy histograms; otherwise the num-examples-weighted mean of the sites' validation thresholds
    (each site's Youden-optimal cut on its own validation data)."""
    aggregate = aggregate_metrics(releases or {})
    if "threshold" in aggregate:
        return aggregate["threshold"]
    return weighted_mean(sites, "threshold")


def outside_guarantee(sites: SiteMetrics) -> dict[str, list[str]]:
    """site -> the metrics it sent exactly (its policy allows `release.exact_metrics`), i.e. outside DP."""
    return {site: sorted(k for k in values if k != EXACT_MARKER) for site, values in sites.items() if values.get(EXACT_MARKER)}


RECALIBRATION_NOTE = (
    "fitted at the center on the final round's released validation statistics (the sites' noisy score "
    "histograms under DP, else their reliability bins): post-processing of a release, no further privacy cost. "
    "ece_before / ece_after: on those same statistics (10 equal-width bins, every patient at its bin's "
    "probability); ece_after_held_out_sites: each site's bins under a map fitted on the other sites only"
)


def _binned(sites: SiteMetrics, releases: SiteMetrics) -> tuple[str, dict[str, tuple]] | None:
    """Per site: (scores, positives, negatives) of its final-round statistics, and what they are."""
    hists = {s: h for s, v in releases.items() if (h := histograms_of(v)) is not None}
    if hists and len({h[0].size for h in hists.values()}) == 1:
        return "dp_score_histograms", {s: (bin_centers(pos.size), pos, neg) for s, (pos, neg) in hists.items()}
    out = {}
    for site, values in sites.items():
        bins = site_calibration(values)
        if bins:
            count = np.array([b["count"] for b in bins])
            observed = np.array([b["observed"] for b in bins])
            out[site] = (np.array([b["predicted"] for b in bins]), count * observed, count * (1 - observed))
    return ("site_reliability_bins", out) if out else None


def _combine(parts: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (scores, positives, negatives) of several sites'. Histograms on the same bins are summed before
    the noisy counts are clipped (the sites' noise partly cancels; clipping each site first would add about
    0.4 x noise_multiplier spurious patients to every empty cell and flatten the fit); other bins are stacked."""
    if all(np.array_equal(p[0], parts[0][0]) for p in parts):
        return parts[0][0], sum(p[1] for p in parts), sum(p[2] for p in parts)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def recalibration(sites: SiteMetrics, releases: SiteMetrics, method: str) -> dict[str, Any] | None:
    """The recalibration map of `method` (platt | temperature | none) fitted on the final round's binned
    statistics, with ECE and reliability bins before and after (None: nothing binned to fit on)."""
    binned = _binned(sites, releases)
    if binned is None:
        return None
    source, per_site = binned
    scores, pos, neg = _combine(list(per_site.values()))
    cmap = fit_calibration(scores, pos, neg, method)
    before = histogram_calibration(pos, neg, scores)
    out: dict[str, Any] = {
        "method": method, "map": cmap.to_dict() if cmap else None, "fitted_on": source,
        "patients": float(np.clip(pos, 0, None).sum() + np.clip(neg, 0, None).sum()),
        "ece_before": before.get("ece"), "bins_before": site_calibration(before), "note": RECALIBRATION_NOTE,
    }
    if cmap is None:
        return out
    after = histogram_calibration(pos, neg, cmap.apply(scores))
    out["ece_after"], out["bins_after"] = after.get("ece"), site_calibration(after)
    if len(per_site) > 1:
        held_out = []
        for site, (s, p, n) in per_site.items():
            others = fit_calibration(*_combine([v for k, v in per_site.items() if k != site]), method)
            held_out.append((others.apply(s) if others else s, np.clip(p, 0, None), np.clip(n, 0, None)))
        mapped, p, n = (np.concatenate([h[i] for h in held_out]) for i in range(3))
        out["ece_after_held_out_sites"] = histogram_calibration(p, n, mapped).get("ece")
    return out


def calibration_map(recalibrated: dict[str, Any] | None) -> CalibrationMap | None:
    """The map stored with a checkpoint, from `recalibration`'s result."""
    return CalibrationMap.from_dict(recalibrated["map"]) if recalibrated and recalibrated.get("map") else None
