"""A site's split into training, validation and test samples, the same way for every task.

A fixed split agreed in advance is an optional ``split`` column (``train`` / ``val`` / ``test``, case
and surrounding spaces ignored) in the table that defines the site's samples (the one that carries
the label: stays.csv, labels.csv, recordings.csv, table.csv). ``test`` samples are used only by the
final test evaluation (`fedcare evaluate`, the end of `fedcare simulate`); ``val`` samples are the
per-round validation. Without ``val`` samples, data.val_fraction of the ``train`` samples are set
aside (stratified); without the column the whole site is split that way and there is no test split.
"""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.tables import first_bad
from shared.errors import InputError

SPLIT_COLUMN = "split"
SPLITS = ("train", "val", "test")
# task -> the table whose rows are its samples (where a `split` column goes)
SPLIT_TABLES = {
    "event_mortality": "stays", "retain_aki": "labels", "multimodal": "labels", "sleep_staging": "recordings",
    "sleep_diagnosis": "recordings", "tabular_binary": "table", "tabular_survival": "table",
}  # fmt: skip


def parse_split(frame: pd.DataFrame, path: Path, require_train: bool = True) -> np.ndarray | None:
    """The `split` column of a table read as text: (N,) str in SPLITS, or None when the table has none.
    A value outside SPLITS, or (with `require_train`) no ``train`` row, is an InputError naming `path`."""
    if SPLIT_COLUMN not in frame.columns:
        return None
    raw = frame[SPLIT_COLUMN]
    text = raw.fillna("").astype(str).str.strip().str.lower().to_numpy(dtype=str)
    bad = ~np.isin(text, SPLITS)
    if bad.any():
        raise first_bad(path, SPLIT_COLUMN, raw, bad, f"must be one of {', '.join(SPLITS)}")
    if require_train and not (text == "train").any():
        raise InputError(path, SPLIT_COLUMN, "no 'train' row: this site has nothing to train on")
    return text


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int, source: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val), stratified by label when each class has at least two rows. A site too
    small to give both splits a row is an InputError naming `source` (the site folder)."""
    from sklearn.model_selection import train_test_split

    n_val = math.ceil(val_fraction * len(labels))  # sklearn's own rounding
    if n_val < 1 or len(labels) - n_val < 1:
        raise InputError(source, None, f"{len(labels)} patient(s) cannot be split into training and validation "
                                       f"(val_fraction {val_fraction:g}): the site needs more")
    idx = np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if len(counts) > 1 and counts.min() >= 2 else None
    return train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=stratify)


def split_rows(
    split: np.ndarray | None, strata: np.ndarray, val_fraction: float, seed: int, source: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (train, val, test), each in file order: fixed by `split` when given (no ``val`` rows:
    `val_fraction` of the train rows, stratified by `strata`); else a stratified random train/val split
    and no test rows."""
    if split is None:
        train, val = stratified_split(strata, val_fraction, seed, source)
        return np.sort(train), np.sort(val), np.zeros(0, dtype=int)
    train, val, test = (np.flatnonzero(split == s) for s in SPLITS)
    if val.size == 0:
        if train.size < 2:
            raise InputError(source, SPLIT_COLUMN, "no 'val' rows and fewer than 2 'train' rows to set some aside")
        keep, held = stratified_split(strata[train], val_fraction, seed, source)
        train, val = np.sort(train[keep]), np.sort(train[held])
    return train, val, test


def site_has_split(site_dir: Path, task: str) -> bool:
    """Whether a site folder defines a fixed split for `task`: a `split` column in its sample table's header
    (or, tabular tasks, a ``test/`` folder). Reads the header only; the loader checks the values."""
    site_dir = Path(site_dir)
    name = SPLIT_TABLES.get(task)
    if name == "table" and (site_dir / "test").is_dir():  # the tabular tasks' test folder
        return True
    for path in (site_dir / f"{name}.csv", site_dir / f"{name}.csv.gz"):
        if name and path.is_file():
            try:
                opener = gzip.open if path.name.endswith(".gz") else open
                with opener(path, "rt", encoding="utf-8", newline="") as handle:
                    return SPLIT_COLUMN in (c.strip() for c in next(csv.reader(handle), []))
            except (OSError, UnicodeDecodeError, csv.Error):
                return False  # the loader reports what is wrong with it
    return False
