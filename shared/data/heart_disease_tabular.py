"""UCI Heart Disease (shared/data/heart_disease.py, FLamby preprocessing) written as tabular sites for
`tabular_binary`: ``<out>/<hospital>/table.csv`` with a fixed, stratified train/test ``split`` column.

The covariate declaration (``HEART_DATA_CONFIG``): age, resting blood pressure, cholesterol, maximum
heart rate and ST depression as numeric covariates, standardised with rounded means / SDs of the
public UCI data (a public data set: no site releases anything; a consortium would agree on reference
values instead); sex, chest-pain type, fasting blood sugar, resting ECG and exercise angina as
categoricals with their UCI codes as levels. Switzerland's cholesterol is 0 in every row (not
measured) and stays so, as in FLamby. The split is ours (``test_fraction`` per hospital, stratified by
label, seeded), not FLamby's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from shared.data.heart_disease import load_heart_disease
from shared.io import write_bytes

NUMERIC = {"age": (53.0, 9.4), "trestbps": (133.0, 18.6), "chol": (220.0, 94.0), "thalach": (139.0, 26.0),
           "oldpeak": (0.9, 1.1)}
CATEGORICAL = {"sex": ["0", "1"], "cp": ["1", "2", "3", "4"], "fbs": ["0", "1"], "restecg": ["0", "1", "2"],
               "exang": ["0", "1"]}
HEART_DATA_CONFIG: dict[str, Any] = {
    "id_column": "id",
    "label_column": "label",
    "covariates": [{"name": n, "type": "numeric"} for n in NUMERIC]
    + [{"name": n, "type": "categorical", "levels": list(levels)} for n, levels in CATEGORICAL.items()],
    "standardize": {n: {"mean": m, "sd": s} for n, (m, s) in NUMERIC.items()},
}


def write_heart_disease_sites(uci_dir: Path, out_dir: Path, test_fraction: float = 0.25, seed: int = 0) -> list[str]:
    """One table per hospital (cleveland, hungarian, switzerland, va); returns the site names."""
    frames = load_heart_disease(Path(uci_dir))
    for site, frame in frames.items():
        y = frame["label"].to_numpy()
        _, counts = np.unique(y, return_counts=True)
        stratify = y if counts.size > 1 and counts.min() >= 2 else None
        _, test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=stratify)
        table = pd.DataFrame({"id": [f"{site}-{i:03d}" for i in range(len(y))]})
        for name in NUMERIC:
            table[name] = frame[name].to_numpy()
        for name in CATEGORICAL:
            table[name] = frame[name].astype(int).astype(str).to_numpy()
        table["label"] = y
        table["split"] = np.where(np.isin(np.arange(len(y)), test), "test", "train")
        write_bytes(Path(out_dir) / site / "table.csv", table.to_csv(index=False).encode())
    return list(frames)
