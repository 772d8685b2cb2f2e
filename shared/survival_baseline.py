"""Breslow's estimate of a Cox model's baseline cumulative hazard, and survival probabilities from it.

    H0(t) = sum over distinct event times s <= t of  d(s) / sum_{j : t_j >= s} exp(r_j)
    S(t | r) = exp(-H0(t) exp(r))

with d(s) the number of events at s and r the model's risk scores (log relative hazards) of the rows
it is estimated on. It is estimated at a site, on the site's own rows, and stays there (it lists the
site's event times): `fedcare predict --horizons` at that site reads it from the site's state folder.
A horizon past the last time observed in those rows has no estimate (NaN), not an extrapolation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import InputError
from shared.io import write_json

BASELINE_FILE = "breslow_baseline.json"


@dataclass
class BaselineHazard:
    times: list[float]  # distinct event times, ascending
    cumulative_hazard: list[float]  # H0 just after each of them
    max_time: float  # the largest time (event or censoring) among the rows it was estimated on
    n: int
    n_events: int
    meta: dict[str, Any] = field(default_factory=dict)  # run_id, round: the checkpoint whose risks it uses

    @classmethod
    def estimate(cls, time: np.ndarray, event: np.ndarray, risk: np.ndarray, **meta: Any) -> BaselineHazard:
        time, event = np.asarray(time, float), np.asarray(event).astype(bool)
        risk = np.asarray(risk, float)
        shift = risk.max() if risk.size else 0.0  # exp(r - shift) / exp(-shift): exact, no overflow
        weights = np.exp(risk - shift)
        event_times = np.unique(time[event])
        at_risk = np.array([weights[time >= s].sum() for s in event_times])
        deaths = np.array([np.sum(event & (time == s)) for s in event_times])
        increments = deaths / (at_risk * np.exp(shift)) if event_times.size else np.zeros(0)
        return cls([float(t) for t in event_times], [float(h) for h in np.cumsum(increments)],
                   float(time.max()) if time.size else 0.0, int(time.size), int(event.sum()), dict(meta))

    def at(self, horizons: np.ndarray) -> np.ndarray:
        """H0 at each horizon (step function, right-continuous); NaN past max_time."""
        horizons = np.asarray(horizons, float)
        idx = np.searchsorted(np.asarray(self.times), horizons, side="right")
        values = np.concatenate([[0.0], self.cumulative_hazard])[idx]
        return np.where(horizons <= self.max_time, values, np.nan)

    def survival(self, risk: np.ndarray, horizons: np.ndarray) -> np.ndarray:
        """(N, H) survival probabilities S(h | r) = exp(-H0(h) exp(r))."""
        return np.exp(-self.at(horizons)[None, :] * np.exp(np.asarray(risk, float))[:, None])

    def save(self, path: Path) -> None:
        write_json(Path(path), asdict(self), 0o600)

    @classmethod
    def load(cls, path: Path) -> BaselineHazard:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, None, "no baseline hazard estimated at this site yet (run `fedcare evaluate --run RUN_DIR`)")
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise InputError(path, None, f"not a baseline hazard file ({err})") from None
