"""Turns a visit site's labs into RETAIN's tensors: (patients, visits, labs), left-aligned.

Per visit, the eight labs of ``visits.FEATURES`` in that order. A missing value takes the
patient's previous value of that lab (last observation carried forward), else the reference value
(the one that standardises to 0). Creatinine, BUN and urine output are log1p-transformed (right-skewed);
then every lab is standardised with a public reference mean and standard deviation and clipped to
+-``Z_CLIP``. The reference values are never fitted on a site's patients (issue 17: a scaler fitted on
the training split moves every patient's features when one patient changes, outside the DP guarantee):
``REFERENCE`` below, for the shipped synthetic schema (a synthetic draw independent of any site, seed
2027), overridden per lab by the run config's ``data.standardize: {<lab>: {mean, sd}}`` (on the log1p
scale for the log-transformed labs). Saved at the site (JSON) with the model's inputs.
Only the most recent `max_visits` visits of a patient are kept (the
carried-forward values still come from the older ones); how many patients were cut is counted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.public_stats import parse_public_stats
from shared.data.visits import FEATURES
from shared.errors import InputError
from shared.io import write_json

LOG_FEATURES: tuple[str, ...] = ("creatinine", "bun", "urine_output")
Z_CLIP = 5.0
REFERENCE: dict[str, tuple[float, float]] = {  # lab -> (mean, sd) after the log1p of LOG_FEATURES
    "creatinine": (0.727, 0.199), "bun": (2.823, 0.386), "egfr": (74.835, 24.730), "potassium": (4.182, 0.375),
    "sodium": (138.609, 3.211), "bicarbonate": (24.117, 2.284), "hemoglobin": (12.516, 1.465), "urine_output": (0.691, 0.177),
}


@dataclass
class VisitEncoder:
    """Imputation values (raw units) and scalers (after the log1p transform), from public reference values."""

    features: list[str]
    median: list[float]
    mean: list[float]
    std: list[float]

    @classmethod
    def reference(cls, standardize: Mapping[str, Mapping[str, float]] | None = None, source: str = "<config>") -> VisitEncoder:
        """`REFERENCE`, each lab overridden by `data.standardize`; a missing value is imputed with the raw value
        whose scaled value is 0. No site data."""
        given = parse_public_stats(standardize, source, FEATURES.__contains__,
                                   f"not a lab of the schema: one of {', '.join(FEATURES)}")
        mean = [given.get(f, REFERENCE[f])[0] for f in FEATURES]
        std = [given.get(f, REFERENCE[f])[1] for f in FEATURES]
        median = [float(np.expm1(m)) if f in LOG_FEATURES else m for f, m in zip(FEATURES, mean)]
        return cls(features=list(FEATURES), median=median, mean=mean, std=std)

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
        carried forward within each patient, else the reference value."""
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
