"""Federated recalibration of a binary model's probabilities, fitted at the center from binned counts.

The center never sees a score: it has, per score bin, how many positive and negative validation patients
fell into it (the sites' noisy DP histograms, shared/privacy/dp_evaluation.py, or, without DP, the sites'
reliability bins). Both maps fitted here are affine on the logit, so they keep every patient's rank (AUROC,
threshold order) and change only how probabilities read:

- ``platt``: p' = sigmoid(a * logit(p) + b), (a, b) by weighted logistic regression of the outcome on the
  bins' logit scores, the (noise-clipped) counts as weights;
- ``temperature``: p' = sigmoid(logit(p) / T), one parameter (a = 1/T, b = 0).

Fitting on already-released histograms is post-processing of a DP release: it costs no privacy budget.
The map is stored with each global checkpoint (``calibration``) and `fedcare predict` applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.config_schema import RECALIBRATION_METHODS  # noqa: F401  (re-exported: the map's methods)

_EPS = 1e-7
_RIDGE = 1e-4  # keeps the Newton steps finite when a class is (nearly) empty; ~no pull with hundreds of patients
_MIN_PATIENTS = 20.0  # fewer (noisy) patients than this: no map is fitted


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, dtype=float), -500, 500)))


@dataclass(frozen=True)
class CalibrationMap:
    """p' = sigmoid(slope * logit(p) + intercept)."""

    method: str
    slope: float = 1.0
    intercept: float = 0.0

    def apply_logits(self, logits: np.ndarray) -> np.ndarray:
        """Recalibrated logits (affine: ranks unchanged for slope > 0)."""
        return self.slope * np.asarray(logits, dtype=float) + self.intercept

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        return sigmoid(self.apply_logits(logit(probabilities)))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "slope": self.slope, "intercept": self.intercept}
        if self.method == "temperature":
            out["temperature"] = 1.0 / self.slope
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CalibrationMap:
        method = str(raw["method"])
        if method not in RECALIBRATION_METHODS[1:]:
            raise ValueError(f"unknown calibration method {method!r}")
        return cls(method, float(raw["slope"]), float(raw["intercept"]))


def fit_calibration(scores: np.ndarray, positives: np.ndarray, negatives: np.ndarray, method: str) -> CalibrationMap | None:
    """The `method` map fitted to binned counts: patients with probability `scores[i]`, `positives[i]` of
    them with the event and `negatives[i]` without (noisy counts are clipped at 0). None for method "none",
    or when fewer than 20 patients or only one class are left."""
    if method not in RECALIBRATION_METHODS:
        raise ValueError(f"unknown recalibration method {method!r}; one of {', '.join(RECALIBRATION_METHODS)}")
    if method == "none":
        return None
    pos = np.clip(np.asarray(positives, dtype=float), 0, None)
    neg = np.clip(np.asarray(negatives, dtype=float), 0, None)
    if pos.sum() + neg.sum() < _MIN_PATIENTS or pos.sum() <= 0 or neg.sum() <= 0:
        return None
    z = logit(scores)
    # two rows per bin: (z, y=1, weight pos) and (z, y=0, weight neg)
    x = np.concatenate([z, z])
    y = np.concatenate([np.ones_like(z), np.zeros_like(z)])
    w = np.concatenate([pos, neg])
    n = w.sum()
    if method == "platt":
        design = np.stack([x, np.ones_like(x)], axis=1)
        theta = np.array([1.0, 0.0])
    else:
        design = x[:, None]
        theta = np.array([1.0])
    prior = np.zeros_like(theta)
    prior[0] = 1.0  # shrink towards the identity map, not towards a constant

    def loss(t: np.ndarray) -> float:
        z_t = design @ t  # weighted negative log-likelihood (log(1 + e^z) - y z), stable
        return float((w * (np.logaddexp(0.0, z_t) - y * z_t)).sum() / n + _RIDGE / 2 * ((t - prior) ** 2).sum())

    current = loss(theta)
    for _ in range(100):  # damped Newton: convex, but a full step from the identity can overshoot
        p = sigmoid(design @ theta)
        grad = design.T @ (w * (p - y)) / n + _RIDGE * (theta - prior)
        hess = (design * (w * p * (1 - p))[:, None]).T @ design / n + _RIDGE * np.eye(theta.size)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6 and loss(theta - scale * step) > current:
            scale /= 2
        theta = theta - scale * step
        current = loss(theta)
        if float(np.abs(scale * step).max()) < 1e-10:
            break
    slope = float(theta[0])
    intercept = float(theta[1]) if method == "platt" else 0.0
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope <= 0:
        return None  # a non-increasing map would reverse the model's ranking: keep the raw probabilities
    return CalibrationMap(method, slope, intercept)
