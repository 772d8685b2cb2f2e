"""UCI Heart Disease from four hospitals as a natural 4-site federation, with FLamby's
Fed-Heart-Disease preprocessing.

On-disk format (as UCI distributes it)
======================================
One file per hospital in one folder: ``processed.cleveland.data``, ``processed.hungarian.data``,
``processed.switzerland.data``, ``processed.va.data`` (VA Long Beach). No header; comma
separated; ``?`` is a missing value; 14 numeric columns in this order:

==========  =========================================================================
age         years
sex         1 = male, 0 = female
cp          chest-pain type 1-4
trestbps    resting blood pressure (mm Hg)
chol        serum cholesterol (mg/dl); Switzerland has 0 in every row (0 = not measured)
fbs         fasting blood sugar > 120 mg/dl (1/0)
restecg     resting ECG result 0-2
thalach     maximum heart rate achieved
exang       exercise-induced angina (1/0)
oldpeak     ST depression induced by exercise
slope       slope of the peak exercise ST segment (dropped)
ca          number of major vessels coloured by fluoroscopy (dropped)
thal        thallium stress test result (dropped)
num         diagnosis: 0 = no disease, 1-4 = disease of increasing severity
==========  =========================================================================

Preprocessing (FLamby, Fed-Heart-Disease): drop slope, ca and thal (mostly missing outside
Cleveland), then drop every row with a missing value, label = num > 0. That leaves
303 / 261 / 46 / 130 rows (Cleveland / Hungarian / Switzerland / VA). The features stay as
numbers (cp and restecg as their codes, as in FLamby). `site_splits` splits each site into a
stratified train/validation part and standardises the features with the site's own training
mean and standard deviation (a constant column, like Switzerland's chol, is only centred).

Loading raises InputError naming the file (and column) for a missing file, a row without 14
columns, a value that is not a number or ``?``, or a num outside 0-4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from shared.errors import InputError

SITES = ("cleveland", "hungarian", "switzerland", "va")
RAW_COLUMNS = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num",
)
DROPPED_COLUMNS = ("slope", "ca", "thal")
FEATURES = tuple(c for c in RAW_COLUMNS if c not in (*DROPPED_COLUMNS, "num"))
ROWS_AFTER_PREPROCESSING = {"cleveland": 303, "hungarian": 261, "switzerland": 46, "va": 130}
DATA_FOLDER = Path("shared") / "data" / "uci-heart-disease"


def site_file(root: Path, site: str) -> Path:
    return Path(root) / f"processed.{site}.data"


def find_heart_disease_dir(start: Path | None = None) -> Path | None:
    """The first ``shared/data/uci-heart-disease`` folder (the project's shared data) in `start` or
    one of its parents; default start: this repository. None when absent."""
    start = Path(start) if start is not None else Path(__file__).resolve().parents[2]
    for folder in (start, *start.parents):
        candidate = folder / DATA_FOLDER
        if all(site_file(candidate, s).is_file() for s in SITES):
            return candidate
    return None


def read_site_file(path: Path) -> pd.DataFrame:
    """The raw 14 columns of one hospital's file as floats (NaN where ``?``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "file not found")
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(RAW_COLUMNS):
            raise InputError(path, f"line {number}", f"expected {len(RAW_COLUMNS)} comma-separated values, found {len(cells)}")
        row = []
        for column, cell in zip(RAW_COLUMNS, cells):
            try:
                row.append(np.nan if cell == "?" else float(cell))
            except ValueError:
                raise InputError(path, column, f"line {number}: {cell!r} is not a number or '?'") from None
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(RAW_COLUMNS))
    bad = frame["num"].notna() & ~frame["num"].isin([0, 1, 2, 3, 4])
    if bad.any():
        raise InputError(path, "num", f"line {int(np.flatnonzero(bad)[0]) + 1}: diagnosis must be 0-4")
    return frame


def preprocess(raw: pd.DataFrame) -> pd.DataFrame:
    """FLamby's preprocessing: FEATURES + num (int) + label (num > 0), rows with a missing value dropped."""
    frame = raw.drop(columns=list(DROPPED_COLUMNS)).dropna().reset_index(drop=True)
    frame["num"] = frame["num"].astype(int)
    frame["label"] = (frame["num"] > 0).astype(int)
    return frame


def load_heart_disease(root: Path, sites: tuple[str, ...] = SITES) -> dict[str, pd.DataFrame]:
    """site -> preprocessed rows (columns FEATURES, num, label)."""
    return {site: preprocess(read_site_file(site_file(root, site))) for site in sites}


@dataclass
class SiteSplit:
    """One site's standardised features and labels (binary `label`, or `num` 0-4)."""

    x_train: np.ndarray  # (N_train, 10) float32
    y_train: np.ndarray  # (N_train,)
    x_val: np.ndarray
    y_val: np.ndarray


def site_splits(
    frames: dict[str, pd.DataFrame], target: str = "label", val_fraction: float = 0.25, seed: int = 0
) -> dict[str, SiteSplit]:
    """Per site: a stratified (by `target` where every class has 2 rows) train/validation split and
    features standardised with the site's training mean and standard deviation."""
    out = {}
    for site, frame in frames.items():
        y = frame[target].to_numpy()
        _, counts = np.unique(y, return_counts=True)
        stratify = y if counts.min() >= 2 else None
        train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=val_fraction, random_state=seed, stratify=stratify)
        x = frame[list(FEATURES)].to_numpy(dtype=np.float64)
        mean, std = x[train_idx].mean(axis=0), x[train_idx].std(axis=0)
        std[std == 0] = 1.0  # a constant column (Switzerland's chol) is only centred
        x = ((x - mean) / std).astype(np.float32)
        out[site] = SiteSplit(x[train_idx], y[train_idx], x[val_idx], y[val_idx])
    return out
