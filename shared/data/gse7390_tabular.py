"""Breast-cancer cohort GSE7390 (shared/data/gse7390.py) as tabular survival sites for
`tabular_survival`: ``<out>/hospital_<x>/table.csv`` with a fixed, event-stratified train/test split.

Covariates: age, tumour size and the 76 probes (log2 intensities) as numeric covariates; histological
grade (levels as in the file, ``unkown`` included) and oestrogen-receptor status as categoricals.
Standardisation: the cohort's own rounded means / SDs (a public data set, so no site releases
anything; a real consortium would agree on reference values). The cohort has no site column: the
198 patients are dealt to `n_sites` pseudo-hospitals by a seeded permutation (as gse7390.py does).
Outcome: time to distant metastasis ``t.tdm`` (days) and ``e.tdm``.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from shared.data.gse7390 import _probe_columns, read_gse7390
from shared.io import write_bytes

GRADES = ["well differentiated", "intermediate", "poorly differentiated", "unkown"]
ER = ["positive", "negative"]


def write_gse7390_sites(
    arff_path: Path, out_dir: Path, n_sites: int = 3, test_fraction: float = 0.25, seed: int = 0
) -> tuple[list[str], dict[str, Any]]:
    """Write the sites; returns their names and the `data:` keys declaring the table (covariates, standardize)."""
    frame = read_gse7390(arff_path)
    probes = _probe_columns(frame)
    numeric = ["age", "size", *probes]
    table = pd.DataFrame({"id": [f"GSE7390-{i:03d}" for i in range(1, len(frame) + 1)]})
    for name in numeric:
        table[name.removeprefix("X")] = frame[name].to_numpy(float)
    table["grade"], table["er"] = frame["grade"].to_numpy(), frame["er"].to_numpy()
    table["time"], table["event"] = frame["t.tdm"].to_numpy(float), frame["e.tdm"].astype(int).to_numpy()
    columns = [n.removeprefix("X") for n in numeric]
    stats = {c: {"mean": round(float(table[c].mean()), 3), "sd": round(float(table[c].std()), 3)} for c in columns}
    data_config = {
        "id_column": "id", "time_column": "time", "event_column": "event",
        "covariates": [{"name": c, "type": "numeric"} for c in columns]
        + [{"name": "grade", "type": "categorical", "levels": list(GRADES)}, {"name": "er", "type": "categorical", "levels": ER}],
        "standardize": stats,
    }
    order = np.random.default_rng(seed).permutation(len(table))
    sites = []
    for k, rows in enumerate(np.array_split(order, n_sites)):
        site_table = table.iloc[np.sort(rows)].reset_index(drop=True)
        event = site_table["event"].to_numpy()
        _, test = train_test_split(np.arange(len(event)), test_size=test_fraction, random_state=seed, stratify=event)
        site_table["split"] = np.where(np.isin(np.arange(len(event)), test), "test", "train")
        site = f"hospital_{string.ascii_lowercase[k]}"
        write_bytes(Path(out_dir) / site / "table.csv", site_table.to_csv(index=False).encode())
        sites.append(site)
    return sites, data_config
