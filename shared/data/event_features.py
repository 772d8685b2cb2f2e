"""Turns an event site's tables into model tensors.

Per event: [one-hot event type (5) | text embedding | scaled time before the stay's last event |
value z-score | value present]. The value (a lab result, an amount) is standardised per event
text (log1p scale, clipped to +-5) with statistics fitted at the site, so "Lactate 6.1" and
"Lactate 0.9" differ to the model; texts seen with fewer than 5 values get z = 0.
Per stay: static features [standardised numeric | one-hot categorical over the schema's fixed
levels + "other"]. Levels are fixed by the schema (every hospital gets the same layout, so
weights align); the scalers are fitted on the site's training split only and saved at the site.
Only the most recent `max_events` events of a stay are kept; how many stays were cut is counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.event_schema import EVENT_TYPES, STATIC_CATEGORICAL, STATIC_NUMERIC
from shared.data.text_embedding import CachedEmbedder
from shared.io import load_json, write_json


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
    def fit(cls, stays: pd.DataFrame, events: pd.DataFrame) -> EventEncoder:
        mean, std = {}, {}
        for col in STATIC_NUMERIC:
            vals = _numeric(stays[col])
            mean[col] = float(np.nanmean(vals)) if np.isfinite(vals).any() else 0.0
            s = float(np.nanstd(vals)) if np.isfinite(vals).any() else 1.0
            std[col] = s if s > 1e-6 else 1.0
        t = np.log1p(_hours_before_end(events).to_numpy()) if len(events) else np.zeros(1)
        values = events.assign(v=_log_value(events)).dropna(subset=["v"])
        stats = values.groupby("event_text")["v"].agg(["mean", "std", "count"])
        stats = stats[stats["count"] >= 5]
        value_stats = {str(k): [float(r["mean"]), float(r["std"]) if r["std"] > 1e-6 else 1.0] for k, r in stats.iterrows()}
        return cls(mean, std, float(t.mean()), float(t.std()) if t.std() > 1e-6 else 1.0, value_stats)

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> EventEncoder:
        return cls(**load_json(path, "saved event encoder"))

    def statics(self, stays: pd.DataFrame) -> np.ndarray:
        cols = []
        for col in STATIC_NUMERIC:
            z = (_numeric(stays[col]) - self.numeric_mean[col]) / self.numeric_std[col]
            cols.append(np.nan_to_num(z, nan=0.0)[:, None])  # missing -> the site mean
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
