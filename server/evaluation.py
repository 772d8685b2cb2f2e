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

from shared.meta_analysis import random_effects_pool, scale_for
from shared.privacy.dp_evaluation import EXACT_MARKER, aggregate_release, released_metrics

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
