"""Metrics of a model on a held-out (test) split, with bootstrap CIs and an explicit "n/a: <why>"
where the rows cannot support a metric (one class, no events, no comparable pairs) instead of a value
that would mislead (a C-index of 1.000 from a split with one event pair).

A report is a JSON-ready dict: ``n``, ``n_positive`` / ``n_events`` and, per metric, either
``{"value": v, "ci_low": l, "ci_high": h}`` (the CI left out when no bootstrap resample has the metric)
or the string ``"n/a: <reason>"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

from shared.metrics import auprc, auroc, bootstrap_ci, brier, c_index, expected_calibration_error

BINARY_TEST_METRICS = ("auroc", "auprc", "brier", "ece")
SURVIVAL_TEST_METRICS = ("c_index",)


def not_available(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("n/a")


def _with_ci(metric: Any, *arrays: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    point, low, high = bootstrap_ci(metric, *arrays, n_boot=n_boot, seed=seed)
    out = {"value": point}
    if np.isfinite(low) and np.isfinite(high):
        out |= {"ci_low": low, "ci_high": high}
    return out


def _comparable_pairs(time: np.ndarray, event: np.ndarray) -> bool:
    """Is there a pair (i, j) with an event at t_i and t_j > t_i, or t_j = t_i with j censored?"""
    for t in np.unique(time[event]):
        if (time > t).any() or ((time == t) & ~event).any():
            return True
    return False


def binary_test_report(labels: np.ndarray, logits: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    y = np.asarray(labels).astype(int).reshape(-1)
    prob = expit(np.asarray(logits, float).reshape(-1))
    report: dict[str, Any] = {"n": int(y.size), "n_positive": int(y.sum())}
    if y.size == 0:
        return report | {m: "n/a: no test rows" for m in BINARY_TEST_METRICS}
    if np.unique(y).size < 2:
        reason = f"n/a: one class (all {int(y[0])})"
        report |= {"auroc": reason, "auprc": reason}
    else:
        report["auroc"] = _with_ci(auroc, y, prob, n_boot=n_boot, seed=seed)
        report["auprc"] = _with_ci(auprc, y, prob, n_boot=n_boot, seed=seed)
    report["brier"] = _with_ci(brier, y, prob, n_boot=n_boot, seed=seed)
    report["ece"] = {"value": expected_calibration_error(y, prob)}
    return report


def survival_test_report(targets: np.ndarray, risk: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """targets (N, 2): [time, event]; risk (N,): log relative hazard (higher = earlier event)."""
    targets = np.asarray(targets, float).reshape(-1, 2)
    time, event = targets[:, 0], targets[:, 1].astype(bool)
    risk = np.asarray(risk, float).reshape(-1)
    report: dict[str, Any] = {"n": int(time.size), "n_events": int(event.sum())}
    if time.size == 0:
        report["c_index"] = "n/a: no test rows"
    elif not event.any():
        report["c_index"] = "n/a: no events"
    elif not _comparable_pairs(time, event):
        report["c_index"] = "n/a: no comparable pairs"
    else:
        report["c_index"] = _with_ci(c_index, time, event, risk, n_boot=n_boot, seed=seed)
    return report


def test_split_report(kind: str, targets: np.ndarray, outputs: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The report of a binary (outputs = logits) or survival (outputs = risks) task's test rows."""
    if kind == "binary":
        return binary_test_report(targets, outputs, n_boot, seed)
    if kind == "survival":
        return survival_test_report(targets, outputs, n_boot, seed)
    return {"n": int(len(targets)), "note": f"n/a: no test report for {kind} tasks yet"}


test_split_report.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one
