"""One estimate with a confidence interval from the sites' estimates and their confidence intervals.

The center never sees patient-level outputs, so a metric of the pooled data (say, the AUROC of
all sites' validation patients together) cannot be computed there: AUROC is not a sum over
patients, and a sample-weighted mean of site AUROCs is not the pooled AUROC (it leaves out every
between-site pair). Averaging the sites' CI bounds is not a confidence interval either.

What can be done from the scalars is a random-effects meta-analysis, the standard way to combine
a performance measure (e.g. a c-statistic) over validation cohorts (Debray et al., BMJ 2017;
Riley et al., BMJ 2011): each site's estimate y_i with a standard error s_i, a between-site
variance tau^2 by DerSimonian-Laird, weights 1 / (s_i^2 + tau^2), a normal-approximation CI
for the mean performance over sites. Its CI answers "what is the average performance across
hospitals like these", and widens when the sites disagree (tau^2 > 0), which a pooled-data
bootstrap would not show.

Standard errors come from the sites' percentile-bootstrap 95% CIs: s_i = (g(high) - g(low)) /
(2 z_0.975) on a scale g where the metric is roughly normal, the logit for metrics in [0, 1]
(AUROC, AUPRC, Brier, accuracy, macro-F1, C-index: Debray et al. pool c-statistics on the logit
scale) and the identity otherwise (kappa). Values at 0 or 1 are moved LOGIT_EPSILON inside the
interval first. A site whose CI has zero width gives no usable standard error and is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm

LOGIT_EPSILON = 1e-4
UNIT_INTERVAL_METRICS = frozenset({"auroc", "auprc", "brier", "accuracy", "macro_f1", "c_index", "sens_at_spec"})


@dataclass
class PooledEstimate:
    estimate: float
    ci_low: float
    ci_high: float
    n_sites: int  # sites that entered the meta-analysis
    tau2: float  # between-site variance on the analysis scale (0 with one site)
    i2: float  # share of the variation due to between-site heterogeneity, in [0, 1]
    scale: str  # "logit" or "identity"
    method: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def scale_for(metric: str) -> str:
    return "logit" if metric in UNIT_INTERVAL_METRICS else "identity"


def _forward(values: np.ndarray, scale: str) -> np.ndarray:
    if scale == "logit":
        p = np.clip(values, LOGIT_EPSILON, 1.0 - LOGIT_EPSILON)
        return np.log(p / (1.0 - p))
    return values


def _backward(value: float, scale: str) -> float:
    return float(1.0 / (1.0 + math.exp(-value))) if scale == "logit" else float(value)


def random_effects_pool(
    estimates: Sequence[float],
    ci_lows: Sequence[float],
    ci_highs: Sequence[float],
    scale: str = "logit",
    confidence: float = 0.95,
) -> PooledEstimate | None:
    """DerSimonian-Laird random-effects pooled estimate and CI from per-site estimates and CIs.

    `confidence` is the level of the sites' CIs and of the pooled CI. Sites whose CI has zero width
    (or whose values are not finite) are left out; None when no site is left. One site gives its own
    estimate and CI back.
    """
    if scale not in ("logit", "identity"):
        raise ValueError(f"unknown scale {scale!r}; logit or identity")
    y_raw, low_raw, high_raw = (np.asarray(a, dtype=float) for a in (estimates, ci_lows, ci_highs))
    y, low, high = _forward(y_raw, scale), _forward(low_raw, scale), _forward(high_raw, scale)
    z = float(norm.ppf(0.5 + confidence / 2))
    se = (high - low) / (2 * z)
    keep = np.isfinite(y) & np.isfinite(se) & (se > 0)
    if not keep.any():
        return None
    y, se = y[keep], se[keep]
    k = int(keep.sum())
    if k == 1:
        i = int(np.flatnonzero(keep)[0])
        return PooledEstimate(float(y_raw[i]), float(low_raw[i]), float(high_raw[i]), 1, 0.0, 0.0, scale, "single site")
    w = 1.0 / se**2
    fixed = float(np.sum(w * y) / np.sum(w))
    q = float(np.sum(w * (y - fixed) ** 2))
    c = float(np.sum(w) - np.sum(w**2) / np.sum(w))
    tau2 = max(0.0, (q - (k - 1)) / c)
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    w_star = 1.0 / (se**2 + tau2)
    mu = float(np.sum(w_star * y) / np.sum(w_star))
    half = z * math.sqrt(1.0 / float(np.sum(w_star)))
    return PooledEstimate(
        _backward(mu, scale), _backward(mu - half, scale), _backward(mu + half, scale), k, tau2, i2, scale,
        "DerSimonian-Laird random effects",
    )
