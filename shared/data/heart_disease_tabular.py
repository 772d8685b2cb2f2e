"""UCI Heart Disease (shared/data/heart_disease.py, FLamby preprocessing) written as tabular sites for
`tabular_binary`: ``<out>/<hospital>/table.csv`` with a fixed, stratified train/test ``split`` column.

The covariate declaration (``HEART_DATA_CONFIG``): age, resting blood pressure, cholesterol, maximum
heart rate and ST depression as numeric covariates, standardised with rounded means / SDs of the
public UCI data (a public data set: no site releases anything; a consortium would agree on reference
values instead); sex, chest-pain type, fasting blood sugar, resting ECG and exercise angina as
categoricals with their UCI codes as levels. Switzerland's cholesterol is 0 in every row (not
measured) and stays so, as in FLamby. The split is ours (``test_fraction`` per hospital, stratified by
label, seeded), not FLamby's; ``split="flamby"`` writes FLamby's own split instead (``flamby_test_rows``:
66 % train per hospital, shuffled with random_state 43, stratified where both classes have more than 2
rows: 104 / 89 / 16 / 45 test rows), for a comparison with FLamby's published Fed-Heart-Disease results.
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


FLAMBY_TRAIN_FRACTION, FLAMBY_SPLIT_SEED = 0.66, 43


def flamby_test_rows(y: np.ndarray) -> np.ndarray:
    """The test rows of one hospital in FLamby's Fed-Heart-Disease split (flamby/datasets/fed_heart_disease/
    dataset.py: train_test_split of the row indices, train_size 0.66, random_state 43, shuffled, stratified
    by the label when every class has more than 2 rows)."""
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.size > 1 and (counts > 2).all() else None
    _, test = train_test_split(np.arange(len(y)), test_size=1.0 - FLAMBY_TRAIN_FRACTION, train_size=FLAMBY_TRAIN_FRACTION,
                               random_state=FLAMBY_SPLIT_SEED, shuffle=True, stratify=stratify)
    return test


def write_heart_disease_sites(uci_dir: Path, out_dir: Path, test_fraction: float = 0.25, seed: int = 0,
                              split: str = "ours") -> list[str]:
    """One table per hospital (cleveland, hungarian, switzerland, va); returns the site names.
    `split`: "ours" (stratified, `test_fraction`, `seed`) or "flamby" (FLamby's fixed split)."""
    if split not in ("ours", "flamby"):
        raise ValueError(f"split must be 'ours' or 'flamby', got {split!r}")
    frames = load_heart_disease(Path(uci_dir))
    for site, frame in frames.items():
        y = frame["label"].to_numpy()
        _, counts = np.unique(y, return_counts=True)
        stratify = y if counts.size > 1 and counts.min() >= 2 else None
        if split == "flamby":
            test = flamby_test_rows(y)
        else:
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
