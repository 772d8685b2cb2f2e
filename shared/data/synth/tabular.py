"""Synthetic tabular hospitals for `tabular_binary` and `tabular_survival`, in the on-disk format of
shared/data/tabular.py (``<out>/<site>/table.csv`` with a fixed ``split`` column).

The planted signal: a linear predictor over standardised covariates,

    lp = 1.5 x (0.8 z(age) + 0.5 z(systolic BP) + 0.6 z(creatinine) + 0.4 [male]
                + 0.3 [former smoker] + 0.8 [current smoker] + 0.4 / 0.9 / 1.4 [NYHA II / III / IV])

with two pure-noise covariates and a BMI without effect. Binary: P(y = 1) = sigmoid(a_site + lp), the
intercept a_site making prevalences of about 15-30 % (imbalanced, different per site). Survival:
Weibull times (shape 1.3) with scale exp(-(b_site + lp) / 1.3), censored by uniform administrative
follow-up (1-5 years) and random drop-out (40-50 % of the patients have an event). Sites differ in
size, in their case mix (age and creatinine shifted, different NYHA and smoking mixes) and in their
baseline risk, so the federation is heterogeneous and noisy (the outcome is far from determined by
the covariates: a logistic / Cox model fitted on one site's training rows scores about 0.75 / 0.72).

Each site's rows are split at random into train / val / test (60 / 20 / 20 %) in the ``split`` column.
``SYNTHETIC_DATA_CONFIG`` is the matching ``data:`` section (covariates, standardisation with the
generator's population values: public numbers, not fitted on any site).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shared.io import write_bytes

DEFAULT_SIZES = (800, 500, 250)
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test
NYHA = ("I", "II", "III", "IV")
SMOKING = ("never", "former", "current")
NUMERIC = {  # name -> (population mean, sd): the standardisation the configs carry
    "age (years)": (62.0, 12.0),
    "systolic BP, mmHg": (135.0, 20.0),
    "BMI kg/m^2": (27.0, 4.5),
    "creatinine [mg/dL]": (1.1, 0.35),
    "noise #1": (0.0, 1.0),
    "noise #2": (50.0, 10.0),
}
SYNTHETIC_COVARIATES: list[dict[str, Any]] = [
    *({"name": name, "type": "numeric"} for name in NUMERIC),
    {"name": "sex", "type": "categorical", "levels": ["female", "male"]},
    {"name": "smoking status", "type": "categorical", "levels": list(SMOKING)},
    {"name": "NYHA class", "type": "categorical", "levels": list(NYHA)},
]
WEIBULL_SHAPE = 1.3
SIGNAL = 1.5  # scales the planted log-odds / log-hazard effects


def synthetic_data_config(outcome: str) -> dict[str, Any]:
    """The `data:` keys that describe the synthetic tables (outcome: binary | survival)."""
    outcome_columns = ({"label_column": "outcome"} if outcome == "binary"
                       else {"time_column": "days to event", "event_column": "event observed"})
    return {
        "id_column": "patient id",
        **outcome_columns,
        "covariates": [dict(c, levels=list(c["levels"])) if "levels" in c else dict(c) for c in SYNTHETIC_COVARIATES],
        "standardize": {name: {"mean": m, "sd": s} for name, (m, s) in NUMERIC.items()},
    }


def _site_rows(rng: np.random.Generator, n: int, k: int, outcome: str) -> pd.DataFrame:
    shift = (k % 3 - 1)  # -1, 0, +1: case mix differs per site
    age = rng.normal(62 + 5 * shift, 11, n)
    sbp = rng.normal(135 + 4 * shift, 19, n)
    bmi = rng.normal(27, 4.5, n)
    creat = np.exp(rng.normal(np.log(1.05) + 0.08 * shift, 0.3, n))
    male = rng.random(n) < 0.45 + 0.05 * shift
    smoking = rng.choice(3, n, p=np.roll([0.55, 0.3, 0.15], k % 2))
    nyha = rng.choice(4, n, p=[0.35, 0.35, 0.2, 0.1] if k % 2 == 0 else [0.25, 0.35, 0.25, 0.15])
    z = {name: (v - NUMERIC[name][0]) / NUMERIC[name][1] for name, v in
         (("age (years)", age), ("systolic BP, mmHg", sbp), ("creatinine [mg/dL]", creat))}
    lp = SIGNAL * (0.8 * z["age (years)"] + 0.5 * z["systolic BP, mmHg"] + 0.6 * z["creatinine [mg/dL]"] + 0.4 * male
                   + np.array([0.0, 0.3, 0.8])[smoking] + np.array([0.0, 0.4, 0.9, 1.4])[nyha])
    frame = pd.DataFrame({
        "patient id": [f"S{k}-{i:05d}" for i in range(n)],
        "age (years)": np.round(age, 1), "systolic BP, mmHg": np.round(sbp), "BMI kg/m^2": np.round(bmi, 1),
        "creatinine [mg/dL]": np.round(creat, 2), "noise #1": np.round(rng.normal(0, 1, n), 3),
        "noise #2": np.round(rng.normal(50, 10, n), 2),
        "sex": np.where(male, "male", "female"), "smoking status": np.asarray(SMOKING)[smoking],
        "NYHA class": np.asarray(NYHA)[nyha],
    })
    if outcome == "binary":
        intercept = (-2.7, -3.1, -3.8)[k % 3]  # prevalence ~12-30 %
        frame["outcome"] = (rng.random(n) < 1 / (1 + np.exp(-(intercept + lp)))).astype(int)
    else:
        base = (-10.0, -10.9, -11.5)[k % 3]  # baseline log hazard (days)
        event_time = (-np.log(rng.random(n)) * np.exp(-(base + lp))) ** (1 / WEIBULL_SHAPE)
        follow_up = np.minimum(rng.uniform(365, 1825, n), rng.exponential(2500, n))
        frame["days to event"] = np.maximum(1, np.round(np.minimum(event_time, follow_up))).astype(int)
        frame["event observed"] = (event_time <= follow_up).astype(int)
    frame["split"] = rng.choice(["train", "val", "test"], n, p=SPLIT_FRACTIONS)
    return frame


def synthesize_tabular_sites(
    out_dir: Path, sites: list[str], outcome: str, sizes: list[int] | None = None, seed: int = 0
) -> list[Path]:
    """Write one ``<out_dir>/<site>/table.csv`` per site; returns the site folders."""
    sizes = list(sizes or DEFAULT_SIZES)
    sizes = (sizes * len(sites))[: len(sites)] if len(sizes) < len(sites) else sizes[: len(sites)]
    made = []
    for k, (site, n) in enumerate(zip(sites, sizes)):
        rng = np.random.default_rng([seed, k])
        frame = _site_rows(rng, int(n), k, outcome)
        folder = Path(out_dir) / site
        write_bytes(folder / "table.csv", frame.to_csv(index=False).encode())
        made.append(folder)
    return made
