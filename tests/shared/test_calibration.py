"""Federated recalibration (shared/calibration.py) and ECE from score histograms
(shared/privacy/dp_evaluation.py, server/evaluation.py): the center fits the map on binned counts only."""

import numpy as np
import pytest

from server.evaluation import recalibration
from shared.calibration import CalibrationMap, fit_calibration, logit, sigmoid
from shared.metrics import expected_calibration_error
from shared.privacy.dp_evaluation import bin_centers, histogram_calibration, release_binary, score_histograms

BINS = 20


def _expected_histograms(true_map: CalibrationMap, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores at the bin centres; of counts[b] patients in bin b, the true-probability share has the event."""
    centres = bin_centers(BINS)
    truth = true_map.apply(centres)
    return centres, counts * truth, counts * (1 - truth)


@pytest.mark.parametrize("slope, intercept", [(0.6, 1.1), (1.8, -0.7), (1.0, 0.9)])
def test_platt_recovers_a_known_miscalibration(slope: float, intercept: float) -> None:
    counts = np.full(BINS, 200.0)
    centres, pos, neg = _expected_histograms(CalibrationMap("platt", slope, intercept), counts)
    fitted = fit_calibration(centres, pos, neg, "platt")
    assert fitted is not None
    assert fitted.slope == pytest.approx(slope, abs=0.02) and fitted.intercept == pytest.approx(intercept, abs=0.02)
    before = histogram_calibration(pos, neg)["ece"]
    after = histogram_calibration(pos, neg, fitted.apply(centres))["ece"]
    assert before > 0.04 and after < 0.005


def test_temperature_recovers_an_overconfident_model() -> None:
    counts = 400.0 * np.exp(-0.5 * ((np.arange(BINS) - BINS / 2) / 4) ** 2)  # most patients mid-range
    centres, pos, neg = _expected_histograms(CalibrationMap("temperature", 1 / 2.5, 0.0), counts)
    fitted = fit_calibration(centres, pos, neg, "temperature")
    assert fitted is not None and fitted.intercept == 0.0
    assert fitted.to_dict()["temperature"] == pytest.approx(2.5, rel=0.02)
    assert histogram_calibration(pos, neg)["ece"] > 0.1
    assert histogram_calibration(pos, neg, fitted.apply(centres))["ece"] < 0.01


def test_platt_on_noisy_dp_histograms_of_sampled_patients() -> None:
    """Three sites' DP releases (noise 4 per cell) of a model whose probabilities are too low at the bottom and too
    high at the top (the demo's pattern): the center's Platt map gets the ECE below 0.02 on the released
    histograms and on a fresh exact sample of the same population."""
    rng = np.random.default_rng(0)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        true_logit = rng.normal(-2.0, 1.3, n)
        y = (rng.uniform(size=n) < sigmoid(true_logit)).astype(int)
        return y, sigmoid(1.9 * true_logit - 0.6)  # the model's miscalibrated probability

    releases = {}
    for site, n in (("a", 1500), ("b", 900), ("c", 500)):
        y, score = sample(n)
        releases[site] = release_binary(y, score, BINS, 4.0, rng=rng)
    result = recalibration({}, releases, "platt")
    assert result is not None and result["fitted_on"] == "dp_score_histograms"
    assert result["ece_before"] > 0.05 and result["ece_after"] < 0.04  # in-sample, on the noisy counts
    assert result["bins_before"] and result["bins_after"]
    cmap = CalibrationMap.from_dict(result["map"])
    y, score = sample(20000)
    assert expected_calibration_error(y, score) > 0.05
    assert expected_calibration_error(y, cmap.apply(score)) < 0.02


def test_ece_from_noise_free_histograms_matches_ece_of_the_exact_scores() -> None:
    rng = np.random.default_rng(3)
    centres = bin_centers(BINS)
    score = centres[rng.integers(0, BINS, 3000)]  # every patient at a bin centre: the histogram loses nothing
    y = (rng.uniform(size=score.size) < np.clip(score * 1.3, 0, 1)).astype(int)
    pos, neg = score_histograms(y, score, BINS)
    assert histogram_calibration(pos, neg)["ece"] == pytest.approx(expected_calibration_error(y, score), abs=1e-12)
    # continuous scores: the bin centre stands in for each patient's score; 50 bins keep that error small
    score = sigmoid(rng.normal(-1, 1.5, 5000))
    y = (rng.uniform(size=score.size) < score).astype(int)
    pos, neg = score_histograms(y, score, 50)
    exact = expected_calibration_error(y, score)
    assert histogram_calibration(pos, neg)["ece"] == pytest.approx(exact, abs=0.01)


def test_recalibration_none_and_degenerate_inputs() -> None:
    centres, pos, neg = _expected_histograms(CalibrationMap("platt", 0.5, 0.0), np.full(BINS, 50.0))
    assert fit_calibration(centres, pos, neg, "none") is None
    assert fit_calibration(centres, pos, np.zeros(BINS), "platt") is None  # one class: nothing to fit
    assert fit_calibration(centres, pos * 1e-3, neg * 1e-3, "platt") is None  # too few patients
    with pytest.raises(ValueError, match="unknown recalibration method"):
        fit_calibration(centres, pos, neg, "isotonic")
    result = recalibration({}, {"a": release_binary(np.r_[np.ones(300), np.zeros(300)], np.full(600, 0.5), BINS, 1.0)}, "none")
    assert result is not None and result["map"] is None and "ece_after" not in result and result["ece_before"] is not None
    assert recalibration({"a": {"num-examples": 10.0}}, {}, "platt") is None  # nothing binned


def test_map_keeps_ranks_and_round_trips() -> None:
    cmap = CalibrationMap("platt", 0.7, 0.4)
    p = np.array([0.01, 0.2, 0.5, 0.9])
    assert np.all(np.diff(cmap.apply(p)) > 0)
    np.testing.assert_allclose(cmap.apply(p), sigmoid(0.7 * logit(p) + 0.4))
    assert CalibrationMap.from_dict(cmap.to_dict()) == cmap
