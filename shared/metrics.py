"""Evaluation metrics for fedcare's tasks, with percentile-bootstrap confidence intervals.

Inputs are 1-D numpy arrays (anything `np.asarray` accepts): binary labels in {0, 1} with
predicted probabilities, integer class labels with predicted classes, or survival times with
event flags and risk scores (higher risk = earlier event). The computations are sklearn's and
lifelines'; this module fixes the conventions, decides what "undefined" means and adds the CIs.

Undefined metrics raise `ValueError` (e.g. AUROC on a sample with one class only). `bootstrap_ci`
skips resamples on which the metric raises ValueError or returns a non-finite value, and the
`*_report` functions leave undefined metrics out of their dicts, so every value they return is a
finite float.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn import metrics as skm

MetricFn = Callable[..., float]


def _both_classes(y_true: np.ndarray, name: str) -> None:
    if np.unique(y_true).size < 2:
        raise ValueError(f"{name} is undefined when y_true holds a single class")


# ---------------------------------------------------------------- binary (probabilities)


def auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    y_true = np.asarray(y_true)
    _both_classes(y_true, "AUROC")
    return float(skm.roc_auc_score(y_true, np.asarray(y_score)))


def auprc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision (sklearn's step-wise area under the precision-recall curve)."""
    y_true = np.asarray(y_true)
    _both_classes(y_true, "AUPRC")
    return float(skm.average_precision_score(y_true, np.asarray(y_score)))


def brier(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    return float(skm.brier_score_loss(np.asarray(y_true), np.asarray(y_prob)))


def _bin_index(y_prob: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1]; bin k holds [k/n, (k+1)/n), the last one also holds 1.0."""
    return np.clip((y_prob * n_bins).astype(int), 0, n_bins - 1)


def _bin_sums(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: count, sum of outcomes, sum of predictions."""
    y_true = np.asarray(y_true, dtype=float)
    y_prob = np.asarray(y_prob, dtype=float)
    bins = _bin_index(y_prob, n_bins)
    return (np.bincount(bins, minlength=n_bins), np.bincount(bins, weights=y_true, minlength=n_bins),
            np.bincount(bins, weights=y_prob, minlength=n_bins))


def reliability_curve(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per non-empty equal-width bin: its center, observed event rate, mean prediction, count."""
    counts, sum_true, sum_prob = _bin_sums(y_true, y_prob, n_bins)
    keep = counts > 0
    return {
        "bin_centers": ((np.arange(n_bins) + 0.5) / n_bins)[keep],
        "observed": sum_true[keep] / counts[keep],
        "predicted": sum_prob[keep] / counts[keep],
        "counts": counts[keep],
    }


CALIBRATION_BINS = 10
MIN_CALIBRATION_BIN_COUNT = 10  # smaller bins are not reported (one bin could be one patient)


def calibration_bins(
    y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = CALIBRATION_BINS, min_count: int = MIN_CALIBRATION_BIN_COUNT
) -> dict[str, float]:
    """A reliability curve as scalars a site may send: for every equal-width bin i (bin i holds
    predictions in [i/n_bins, (i+1)/n_bins)) with at least `min_count` patients,
    calib_bin_<i>_observed (event rate), calib_bin_<i>_predicted (mean prediction) and
    calib_bin_<i>_count. Bins with fewer patients are left out (k-anonymity style: a bin of one
    patient would reveal that patient's outcome and prediction)."""
    counts, sum_true, sum_prob = _bin_sums(y_true, y_prob, n_bins)
    out: dict[str, float] = {}
    for i in np.flatnonzero(counts >= max(1, min_count)):
        out[f"calib_bin_{i}_observed"] = float(sum_true[i] / counts[i])
        out[f"calib_bin_{i}_predicted"] = float(sum_prob[i] / counts[i])
        out[f"calib_bin_{i}_count"] = float(counts[i])
    return out


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE = sum over non-empty bins of (n_bin / n) * |observed rate - mean prediction|."""
    curve = reliability_curve(y_true, y_prob, n_bins)
    weights = curve["counts"] / curve["counts"].sum()
    return float(np.sum(weights * np.abs(curve["observed"] - curve["predicted"])))


def sensitivity_at_specificity(y_true: np.ndarray, y_score: np.ndarray, specificity: float = 0.9) -> float:
    """Highest sensitivity over thresholds whose specificity is at least `specificity`."""
    y_true = np.asarray(y_true)
    _both_classes(y_true, "sensitivity at specificity")
    fpr, tpr, _ = skm.roc_curve(y_true, np.asarray(y_score))
    return float(tpr[fpr <= 1.0 - specificity + 1e-12].max())


def choose_threshold(y_true: np.ndarray, y_score: np.ndarray, rule: str = "youden") -> float:
    """Operating threshold (predict positive when score >= threshold).

    rule "youden": maximizes Youden's J = sensitivity + specificity - 1 on the ROC curve;
    rule "f1": maximizes F1 on the precision-recall curve. Ties go to the highest threshold.
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    _both_classes(y_true, "threshold choice")
    if rule == "youden":
        fpr, tpr, thresholds = skm.roc_curve(y_true, y_score)
        finite = np.isfinite(thresholds)  # sklearn prepends +inf (predict nobody positive)
        j = (tpr - fpr)[finite]
        return float(thresholds[finite][np.argmax(j)])
    if rule == "f1":
        precision, recall, thresholds = skm.precision_recall_curve(y_true, y_score)
        precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        best = np.flatnonzero(f1 == f1.max())[-1]  # thresholds ascend here: last = highest
        return float(thresholds[best])
    raise ValueError(f"unknown threshold rule {rule!r}; known: youden, f1")


# ---------------------------------------------------------------- classes (predicted labels)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(skm.accuracy_score(np.asarray(y_true), np.asarray(y_pred)))


def cohen_kappa(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted Cohen's kappa; undefined (ValueError) when chance agreement is 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on the undefined case, handled just below
        kappa = float(skm.cohen_kappa_score(np.asarray(y_true), np.asarray(y_pred)))
    if not np.isfinite(kappa):
        raise ValueError("Cohen's kappa is undefined when both raters use one and the same class")
    return kappa


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred."""
    return float(skm.f1_score(np.asarray(y_true), np.asarray(y_pred), average="macro", zero_division=0))


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """F1 of classes 0..n_classes-1; NaN for a class absent from both y_true and y_pred."""
    y_true, y_pred, labels = np.asarray(y_true), np.asarray(y_pred), np.arange(n_classes)
    return skm.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan).astype(float)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; row = true class, column = predicted class."""
    return skm.confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=np.arange(n_classes))


# ---------------------------------------------------------------- survival


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index; a higher risk should mean an earlier event.

    lifelines' convention: a pair is comparable when the earlier time is an event, or when the
    times tie and only one of the two is an event (the censored one is taken as surviving
    longer); two events at the same time are not comparable; tied risks count one half.
    """
    from lifelines.utils import concordance_index  # lazy: lifelines is slow to import

    try:
        return float(concordance_index(np.asarray(time), -np.asarray(risk, dtype=float), np.asarray(event)))
    except ZeroDivisionError as err:
        raise ValueError("C-index is undefined without comparable pairs") from err


# ---------------------------------------------------------------- bootstrap


def _auroc_rows(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """AUROC of every row (Mann-Whitney U with average ranks for ties: sklearn's value); NaN for a
    row holding one class."""
    from scipy.stats import rankdata

    positive = y_true == 1
    n_pos = positive.sum(axis=1)
    n_neg = y_true.shape[1] - n_pos
    rank_sum = np.where(positive, rankdata(y_score, axis=1), 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), values, np.nan)


def _auprc_rows(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Average precision of every row (sklearn's step-wise definition: each positive adds 1/P recall
    at the precision of its score's tie group); NaN for a row holding one class."""
    order = np.argsort(-y_score, axis=1, kind="stable")
    scores = np.take_along_axis(y_score, order, axis=1)
    labels = np.take_along_axis(y_true, order, axis=1).astype(float)
    n = scores.shape[1]
    precision = np.cumsum(labels, axis=1) / np.arange(1, n + 1)
    group_end = np.ones(scores.shape, dtype=bool)
    group_end[:, :-1] = scores[:, :-1] != scores[:, 1:]
    end_index = np.where(group_end, np.arange(n), n)
    end_index = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]  # each position -> its group's last
    n_pos = labels.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (labels * np.take_along_axis(precision, end_index, axis=1)).sum(axis=1) / n_pos
    return np.where((n_pos > 0) & (n_pos < n), values, np.nan)


def _brier_rows(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    return np.mean((y_prob.astype(float) - y_true) ** 2, axis=1)


# Metrics whose bootstrap runs on whole blocks of resamples at once (same values as one call per
# resample; NaN marks an undefined resample).
_ROW_WISE: dict[Callable[..., float], Callable[..., np.ndarray]] = {}
_BLOCK_CELLS = 2_000_000  # resample rows x n per block: bounds the memory of the row-wise path


def bootstrap_ci(
    metric_fn: MetricFn,
    *arrays: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point estimate on all data, low, high) with a percentile bootstrap (1 - alpha) interval.

    All arrays are resampled with the same rows. The (n_boot, n) index matrix comes from one
    `np.random.default_rng(seed)` draw, so a seed gives the same interval. Resamples on which the
    metric is undefined (ValueError or a non-finite value) are skipped; if none is left, low and
    high are NaN. The point estimate raises ValueError when the metric is undefined on all data.
    AUROC, AUPRC and Brier are computed for blocks of resamples at once (vectorised); other
    metrics once per resample.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    point = float(metric_fn(*arrays))
    n = arrays[0].shape[0]
    indices = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    row_wise = _ROW_WISE.get(metric_fn)
    if row_wise is not None:
        block = max(1, _BLOCK_CELLS // max(1, n))
        computed = np.concatenate(
            [row_wise(*(a[indices[i : i + block]] for a in arrays)) for i in range(0, n_boot, block)]
        ) if n_boot else np.zeros(0)
        values = computed[np.isfinite(computed)].tolist()
    else:
        values = []
        for rows in indices:
            try:
                value = float(metric_fn(*(a[rows] for a in arrays)))
            except ValueError:
                continue
            if np.isfinite(value):
                values.append(value)
    if not values:
        return point, float("nan"), float("nan")
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(low), float(high)


_ROW_WISE.update({auroc: _auroc_rows, auprc: _auprc_rows, brier: _brier_rows})


def add_with_ci(
    report: dict[str, float], name: str, metric_fn: MetricFn, *arrays: np.ndarray, n_boot: int, seed: int
) -> None:
    """Adds name, name_ci_low, name_ci_high, leaving out whatever is undefined."""
    try:
        point, low, high = bootstrap_ci(metric_fn, *arrays, n_boot=n_boot, seed=seed)
    except ValueError:
        return
    report[name] = point
    if np.isfinite(low) and np.isfinite(high):
        report[f"{name}_ci_low"] = low
        report[f"{name}_ci_high"] = high


# ---------------------------------------------------------------- reports


def binary_report(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of a binary classifier's probabilities; every value is a finite float.

    Always: n, prevalence, brier (+ brier_ci_low/high), ece (10 bins).
    When both classes are present: auroc, auprc (each + _ci_low/_ci_high), sens_at_spec
    (sensitivity at 0.9 specificity). Single-class data omit these.
    Threshold metrics: `threshold` (given, else Youden-optimal when both classes are present),
    then sensitivity (when positives exist) and specificity (when negatives exist) at it.
    A CI is left out when no bootstrap resample has the metric defined.
    """
    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=float)
    two_classes = np.unique(y_true).size == 2
    report: dict[str, float] = {"n": float(y_true.size), "prevalence": float(y_true.mean())}
    if two_classes:
        add_with_ci(report, "auroc", auroc, y_true, y_prob, n_boot=n_boot, seed=seed)
        add_with_ci(report, "auprc", auprc, y_true, y_prob, n_boot=n_boot, seed=seed)
    add_with_ci(report, "brier", brier, y_true, y_prob, n_boot=n_boot, seed=seed)
    report["ece"] = expected_calibration_error(y_true, y_prob)
    if two_classes:
        report["sens_at_spec"] = sensitivity_at_specificity(y_true, y_prob, 0.9)
        if threshold is None:
            threshold = choose_threshold(y_true, y_prob, "youden")
    if threshold is not None:
        report["threshold"] = float(threshold)
        predicted = y_prob >= threshold
        if (y_true == 1).any():
            report["sensitivity"] = float(predicted[y_true == 1].mean())
        if (y_true == 0).any():
            report["specificity"] = float(1.0 - predicted[y_true == 0].mean())
    return report


def multiclass_report(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """accuracy, macro_f1, kappa (each + _ci_low/_ci_high) and f1_class_<k>.

    kappa is left out when undefined (both label vectors one and the same single class);
    f1_class_<k> is left out for a class absent from both y_true and y_pred.
    """
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    report: dict[str, float] = {"n": float(y_true.size)}
    add_with_ci(report, "accuracy", accuracy, y_true, y_pred, n_boot=n_boot, seed=seed)
    add_with_ci(report, "macro_f1", macro_f1, y_true, y_pred, n_boot=n_boot, seed=seed)
    add_with_ci(report, "kappa", cohen_kappa, y_true, y_pred, n_boot=n_boot, seed=seed)
    for k, f1 in enumerate(per_class_f1(y_true, y_pred, n_classes)):
        if np.isfinite(f1):
            report[f"f1_class_{k}"] = float(f1)
    return report


def survival_report(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """n, n_events and c_index (+ _ci_low/_ci_high); c_index is left out without comparable pairs."""
    event = np.asarray(event).astype(bool)
    report: dict[str, float] = {"n": float(event.size), "n_events": float(event.sum())}
    time = np.asarray(time, dtype=float)
    add_with_ci(report, "c_index", c_index, time, event, risk, n_boot=n_boot, seed=seed)
    return report
