import math

import numpy as np
import pytest
from scipy.stats import norm

from shared.meta_analysis import random_effects_pool, scale_for

Z = norm.ppf(0.975)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def _cis(estimates: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric CIs on the logit scale, given back on the probability scale."""
    expit = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    return expit(_logit(estimates) - Z * se), expit(_logit(estimates) + Z * se)


def test_matches_statsmodels_dersimonian_laird() -> None:
    meta = pytest.importorskip("statsmodels.stats.meta_analysis")
    estimates = np.array([0.62, 0.71, 0.80, 0.68])
    se = np.array([0.20, 0.15, 0.25, 0.10])
    low, high = _cis(estimates, se)
    pooled = random_effects_pool(estimates, low, high, scale="logit")
    reference = meta.combine_effects(_logit(estimates), se**2, method_re="dl")
    ref_low, ref_high = reference.conf_int(use_t=False)[1]  # rows: fixed effect, random effects
    assert pooled.n_sites == 4 and pooled.scale == "logit"
    assert _logit(np.array(pooled.estimate)) == pytest.approx(reference.mean_effect_re, abs=1e-9)
    assert _logit(np.array(pooled.ci_low)) == pytest.approx(ref_low, abs=1e-9)
    assert _logit(np.array(pooled.ci_high)) == pytest.approx(ref_high, abs=1e-9)
    assert pooled.tau2 == pytest.approx(reference.tau2, abs=1e-12)


def test_homogeneous_sites_give_the_fixed_effect_inverse_variance_mean() -> None:
    estimates = np.array([0.70, 0.70, 0.70])
    se = np.array([0.1, 0.2, 0.4])
    low, high = _cis(estimates, se)
    pooled = random_effects_pool(estimates, low, high)
    assert pooled.tau2 == 0.0 and pooled.i2 == 0.0
    assert pooled.estimate == pytest.approx(0.70)
    half = Z / math.sqrt(np.sum(1 / se**2))
    assert _logit(np.array(pooled.ci_high)) - _logit(np.array(0.70)) == pytest.approx(half)
    assert pooled.ci_high - pooled.ci_low < high[0] - low[0]  # narrower than the best site alone


def test_heterogeneity_widens_the_interval() -> None:
    se = np.array([0.1, 0.1, 0.1])
    agree = random_effects_pool(*(lambda e: (e, *_cis(e, se)))(np.array([0.70, 0.71, 0.69])))
    disagree = random_effects_pool(*(lambda e: (e, *_cis(e, se)))(np.array([0.55, 0.70, 0.85])))
    assert agree.tau2 == 0.0 and disagree.tau2 > 0 and disagree.i2 > 0.5
    assert disagree.ci_high - disagree.ci_low > 2 * (agree.ci_high - agree.ci_low)


def test_single_site_zero_width_and_identity_scale() -> None:
    one = random_effects_pool([0.8], [0.7], [0.9])
    assert (one.estimate, one.ci_low, one.ci_high, one.n_sites, one.method) == (0.8, 0.7, 0.9, 1, "single site")
    # a site with a zero-width CI (e.g. every resample gave AUROC 1.0) has no usable SE: left out
    kept = random_effects_pool([1.0, 0.7, 0.75], [1.0, 0.6, 0.65], [1.0, 0.8, 0.85])
    assert kept.n_sites == 2 and 0.7 < kept.estimate < 0.75
    assert random_effects_pool([0.5], [0.5], [0.5]) is None
    kappa = random_effects_pool([0.2, 0.4], [0.0, 0.2], [0.4, 0.6], scale="identity")
    assert kappa.estimate == pytest.approx(0.3) and kappa.ci_low < 0.3 < kappa.ci_high
    assert scale_for("kappa") == "identity" and scale_for("auroc") == "logit"
    with pytest.raises(ValueError, match="scale"):
        random_effects_pool([0.5], [0.4], [0.6], scale="probit")
