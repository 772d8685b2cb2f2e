import itertools

import numpy as np
import pytest
from lifelines.utils import concordance_index
from sklearn import metrics as skm

from shared import metrics as m


def _binary_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with an informative score rounded to one decimal, so scores tie a lot."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = np.clip(0.25 * y + 0.75 * rng.random(n), 0, 1).round(1)
    return y, p


def _survival_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer times (many ties, some event/censored ties) and integer-rounded risks (ties too)."""
    rng = np.random.default_rng(seed)
    time = rng.integers(1, 12, n).astype(float)
    event = rng.random(n) < 0.6
    risk = np.round(-time / 3 + rng.normal(size=n))
    return time, event, risk


def _brute_force_c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    correct = tied = pairs = 0.0
    for i, j in itertools.permutations(range(len(time)), 2):
        # i is known to fail first: an event strictly before j, or at j's time when j is censored
        if event[i] and (time[i] < time[j] or (time[i] == time[j] and not event[j])):
            pairs += 1
            correct += risk[i] > risk[j]
            tied += risk[i] == risk[j]
    return (correct + tied / 2) / pairs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_agree_with_sklearn(seed: int) -> None:
    y, p = _binary_sample(400, seed)
    assert np.unique(p).size < 15  # ties present
    assert m.auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
    assert m.auprc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-6)
    assert m.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-6)
    assert m.brier(y, p) == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_class_metrics_agree_with_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 300)
    y_pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))
    assert m.cohen_kappa(y, y_pred) == pytest.approx(skm.cohen_kappa_score(y, y_pred), abs=1e-6)
    assert m.macro_f1(y, y_pred) == pytest.approx(skm.f1_score(y, y_pred, average="macro"), abs=1e-6)
    assert m.accuracy(y, y_pred) == pytest.approx(np.mean(y == y_pred), abs=1e-12)
    np.testing.assert_allclose(m.per_class_f1(y, y_pred, 5), skm.f1_score(y, y_pred, average=None), atol=1e-6)
    cm = m.confusion(y, y_pred, 5)
    assert cm.shape == (5, 5) and cm.sum() == 300
    assert cm[2, 3] == np.sum((y == 2) & (y_pred == 3))


def test_per_class_f1_and_confusion_with_absent_class() -> None:
    y, y_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    f1 = m.per_class_f1(y, y_pred, 3)
    assert f1[0] == pytest.approx(2 / 3) and f1[1] == pytest.approx(0.8) and np.isnan(f1[2])
    np.testing.assert_array_equal(m.confusion(y, y_pred, 3), [[1, 1, 0], [0, 2, 0], [0, 0, 0]])


def test_cohen_kappa_undefined_raises() -> None:
    with pytest.raises(ValueError, match="undefined"):
        m.cohen_kappa(np.array([2, 2, 2]), np.array([2, 2, 2]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c_index_matches_lifelines_and_pair_counting(seed: int) -> None:
    time, event, risk = _survival_sample(60, seed)
    ours = m.c_index(time, event, risk)
    assert ours == pytest.approx(concordance_index(time, -risk, event), abs=1e-6)
    assert ours == pytest.approx(_brute_force_c_index(time, event, risk), abs=1e-6)


def test_c_index_direction_and_undefined() -> None:
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 1, 0])
    assert m.c_index(time, event, np.array([4.0, 3.0, 2.0, 1.0])) == 1.0  # high risk dies first
    assert m.c_index(time, event, np.array([1.0, 2.0, 3.0, 4.0])) == 0.0
    with pytest.raises(ValueError, match="comparable"):
        m.c_index(time, np.zeros(4), np.arange(4.0))


def test_ece_small_when_calibrated_large_when_not() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20_000)
    y_calibrated = (rng.random(20_000) < p).astype(int)
    y_overconfident = (rng.random(20_000) < 0.5).astype(int)  # truth is a coin flip
    assert m.expected_calibration_error(y_calibrated, p) < 0.02
    assert m.expected_calibration_error(y_overconfident, p) > 0.2


def test_reliability_curve_and_ece_by_hand() -> None:
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    y = np.array([0, 1, 0, 1, 1])
    curve = m.reliability_curve(y, p, n_bins=10)
    np.testing.assert_allclose(curve["bin_centers"], [0.05, 0.15, 0.95])  # empty bins skipped
    np.testing.assert_allclose(curve["observed"], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(curve["predicted"], [0.05, 0.15, 0.975])
    np.testing.assert_array_equal(curve["counts"], [1, 2, 2])
    expected = (1 * 0.05 + 2 * 0.35 + 2 * 0.025) / 5
    assert m.expected_calibration_error(y, p, n_bins=10) == pytest.approx(expected)


def test_sensitivity_at_specificity_by_hand() -> None:
    y = np.array([0] * 10 + [1] * 4)
    # negatives at 0..0.9, positives at 0.95, 0.85, 0.5, 0.05: spec >= 0.9 allows one negative
    # above threshold (0.9), so the threshold 0.85 catches 0.95 and 0.85
    p = np.concatenate([np.arange(10) / 10, [0.95, 0.85, 0.5, 0.05]])
    assert m.sensitivity_at_specificity(y, p, 0.9) == pytest.approx(0.5)
    assert m.sensitivity_at_specificity(y, p, 1.0) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        m.sensitivity_at_specificity(np.zeros(5), np.arange(5.0))


def test_choose_threshold_rules() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    assert m.choose_threshold(y, p, "youden") == pytest.approx(0.6)  # the separating cut
    assert m.choose_threshold(y, p, "f1") == pytest.approx(0.6)
    y2 = np.array([0, 1, 0, 1, 1])
    p2 = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    # youden: cut 0.4 -> sens 2/3, spec 1 (J=2/3); f1: cut 0.2 -> P=3/4, R=1 (F1=6/7 beats 4/5)
    assert m.choose_threshold(y2, p2, "youden") == pytest.approx(0.4)
    assert m.choose_threshold(y2, p2, "f1") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        m.choose_threshold(y, p, "max_accuracy")


def test_bootstrap_draws_one_index_matrix_and_is_reproducible() -> None:
    x = np.arange(50.0)
    point, low, high = m.bootstrap_ci(np.mean, x, n_boot=200, seed=3)
    rows = np.random.default_rng(3).integers(0, 50, size=(200, 50))
    expected_low, expected_high = np.percentile(x[rows].mean(axis=1), [2.5, 97.5])
    assert (point, low, high) == pytest.approx((24.5, expected_low, expected_high))
    assert m.bootstrap_ci(np.mean, x, n_boot=200, seed=3) == (point, low, high)
    assert m.bootstrap_ci(np.mean, x, n_boot=200, seed=4) != (point, low, high)


def test_bootstrap_ci_covers_point_and_narrows_with_n() -> None:
    widths = []
    for n in (100, 2000):
        y, p = _binary_sample(n, seed=0)
        point, low, high = m.bootstrap_ci(m.auroc, y, p, n_boot=300, seed=0)
        assert low < point < high
        assert point == pytest.approx(m.auroc(y, p))
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # width ~ 1/sqrt(n): ~4.5x narrower


def test_bootstrap_skips_undefined_resamples() -> None:
    y = np.array([1] + [0] * 9)  # a resample misses the one positive about 35% of the time
    p = np.linspace(0.9, 0.0, 10)
    point, low, high = m.bootstrap_ci(m.auroc, y, p, n_boot=200, seed=0)
    assert point == 1.0 and low == 1.0 and high == 1.0


    def sum_of_distinct(x: np.ndarray) -> float:
        if np.unique(x).size < x.size:
            raise ValueError("repeated rows")
        return float(x.sum())

    point, low, high = m.bootstrap_ci(sum_of_distinct, np.arange(30), n_boot=20)  # every resample repeats
    assert point == 435.0 and np.isnan(low) and np.isnan(high)
    with pytest.raises(ValueError):
        m.bootstrap_ci(m.auroc, np.zeros(5), np.arange(5.0), n_boot=10)


def test_binary_report_keys_and_values() -> None:
    y, p = _binary_sample(200, seed=1)
    report = m.binary_report(y, p, n_boot=200, seed=0)
    for name in ("auroc", "auprc", "brier"):
        assert report[f"{name}_ci_low"] <= report[name] <= report[f"{name}_ci_high"]
    assert report["auroc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert report["ece"] == pytest.approx(m.expected_calibration_error(y, p))
    assert report["sens_at_spec"] == pytest.approx(m.sensitivity_at_specificity(y, p, 0.9))
    assert report["threshold"] == pytest.approx(m.choose_threshold(y, p))
    assert report["sensitivity"] == pytest.approx(np.mean(p[y == 1] >= report["threshold"]))
    assert report["specificity"] == pytest.approx(np.mean(p[y == 0] < report["threshold"]))
    assert report["n"] == 200 and report["prevalence"] == pytest.approx(y.mean())
    assert all(isinstance(v, float) and np.isfinite(v) for v in report.values())
    fixed = m.binary_report(y, p, threshold=0.5, n_boot=50)
    assert fixed["threshold"] == 0.5
    assert fixed["sensitivity"] == pytest.approx(np.mean(p[y == 1] >= 0.5))


def test_binary_report_single_class_omits_undefined() -> None:
    y, p = np.ones(20, dtype=int), np.linspace(0.1, 0.9, 20)
    report = m.binary_report(y, p, n_boot=50)
    assert set(report) == {"n", "prevalence", "brier", "brier_ci_low", "brier_ci_high", "ece"}
    with_threshold = m.binary_report(y, p, threshold=0.5, n_boot=50)
    assert "specificity" not in with_threshold
    assert with_threshold["sensitivity"] == pytest.approx(0.5)
    assert all(np.isfinite(v) for v in with_threshold.values())


def test_multiclass_report() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)  # class 4 of 5 never occurs
    y_pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 4, 200))
    report = m.multiclass_report(y, y_pred, n_classes=5, n_boot=200)
    assert report["accuracy"] == pytest.approx(np.mean(y == y_pred))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y, y_pred, average="macro"))
    assert report["kappa"] == pytest.approx(skm.cohen_kappa_score(y, y_pred))
    for name in ("accuracy", "macro_f1", "kappa"):
        assert report[f"{name}_ci_low"] < report[name] < report[f"{name}_ci_high"]
    assert [k for k in report if k.startswith("f1_class_")] == [f"f1_class_{k}" for k in range(4)]
    constant = m.multiclass_report(np.full(10, 2), np.full(10, 2), n_classes=3, n_boot=20)
    assert "kappa" not in constant and constant["accuracy"] == 1.0 and constant["f1_class_2"] == 1.0


def test_survival_report() -> None:
    time, event, risk = _survival_sample(150, seed=0)
    report = m.survival_report(time, event, risk, n_boot=200)
    assert report["c_index"] == pytest.approx(concordance_index(time, -risk, event))
    assert report["c_index_ci_low"] < report["c_index"] < report["c_index_ci_high"]
    assert report["n"] == 150 and report["n_events"] == event.sum()
    assert set(m.survival_report(time, np.zeros(150), risk, n_boot=10)) == {"n", "n_events"}


def test_calibration_bins_suppress_small_bins_and_match_reliability_curve() -> None:
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0.0, 0.1, 40), rng.uniform(0.5, 0.6, 25), [0.95] * 3])  # bin 9: 3 patients
    y = (rng.random(p.size) < p).astype(int)
    bins = m.calibration_bins(y, p)
    assert set(bins) == {f"calib_bin_{i}_{part}" for i in (0, 5) for part in ("observed", "predicted", "count")}
    curve = m.reliability_curve(y, p)
    assert bins["calib_bin_0_count"] == 40 and bins["calib_bin_5_count"] == 25
    assert bins["calib_bin_0_observed"] == pytest.approx(curve["observed"][0])
    assert bins["calib_bin_5_predicted"] == pytest.approx(p[40:65].mean())
    assert set(m.calibration_bins(y, p, min_count=1)) >= {"calib_bin_9_count"}
    assert m.calibration_bins(y[:5], p[:5]) == {}  # a cohort of 5 sends no bin at all


def test_calibration_bin_keys_are_whitelisted() -> None:
    from shared.privacy.whitelist import ALLOWED_METRICS

    p = (np.arange(1000) + 0.5) / 1000  # 100 patients in each of the 10 bins
    bins = m.calibration_bins((p > 0.5).astype(int), p)
    assert len(bins) == 30 and set(bins) <= ALLOWED_METRICS


@pytest.mark.parametrize("seed", [0, 1])
def test_c_index_matches_scikit_survival(seed: int) -> None:
    sksurv_metrics = pytest.importorskip("sksurv.metrics")
    time, event, risk = _survival_sample(80, seed)
    reference = sksurv_metrics.concordance_index_censored(event.astype(bool), time, risk)[0]
    assert m.c_index(time, event, risk) == pytest.approx(reference, abs=1e-6)


@pytest.mark.parametrize("metric", ["auroc", "auprc", "brier"])
def test_vectorised_bootstrap_equals_one_call_per_resample(metric: str) -> None:
    fn = getattr(m, metric)
    y, p = _binary_sample(60, seed=4)  # tied scores; small n, so some resamples could be single-class
    vectorised = m.bootstrap_ci(fn, y, p, n_boot=300, seed=7)
    looped = m.bootstrap_ci(lambda *a: fn(*a), y, p, n_boot=300, seed=7)  # a wrapper is not vectorised
    assert vectorised == pytest.approx(looped, abs=1e-12)


def test_row_wise_metrics_agree_with_sklearn_on_every_resample() -> None:
    y, p = _binary_sample(40, seed=5)
    rows = np.random.default_rng(0).integers(0, 40, size=(200, 40))
    auroc_rows, auprc_rows = m._auroc_rows(y[rows], p[rows]), m._auprc_rows(y[rows], p[rows])
    single = [np.unique(y[r]).size < 2 for r in rows]
    for r, one_class, a, ap in zip(rows, single, auroc_rows, auprc_rows):
        if one_class:
            assert np.isnan(a) and np.isnan(ap)
        else:
            assert a == pytest.approx(skm.roc_auc_score(y[r], p[r]), abs=1e-12)
            assert ap == pytest.approx(skm.average_precision_score(y[r], p[r]), abs=1e-12)
    np.testing.assert_allclose(m._brier_rows(y[rows], p[rows]), [skm.brier_score_loss(y[r], p[r]) for r in rows], atol=1e-12)
    one_class = m._auroc_rows(np.ones((1, 5), dtype=int), np.arange(5.0)[None])
    assert np.isnan(one_class).all() and np.isnan(m._auprc_rows(np.zeros((1, 5), dtype=int), np.arange(5.0)[None])).all()


def test_vectorised_bootstrap_works_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    y, p = _binary_sample(50, seed=6)
    whole = m.bootstrap_ci(m.auroc, y, p, n_boot=101, seed=1)
    monkeypatch.setattr(m, "_BLOCK_CELLS", 50 * 7)  # blocks of 7 resamples, the last one shorter
    assert m.bootstrap_ci(m.auroc, y, p, n_boot=101, seed=1) == whole
