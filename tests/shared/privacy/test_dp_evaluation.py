"""DP evaluation statistics: exact sensitivity by brute force, and the center's metrics against sklearn."""

import numpy as np
import pytest
from sklearn import metrics as skm

from shared.metrics import choose_threshold
from shared.privacy.dp_evaluation import (
    aggregate_release,
    bin_centers,
    bin_edges,
    bin_index,
    binary_metrics,
    confusion_counts,
    histograms_of,
    multiclass_metrics,
    release_binary,
    release_confusion,
    released_metrics,
    score_histograms,
)
from shared.privacy.whitelist import ALLOWED_METRICS

BINS = 20


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * y - 1.5)))
    return y, p


def _vector(y, p):
    return np.concatenate(score_histograms(y, p, BINS))


def test_binary_release_has_l2_sensitivity_one_under_add_remove_by_brute_force():
    """Remove each patient in turn (and add a copy of each): the noiseless release moves by exactly 1."""
    y, p = _data(120)
    full = _vector(y, p)
    changes = [np.linalg.norm(full - _vector(np.delete(y, i), np.delete(p, i))) for i in range(len(y))]
    changes += [np.linalg.norm(full - _vector(np.append(y, y[i]), np.append(p, p[i]))) for i in range(len(y))]
    assert max(changes) == pytest.approx(1.0) and min(changes) == pytest.approx(1.0)


def test_confusion_release_sensitivity_is_the_units_per_record_by_brute_force():
    rng = np.random.default_rng(1)
    y, pred = rng.integers(0, 5, size=(30, 10)), rng.integers(0, 5, size=(30, 10))
    y[0, :] = 2
    pred[0, :] = 2  # a record whose ten epochs all land in one cell: the worst case
    y[3, 4:] = -100  # unscored epochs do not count
    full = confusion_counts(y, pred, 5)
    changes = [np.linalg.norm(full - confusion_counts(np.delete(y, i, 0), np.delete(pred, i, 0), 5)) for i in range(30)]
    assert max(changes) == pytest.approx(10.0) and all(c <= 10.0 + 1e-9 for c in changes)
    assert full.sum() == 300 - 6


def test_metrics_of_exact_histograms_match_sklearn_on_bin_midpoint_scores():
    y, p = _data()
    mid = bin_centers(BINS)[bin_index(p, BINS)]  # every score at its bin's center: binning loses nothing
    m = binary_metrics(*score_histograms(y, mid, BINS))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, mid))
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, mid))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, mid))
    assert m["val_loss"] == pytest.approx(skm.log_loss(y, mid))
    assert m["num-examples"] == len(y) and m["prevalence"] == pytest.approx(y.mean())
    # Youden on the bins: the lower edge of the bin whose center sklearn picks
    assert m["threshold"] == pytest.approx(bin_edges(BINS)[bin_index(choose_threshold(y, mid), BINS)])
    assert {k for k in m if k.startswith("calib_bin_")} and 0 <= m["ece"] < 0.2


@pytest.mark.parametrize("shift", [0.0, -3.0])  # scores spread over [0, 1], or mostly below 0.1 (a DP-trained model)
def test_binned_auroc_of_raw_scores_is_close_to_the_exact_one(shift):
    y, p = _data(2000)
    p = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + shift)))
    assert binary_metrics(*score_histograms(y, p, BINS))["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=0.015)
    edges = bin_edges(BINS)
    assert edges[0] == 0 and edges[-1] == 1 and np.all(np.diff(edges) > 0)
    assert (bin_index(edges[1:-1], BINS) == np.arange(1, BINS)).all() and bin_index(np.array([1.0]), BINS)[0] == BINS - 1


def test_multiclass_metrics_of_a_confusion_matrix_match_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 500)
    pred = np.where(rng.random(500) < 0.6, y, rng.integers(0, 5, 500))
    m = multiclass_metrics(confusion_counts(y, pred, 5))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_release_keys_are_whitelisted_and_noise_has_the_planned_scale():
    y, p = _data()
    rng = np.random.default_rng(3)
    draws = np.array([list(release_binary(y, p, BINS, 4.0, rng).values()) for _ in range(400)])
    exact = _vector(y, p)
    assert set(release_binary(y, p, BINS, 4.0)) <= ALLOWED_METRICS
    assert (draws - exact).std() == pytest.approx(4.0, rel=0.03)
    assert set(release_confusion(np.eye(3), 10, 1.0)) <= ALLOWED_METRICS
    assert "train_loss" not in ALLOWED_METRICS


def test_center_sums_site_releases_into_the_metrics_of_all_patients():
    (ya, pa), (yb, pb) = _data(300, 4), _data(200, 5)
    a = release_binary(ya, pa, BINS, 1e-9)
    b = release_binary(yb, pb, BINS, 1e-9)
    total = aggregate_release({"a": a, "b": b})
    pos, neg = histograms_of(total)
    both = binary_metrics(*score_histograms(np.concatenate([ya, yb]), np.concatenate([pa, pb]), BINS))
    assert released_metrics(total)["auroc"] == pytest.approx(both["auroc"]) and pos.sum() + neg.sum() == pytest.approx(500)
    assert aggregate_release({"a": a, "b": release_binary(yb, pb, 10, 1e-9)}) == {}  # different bins: not summed
