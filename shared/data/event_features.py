"""Turns an event site's tables into model tensors.

Per event: [one-hot event type (5) | text embedding | scaled time before the stay's last event |
value z-score | value present]. The value (a lab result, an amount) is standardised per event
text (log1p scale, clipped to +-5), so "Lactate 6.1" and "Lactate 0.9" differ to the model; texts
without reference statistics get z = 0 (the "value present" flag still says a value was charted).
Per stay: static features [standardised numeric | one-hot categorical over the schema's fixed
levels + "other"]. Levels are fixed by the schema (every hospital gets the same layout, so
weights align). Only the most recent `max_events` events of a stay are kept; how many stays were cut is counted.

The scalers are public reference values, never fitted on a site's patients (issue 17: a scaler fitted
on the training split moves every patient's features when one patient changes, outside the DP
guarantee): `REFERENCE_*` below, for the shipped synthetic schema (means and sds of a synthetic draw
independent of any site's data, seed 2027), overridden per key by the run config's
`data.standardize` (`age`, `los_hours` and `log_hours_before_end` on the log1p scale, and
`value:<event text>`: mean and sd of log1p|value|). Saved at the site with the model's inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.event_schema import EVENT_TYPES, STATIC_CATEGORICAL, STATIC_NUMERIC
from shared.data.public_stats import parse_public_stats
from shared.data.text_embedding import CachedEmbedder
from shared.io import load_json, write_json

# (mean, sd): age in years, log1p(length of stay in hours), log1p(hours before the stay's last event)
REFERENCE_NUMERIC: dict[str, tuple[float, float]] = {"age": (63.87, 15.61), "los_hours": (3.94, 0.77)}
REFERENCE_TIME: tuple[float, float] = (3.15, 1.19)
TIME_KEY, VALUE_PREFIX = "log_hours_before_end", "value:"
REFERENCE_VALUE_STATS: dict[str, tuple[float, float]] = {  # event text -> (mean, sd) of log1p|value|
    "Alanine Aminotransferase (ALT)": (3.470, 0.773), "Albumin": (1.428, 0.123), "Anion Gap": (2.607, 0.233),
    "Asparate Aminotransferase (AST)": (3.593, 0.779), "Bicarbonate": (3.206, 0.166), "Bilirubin, Total": (0.656, 0.372),
    "Blood Ingredient": (5.706, 0.150), "Calcium (ingr)": (0.719, 0.205), "Calcium, Total": (2.259, 0.064),
    "Calories": (5.524, 0.608), "Chloride": (4.643, 0.048), "Creatinine": (0.730, 0.281),
    "Enteral Nutrition Ingredient": (3.906, 0.507), "Glucose": (4.837, 0.297), "Glucose (ingr)": (3.249, 0.464),
    "Hematocrit": (3.452, 0.178), "Hemoglobin": (2.400, 0.185), "INR(PT)": (0.840, 0.141), "IVF ingredient": (5.517, 0.890),
    "Lactate": (1.219, 0.463), "Magnesium": (1.096, 0.101), "Oral/Gastric Ingredient": (4.796, 0.599), "PTT": (3.495, 0.240),
    "Phosphate": (1.485, 0.213), "Platelet Count": (5.304, 0.501), "Potassium": (1.624, 0.099), "Protein": (2.774, 0.557),
    "Sodium": (4.941, 0.029), "Urea Nitrogen": (3.050, 0.571), "Water": (4.617, 0.695), "White Blood Cells": (2.362, 0.407),
    "pCO2": (3.713, 0.198), "pH": (2.126, 0.007), "pO2": (4.659, 0.448),
}


def static_dim() -> int:
    return len(STATIC_NUMERIC) + sum(len(levels) + 1 for levels in STATIC_CATEGORICAL.values())


def event_dim(text_dim: int) -> int:
    return len(EVENT_TYPES) + text_dim + 3


def event_feature_groups(text_dim: int) -> dict[str, slice]:
    """Named column blocks of the per-event vector (explanations, ablation)."""
    t = len(EVENT_TYPES)
    return {"event_type": slice(0, t), "text": slice(t, t + text_dim), "time": slice(t + text_dim, t + text_dim + 1),
            "value": slice(t + text_dim + 1, t + text_dim + 3)}


def static_feature_names() -> list[str]:
    names = list(STATIC_NUMERIC)
    for col, levels in STATIC_CATEGORICAL.items():
        names += [f"{col}={lv}" for lv in levels] + [f"{col}=other"]
    return names


@dataclass
class EventEncoder:
    """Site-fitted scalers (means/stds of log-hours and numeric statics)."""

    numeric_mean: dict[str, float] = field(default_factory=dict)
    numeric_std: dict[str, float] = field(default_factory=dict)
    time_mean: float = 0.0
    time_std: float = 1.0
    value_stats: dict[str, list[float]] = field(default_factory=dict)  # event text -> [mean, std] of log1p|value|

    @classmethod
    def reference(cls, standardize: Mapping[str, Mapping[str, float]] | None = None, source: str = "<config>") -> EventEncoder:
        """The shipped reference statistics, each key overridden by `data.standardize` ({mean, sd}); no site data."""
        given = parse_public_stats(
            standardize, source, lambda k: k in REFERENCE_NUMERIC or k == TIME_KEY or k.startswith(VALUE_PREFIX),
            f"unknown key: one of {', '.join(REFERENCE_NUMERIC)}, {TIME_KEY} or {VALUE_PREFIX}<event text>",
        )
        numeric = {c: given.get(c, REFERENCE_NUMERIC[c]) for c in STATIC_NUMERIC}
        values = {**REFERENCE_VALUE_STATS, **{k[len(VALUE_PREFIX):]: v for k, v in given.items() if k.startswith(VALUE_PREFIX)}}
        time_mean, time_std = given.get(TIME_KEY, REFERENCE_TIME)
        return cls({c: m for c, (m, _) in numeric.items()}, {c: sd for c, (_, sd) in numeric.items()}, time_mean, time_std,
                   {k: [m, sd] for k, (m, sd) in values.items()})

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> EventEncoder:
        return cls(**load_json(path, "saved event encoder"))

    def statics(self, stays: pd.DataFrame) -> np.ndarray:
        cols = []
        for col in STATIC_NUMERIC:
            z = (_numeric(stays[col]) - self.numeric_mean[col]) / self.numeric_std[col]
            cols.append(np.nan_to_num(z, nan=0.0)[:, None])  # missing -> the reference mean
        for col, levels in STATIC_CATEGORICAL.items():
            vals = stays[col].astype(str).to_numpy() if col in stays else np.full(len(stays), "")
            onehot = np.zeros((len(stays), len(levels) + 1), np.float32)
            index = {lv: i for i, lv in enumerate(levels)}
            onehot[np.arange(len(stays)), [index.get(v, len(levels)) for v in vals]] = 1.0
            cols.append(onehot)
        return np.concatenate(cols, axis=1).astype(np.float32)

    def value_features(self, events: pd.DataFrame) -> np.ndarray:
        """(N, 2): [z-score of log1p|value| for its event text, value present]."""
        v = _log_value(events).to_numpy()
        stats = events["event_text"].astype(str).map(self.value_stats)
        mean = np.array([m[0] if isinstance(m, list) else np.nan for m in stats])
        std = np.array([m[1] if isinstance(m, list) else 1.0 for m in stats])
        z = np.clip(np.nan_to_num((v - mean) / std, nan=0.0), -5.0, 5.0)
        return np.stack([z, np.isfinite(v).astype(float)], axis=1).astype(np.float32)

    def scaled_time(self, hours_before_end: np.ndarray) -> np.ndarray:
        return ((np.log1p(hours_before_end) - self.time_mean) / self.time_std).astype(np.float32)


@dataclass
class EventTensors:
    stay_ids: np.ndarray  # (N,)
    events: np.ndarray  # (N, L, event_dim) float32
    valid: np.ndarray  # (N, L) bool, True for real events (left-aligned)
    hours: np.ndarray  # (N, L) float32 hours before the stay's last event (0 on padding)
    statics: np.ndarray  # (N, static_dim) float32
    labels: np.ndarray  # (N,) float32
    truncated_stays: int  # stays that had more than max_events events


def _numeric(s: pd.Series) -> np.ndarray:
    vals = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
    return np.log1p(vals) if s.name == "los_hours" else vals


def _log_value(events: pd.DataFrame) -> pd.Series:
    if "value" not in events:
        return pd.Series(np.nan, index=events.index)
    return np.log1p(pd.to_numeric(events["value"], errors="coerce").abs())


def _hours_before_end(events: pd.DataFrame) -> pd.Series:
    last = events.groupby("stay_id")["charttime"].transform("max")
    return ((last - events["charttime"]).dt.total_seconds() / 3600.0).clip(lower=0.0)


def encode_events(
    stays: pd.DataFrame, events: pd.DataFrame, encoder: EventEncoder, embedder: CachedEmbedder, max_events: int
) -> EventTensors:
    """stays: indexed by stay_id; events: sorted by (stay_id, charttime)."""
    stay_ids = stays.index.to_numpy()
    n, text_dim = len(stay_ids), embedder.dim
    ev = events[events["stay_id"].isin(stay_ids)].copy()
    ev["hours"] = _hours_before_end(ev)
    # keep the most recent max_events per stay
    ev["rank_from_end"] = ev.groupby("stay_id").cumcount(ascending=False)
    counts = ev.groupby("stay_id").size()
    truncated = int((counts > max_events).sum())
    ev = ev[ev["rank_from_end"] < max_events]
    pos = ev.groupby("stay_id").cumcount().to_numpy()
    row = pd.Index(stay_ids).get_indexer(ev["stay_id"])

    feats = np.zeros((n, max_events, event_dim(text_dim)), np.float32)
    valid = np.zeros((n, max_events), bool)
    hours = np.zeros((n, max_events), np.float32)
    type_idx = pd.Categorical(ev["event_type"], categories=list(EVENT_TYPES)).codes
    feats[row, pos, type_idx] = 1.0
    feats[row, pos, len(EVENT_TYPES) : len(EVENT_TYPES) + text_dim] = embedder.embed(ev["event_text"].astype(str).tolist())
    feats[row, pos, -3] = encoder.scaled_time(ev["hours"].to_numpy())
    feats[row, pos, -2:] = encoder.value_features(ev)
    valid[row, pos] = True
    hours[row, pos] = ev["hours"].to_numpy()
    if "hospital_expire_flag" in stays:
        labels = pd.to_numeric(stays["hospital_expire_flag"], errors="coerce").fillna(-1).to_numpy(dtype=np.float32)
    else:  # new stays to predict: no label (-1)
        labels = np.full(n, -1.0, np.float32)
    return EventTensors(stay_ids, feats, valid, hours, encoder.statics(stays), labels, truncated)
