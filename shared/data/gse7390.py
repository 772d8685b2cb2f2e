"""Breast-cancer cohort GSE7390 (the ARFF shipped by scikit-survival) -> multimodal survival sites.

The file holds 198 patients: 76 gene-expression probes (log2 intensities; the ARFF names carry
R's ``X`` prefix, e.g. ``X219340_s_at``), age, tumour size (cm), histological grade
(well differentiated / intermediate / poorly differentiated / ``unkown``), oestrogen-receptor
status and time to distant metastasis ``t.tdm`` (days) with its event flag ``e.tdm``.

Conversion (format: shared/data/omics.py):
- omics.csv: the 76 probes under their Affymetrix ids (the ``X`` dropped: ``219340_s_at``) plus
  the two clinical numbers as extra columns ``age_years`` and ``tumour_size_cm``; values as in
  the file (already log-scale: run with ``log1p: false``).
- notes.csv: the two categorical findings written as one short pathology note per patient,
  e.g. "Histological grade: poorly differentiated. Oestrogen receptor negative." ("Histological
  grade not recorded." for ``unkown``). The values are the cohort's; the sentence is ours.
- labels.csv: ``time`` = t.tdm, ``event`` = e.tdm.
Patients get ids ``GSE7390-001`` ... in file order and are dealt to `n_sites` pseudo-hospitals
(hospital_a, ...) by a seeded random permutation (the cohort has no site column).
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.omics import EVENT, NOTE_TEXT, PATIENT_ID, TIME
from shared.data.writers import write_multimodal_site
from shared.errors import InputError

CLINICAL_COLUMNS = {"age": "age_years", "size": "tumour_size_cm"}
_REQUIRED = ("age", "size", "grade", "er", "t.tdm", "e.tdm")


def _decoded(column: pd.Series) -> pd.Series:
    return column.map(lambda v: v.decode() if isinstance(v, bytes) else str(v))


def read_gse7390(arff_path: Path) -> pd.DataFrame:
    """The ARFF as a frame (nominal values decoded to text); InputError if unreadable or incomplete."""
    from scipy.io import arff

    arff_path = Path(arff_path)
    try:
        records, _ = arff.loadarff(arff_path)
    except (OSError, ValueError, StopIteration, arff.ParseArffError) as err:  # scipy: StopIteration without @data
        raise InputError(arff_path, None, f"not a readable ARFF file: {type(err).__name__}: {err}") from None
    frame = pd.DataFrame(records)
    for col in _REQUIRED:
        if col not in frame.columns:
            raise InputError(arff_path, col, "missing attribute (is this the GSE7390 metastasis ARFF?)")
    for col in ("grade", "er", "e.tdm"):
        frame[col] = _decoded(frame[col])
    return frame


def _probe_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in _REQUIRED]


def _note(grade: str, er: str) -> str:
    grade_sentence = "Histological grade not recorded." if grade == "unkown" else f"Histological grade: {grade}."
    return f"{grade_sentence} Oestrogen receptor {er}."


def convert_gse7390(arff_path: Path, out_dir: Path, n_sites: int = 3, seed: int = 0) -> tuple[list[Path], list[str]]:
    """Write `n_sites` site folders under `out_dir`; returns them and the omics feature list to pin
    in the run config (`model.features`): the probes, then age_years and tumour_size_cm."""
    frame = read_gse7390(arff_path)
    if not 1 <= n_sites <= min(26, len(frame)):
        raise InputError(None, "n_sites", f"must be 1-{min(26, len(frame))}, got {n_sites}")
    probes = _probe_columns(frame)
    probe_ids = [p.removeprefix("X") for p in probes]
    ids = np.array([f"GSE7390-{i:03d}" for i in range(1, len(frame) + 1)], dtype=object)
    omics = frame[probes].set_axis(probe_ids, axis=1)
    for source, name in CLINICAL_COLUMNS.items():
        omics[name] = frame[source].to_numpy(dtype=float)
    omics.insert(0, PATIENT_ID, ids)
    notes = pd.DataFrame({PATIENT_ID: ids, NOTE_TEXT: [_note(g, e) for g, e in zip(frame["grade"], frame["er"])]})
    labels = pd.DataFrame({PATIENT_ID: ids, TIME: frame["t.tdm"].to_numpy(float), EVENT: frame["e.tdm"].astype(int)})
    order = np.random.default_rng(seed).permutation(len(frame))
    site_dirs = []
    for k, rows in enumerate(np.array_split(order, n_sites)):
        rows = np.sort(rows)
        site_dir = Path(out_dir) / f"hospital_{string.ascii_lowercase[k]}"
        site_dirs.append(write_multimodal_site(site_dir, labels.iloc[rows], omics.iloc[rows], notes.iloc[rows]))
    return site_dirs, probe_ids + list(CLINICAL_COLUMNS.values())
