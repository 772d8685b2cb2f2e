"""Validation metrics inside the privacy guarantee: sites release noisy sufficient statistics, the center
derives every metric from them.

Neighbouring relation: add or remove one patient (one validation record) at a site.

- **Binary tasks** release two score histograms, `hist_pos_<b>` and `hist_neg_<b>`: how many positive and
  negative validation patients have a predicted probability in bin b. The B bins are fixed (public, the
  same for every model): equally spaced in logit over [-7, 7] (`bin_edges`), the outer two open to 0 and 1.
  Equal-width bins over [0, 1] lost 0.06-0.15 AUROC to ties on the demo's DP-trained model, whose
  probabilities sit mostly in 0.004-0.12 (benchmarks/dp_evaluation.py); logit bins lose ~0.01. One
  patient is one count in one cell, so the
  L2 sensitivity of the 2B-vector is exactly 1 (`BINARY_SENSITIVITY`), whatever the model: a crafted model
  can move a patient's score to any bin, but never make it count more than once.
- **Multiclass tasks** (sleep staging) release the confusion matrix `confusion_<true>_<predicted>`. One
  recording adds up to `units` scored epochs; its L2 contribution is at most `units` (all in one cell).
- **Survival tasks** release nothing under DP (no C-index from sufficient statistics here); exact metrics
  only where the site policy allows them.

Gaussian mechanism: every released coordinate gets N(0, (noise_multiplier x sensitivity)^2), drawn from a
generator seeded by the operating system (`secrets`), never derivable from the run config. It is a
subsampled Gaussian at sample rate 1 for one step: the ledger records Mechanism(noise_multiplier, 1.0, 1)
and the RDP accountants compose it with DP-SGD exactly.

The center (`binary_metrics`, `multiclass_metrics`) clips noisy counts at 0 and computes AUROC (rank sums
with ties inside a bin counted 1/2), AUPRC (one tie group per bin), the Youden threshold (a bin edge),
sensitivity at 90 % specificity, Brier score, validation log-loss, ECE and the 10 equal-width
calibration bins with every patient at its bin's center (sigmoid of the logit midpoint); or accuracy,
macro-F1, per-class F1 and Cohen's kappa from the confusion matrix. All are post-processing of the
release: no further privacy cost. Per site and for the sum over sites.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping

import numpy as np

MAX_BINS = 50
MAX_CLASSES = 8
BINARY_SENSITIVITY = 1.0
HIST_POS, HIST_NEG = "hist_pos_{}", "hist_neg_{}"
CONFUSION = "confusion_{}_{}"
EXACT_MARKER = "exact_metrics"  # a site whose policy lets it send exact (un-noised) metrics says so
RELEASE_KEYS: frozenset[str] = frozenset(
    {HIST_POS.format(b) for b in range(MAX_BINS)} | {HIST_NEG.format(b) for b in range(MAX_BINS)}
    | {CONFUSION.format(i, j) for i in range(MAX_CLASSES) for j in range(MAX_CLASSES)}
)
_HIST = re.compile(r"hist_(pos|neg)_(\d+)")
_CONF = re.compile(r"confusion_(\d+)_(\d+)")
CALIBRATION_GROUPS = 10  # reliability bins reported (equal width), as shared.metrics.calibration_bins
MIN_CALIBRATION_BIN_COUNT = 10.0
LOGIT_RANGE = 7.0  # bins equally spaced in logit over [-LOGIT_RANGE, LOGIT_RANGE]


def secure_rng() -> np.random.Generator:
    """A generator seeded with 128 bits from the operating system: the center cannot derive its draws."""
    return np.random.default_rng(secrets.randbits(128))


# ---------------------------------------------------------------- the site's release


def _logit_grid(bins: int) -> np.ndarray:
    return np.linspace(-LOGIT_RANGE, LOGIT_RANGE, bins + 1)


def bin_edges(bins: int) -> np.ndarray:
    """The bins+1 fixed probability edges: 0, sigmoid of the inner logit grid points, 1."""
    edges = 1.0 / (1.0 + np.exp(-_logit_grid(bins)))
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def bin_centers(bins: int) -> np.ndarray:
    """The probability every patient of a bin is taken to have (Brier, log-loss, calibration): sigmoid of
    the bin's logit midpoint."""
    grid = _logit_grid(bins)
    return 1.0 / (1.0 + np.exp(-(grid[:-1] + grid[1:]) / 2))


def bin_index(scores: np.ndarray, bins: int) -> np.ndarray:
    """Bin b holds probabilities in [edge_b, edge_b+1); 1.0 falls in the last bin."""
    scores = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.searchsorted(bin_edges(bins), scores, side="right") - 1, 0, bins - 1)


def score_histograms(y_true: np.ndarray, y_prob: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(positives per bin, negatives per bin) of predicted probabilities."""
    y = np.asarray(y_true).astype(int).reshape(-1)
    b = bin_index(np.asarray(y_prob).reshape(-1), bins)
    return (np.bincount(b[y == 1], minlength=bins).astype(float), np.bincount(b[y != 1], minlength=bins).astype(float))


def release_binary(
    y_true: np.ndarray, y_prob: np.ndarray, bins: int, noise_multiplier: float, rng: np.random.Generator | None = None
) -> dict[str, float]:
    """The noisy histograms as whitelisted scalars (sensitivity 1, noise std = noise_multiplier)."""
    if not 2 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be in [2, {MAX_BINS}], got {bins}")
    rng = rng or secure_rng()
    pos, neg = score_histograms(y_true, y_prob, bins)
    std = noise_multiplier * BINARY_SENSITIVITY
    pos, neg = pos + rng.normal(0.0, std, bins), neg + rng.normal(0.0, std, bins)
    out = {HIST_POS.format(b): float(v) for b, v in enumerate(pos)}
    out.update({HIST_NEG.format(b): float(v) for b, v in enumerate(neg)})
    return out


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, ignore: int | None = None) -> np.ndarray:
    y, p = np.asarray(y_true).reshape(-1).astype(int), np.asarray(y_pred).reshape(-1).astype(int)
    keep = (y >= 0) & (y < n_classes) if ignore is None else (y != ignore) & (y >= 0) & (y < n_classes)
    matrix = np.zeros((n_classes, n_classes))
    np.add.at(matrix, (y[keep], np.clip(p[keep], 0, n_classes - 1)), 1.0)
    return matrix


def release_confusion(
    matrix: np.ndarray, units_per_record: int, noise_multiplier: float, rng: np.random.Generator | None = None
) -> dict[str, float]:
    """The noisy confusion matrix; one record adds at most `units_per_record` counts (L2 sensitivity)."""
    k = matrix.shape[0]
    if not 2 <= k <= MAX_CLASSES:
        raise ValueError(f"the DP confusion matrix supports 2..{MAX_CLASSES} classes, got {k}")
    rng = rng or secure_rng()
    noisy = matrix + rng.normal(0.0, noise_multiplier * units_per_record, matrix.shape)
    return {CONFUSION.format(i, j): float(noisy[i, j]) for i in range(k) for j in range(k)}


# ---------------------------------------------------------------- the center's metrics


def histograms_of(values: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray] | None:
    """The (noisy) histograms a site released, or None."""
    cells = {(m.group(1), int(m.group(2))): float(v) for k, v in values.items() if (m := _HIST.fullmatch(k))}
    if not cells:
        return None
    bins = 1 + max(b for _, b in cells)
    pos = np.array([cells.get(("pos", b), 0.0) for b in range(bins)])
    neg = np.array([cells.get(("neg", b), 0.0) for b in range(bins)])
    return pos, neg


def confusion_of(values: Mapping[str, float]) -> np.ndarray | None:
    cells = {(int(m.group(1)), int(m.group(2))): float(v) for k, v in values.items() if (m := _CONF.fullmatch(k))}
    if not cells:
        return None
    k = 1 + max(max(i, j) for i, j in cells)
    matrix = np.zeros((k, k))
    for (i, j), v in cells.items():
        matrix[i, j] = v
    return matrix


def binary_metrics(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """Metrics of the (noisy) score histograms; negative counts are clipped to 0 first (less AUROC error than
    the raw counts: measured 0.043 vs 0.071 mean absolute error per site at noise 4, 20 bins), except for
    num-examples, the unbiased raw total. Metrics that need both classes are left out when one class is empty."""
    raw_total = float(np.sum(pos) + np.sum(neg))
    pos, neg = np.clip(np.asarray(pos, float), 0, None), np.clip(np.asarray(neg, float), 0, None)
    bins = pos.size
    n_pos, n_neg = pos.sum(), neg.sum()
    n = n_pos + n_neg
    out: dict[str, float] = {"num-examples": float(max(0, round(raw_total)))}
    if n <= 0:
        return out
    mid = bin_centers(bins)
    out["prevalence"] = float(n_pos / n)
    out["brier"] = float((pos * (1 - mid) ** 2 + neg * mid**2).sum() / n)
    out["val_loss"] = float(-(pos * np.log(mid) + neg * np.log(1 - mid)).sum() / n)
    out.update(_calibration(pos, neg, mid))
    if n_pos > 0 and n_neg > 0:
        neg_below = np.cumsum(neg) - neg
        out["auroc"] = float((pos * (neg_below + neg / 2)).sum() / (n_pos * n_neg))
        tp, fp = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])  # predicted positive at >= each bin, highest first
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
        out["auprc"] = float((pos[::-1] * precision).sum() / n_pos)
        tpr, fpr = tp[::-1] / n_pos, fp[::-1] / n_neg  # index b: threshold b / bins
        youden = tpr[1:] - fpr[1:]
        best = 1 + int(np.flatnonzero(youden == youden.max())[-1])  # ties: the highest threshold
        out["threshold"] = float(bin_edges(bins)[best])
        out["sensitivity"], out["specificity"] = float(tpr[best]), float(1 - fpr[best])
        out["sens_at_spec"] = float(tpr[fpr <= 0.1 + 1e-12].max()) if (fpr <= 0.1 + 1e-12).any() else 0.0
    return out


def _calibration(pos: np.ndarray, neg: np.ndarray, mid: np.ndarray) -> dict[str, float]:
    """ECE and reliability bins over CALIBRATION_GROUPS equal-width probability bins: each histogram bin goes
    to the one holding its center, and the mean prediction of a group is its count-weighted bin center; bins
    below MIN_CALIBRATION_BIN_COUNT patients are left out of the reported curve (noisy counts: a display
    floor, not the protection)."""
    groups = CALIBRATION_GROUPS
    group = np.clip((mid * groups).astype(int), 0, groups - 1)
    count = np.bincount(group, weights=pos + neg, minlength=groups)
    events = np.bincount(group, weights=pos, minlength=groups)
    predicted_sum = np.bincount(group, weights=(pos + neg) * mid, minlength=groups)
    out: dict[str, float] = {}
    keep = count > 0
    if keep.any():
        observed, predicted = events[keep] / count[keep], predicted_sum[keep] / count[keep]
        out["ece"] = float((count[keep] / count.sum() * np.abs(observed - predicted)).sum())
    for i in np.flatnonzero(count >= MIN_CALIBRATION_BIN_COUNT):
        out[f"calib_bin_{i}_observed"] = float(events[i] / count[i])
        out[f"calib_bin_{i}_predicted"] = float(predicted_sum[i] / count[i])
        out[f"calib_bin_{i}_count"] = float(count[i])
    return out


def multiclass_metrics(matrix: np.ndarray) -> dict[str, float]:
    """accuracy, macro_f1, kappa and f1_class_<k> of a (noisy) confusion matrix (rows true, columns predicted)."""
    raw_total = float(np.sum(matrix))
    m = np.clip(np.asarray(matrix, float), 0, None)
    total = m.sum()
    out: dict[str, float] = {"num-examples": float(max(0, round(raw_total)))}
    if total <= 0:
        return out
    diag = np.diag(m)
    rows, cols = m.sum(1), m.sum(0)
    out["accuracy"] = float(diag.sum() / total)
    chance = float((rows * cols).sum() / total**2)
    if chance < 1:
        out["kappa"] = float((out["accuracy"] - chance) / (1 - chance))
    f1 = []
    for k in range(m.shape[0]):
        denom = rows[k] + cols[k]
        if denom > 0:
            f1.append(2 * diag[k] / denom)
            out[f"f1_class_{k}"] = float(f1[-1])
    if f1:
        out["macro_f1"] = float(np.mean(f1))
    return out


def released_metrics(values: Mapping[str, float]) -> dict[str, float]:
    """The metrics a center derives from one site's DP release (empty when it holds none)."""
    hist = histograms_of(values)
    if hist is not None:
        return binary_metrics(*hist)
    matrix = confusion_of(values)
    if matrix is not None:
        return multiclass_metrics(matrix)
    return {}


def aggregate_release(sites: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The element-wise sum of the sites' releases (same bins/classes only), as one release."""
    total: dict[str, float] = {}
    shapes = set()
    for values in sites.values():
        hist = histograms_of(values)
        matrix = confusion_of(values)
        if hist is not None:
            shapes.add(("hist", hist[0].size))
        elif matrix is not None:
            shapes.add(("confusion", matrix.shape[0]))
        else:
            continue
        for key, value in values.items():
            if key in RELEASE_KEYS and math.isfinite(value):
                total[key] = total.get(key, 0.0) + float(value)
    return total if len(shapes) == 1 else {}


def histogram_calibration(pos: np.ndarray, neg: np.ndarray, predicted: np.ndarray | None = None) -> dict[str, float]:
    """ECE and reliability bins (as `binary_metrics`) of (noisy) score histograms whose patients are taken to
    have probability `predicted[b]` in bin b: the bin centres by default, or the centres mapped through a
    recalibration (shared/calibration.py). Noisy counts are clipped at 0."""
    pos, neg = np.clip(np.asarray(pos, float), 0, None), np.clip(np.asarray(neg, float), 0, None)
    mid = bin_centers(pos.size) if predicted is None else np.asarray(predicted, float)
    return _calibration(pos, neg, mid)
