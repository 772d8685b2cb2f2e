"""Turns a visit site's labs into RETAIN's tensors: (patients, visits, labs), left-aligned.

Per visit, the eight labs of ``visits.FEATURES`` in that order. A missing value takes the
patient's previous value of that lab (last observation carried forward), else the site's
training-split median. Creatinine, BUN and urine output are log1p-transformed (right-skewed);
then every lab is standardised with the training split's mean and standard deviation and clipped
to +-``Z_CLIP``. The scalers are fitted on the site's training split only and saved at the site
(JSON); they never leave it. Only the most recent `max_visits` visits of a patient are kept (the
carried-forward values still come from the older ones); how many patients were cut is counted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.visits import FEATURES
from shared.errors import InputError
from shared.io import write_json

LOG_FEATURES: tuple[str, ...] = ("creatinine", "bun", "urine_output")
Z_CLIP = 5.0


@dataclass
class VisitEncoder:
    """Site-fitted imputation medians (raw units) and scalers (after the log1p transform)."""

    features: list[str]
    median: list[float]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, visits: pd.DataFrame) -> VisitEncoder:
        """From the training split's visits (a visits frame, see visits.VisitSiteData)."""
        raw = visits[list(FEATURES)]
        median = raw.median().fillna(0.0)  # a lab never measured at the site: 0 after scaling anyway
        filled = _carry_forward(visits).fillna(median)
        transformed = _transform(filled.to_numpy(np.float64))
        std = transformed.std(axis=0)
        return cls(
            features=list(FEATURES),
            median=[float(v) for v in median],
            mean=[float(v) for v in transformed.mean(axis=0)],
            std=[float(s) if s > 1e-6 else 1.0 for s in std],
        )

    def save(self, path: Path) -> None:
        write_json(Path(path), asdict(self))

    @classmethod
    def load(cls, path: Path) -> VisitEncoder:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, None, "visit encoder not found (written by the site during training)")
        try:
            encoder = cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise InputError(path, None, f"not a visit encoder: {err}") from None
        if encoder.features != list(FEATURES):
            raise InputError(path, "features", f"encoder labs {encoder.features} differ from the schema's {list(FEATURES)}")
        return encoder

    def imputed(self, visits: pd.DataFrame) -> np.ndarray:
        """(n_visits, n_features) float64 raw lab values as the model sees them before scaling:
        carried forward within each patient, else the site's training median."""
        return _carry_forward(visits).fillna(pd.Series(self.median, index=list(FEATURES))).to_numpy(np.float64)

    def transform(self, visits: pd.DataFrame) -> np.ndarray:
        """(n_visits, n_features) float32, in the frame's row order."""
        z = (_transform(self.imputed(visits)) - np.asarray(self.mean)) / np.asarray(self.std)
        return np.clip(z, -Z_CLIP, Z_CLIP).astype(np.float32)


@dataclass
class VisitTensors:
    x: np.ndarray  # (N, T, F) float32, zero on padding
    valid: np.ndarray  # (N, T) bool, a prefix of each row
    patient_ids: np.ndarray  # (N,) str
    truncated_patients: int  # patients with more than max_visits visits (oldest dropped)
    dropped_visits: int  # visits left out by the cap, all patients together


@dataclass
class VisitSlots:
    """Where each visit of a frame goes in the (patients, visits) tensors."""

    row: np.ndarray  # (n_visits,) patient row of each visit
    slot: np.ndarray  # (n_visits,) time step; negative = older than the cap, left out
    steps: int  # T of the tensors
    dropped: np.ndarray  # (n_patients,) visits left out per patient

    @property
    def keep(self) -> np.ndarray:
        return self.slot >= 0


def visit_slots(visits: pd.DataFrame, patients: pd.Index, max_visits: int) -> VisitSlots:
    """The most recent `max_visits` visits of each patient -> slots 0.. in time order (left-aligned).
    `visits` holds only `patients`' visits, sorted by patient then time."""
    row_of = pd.Index(patients).get_indexer(visits["patient_id"])
    count = np.bincount(row_of, minlength=len(patients))  # visits per patient
    position = visits.groupby("patient_id", sort=False).cumcount().to_numpy()  # 0 = oldest
    dropped = np.maximum(count - max_visits, 0)
    steps = max(1, int(min(max_visits, count.max(initial=0))))
    return VisitSlots(row_of, position - dropped[row_of], steps, dropped)


def encode_visits(visits: pd.DataFrame, patients: pd.Index, encoder: VisitEncoder, max_visits: int) -> VisitTensors:
    """Tensors for `patients` (in that order) from a visits frame sorted by patient then time."""
    visits = visits[visits["patient_id"].isin(patients)]
    features = encoder.transform(visits)
    at = visit_slots(visits, patients, max_visits)
    keep = at.keep
    x = np.zeros((len(patients), at.steps, len(FEATURES)), np.float32)
    valid = np.zeros((len(patients), at.steps), bool)
    x[at.row[keep], at.slot[keep]] = features[keep]
    valid[at.row[keep], at.slot[keep]] = True
    return VisitTensors(x, valid, np.asarray(patients, dtype=str), int((at.dropped > 0).sum()), int(at.dropped.sum()))


def _carry_forward(visits: pd.DataFrame) -> pd.DataFrame:
    return visits.groupby("patient_id", sort=False)[list(FEATURES)].ffill()


def _transform(values: np.ndarray) -> np.ndarray:
    out = values.copy()
    for k, name in enumerate(FEATURES):
        if name in LOG_FEATURES:
            out[:, k] = np.log1p(out[:, k])
    return out
