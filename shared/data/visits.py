"""Patient-visit sites for AKI prediction (RETAIN): the on-disk format and a strict loader (names:
visit_schema.py; writer: writers.py; synthetic sites: synth/visits.py).

On-disk format of one site
==========================
One folder per hospital (e.g. ``data/synthetic/retain_aki/hospital_a/``) holding two
comma-separated files with a header row, each either plain (``.csv``) or gzip-compressed
(``.csv.gz``); exactly one of the two variants of each file may be present.

``visits.csv`` - one row per visit (an encounter at which labs were drawn).

============  ========  ===========================================================================
column        required  content
============  ========  ===========================================================================
patient_id    yes       the patient: any non-empty text (``10023`` or ``P-00017``; compared as
                        text after stripping surrounding spaces)
visit_id      yes       non-empty text, unique in the file
timestamp     yes       ISO-8601 datetime of the visit (``2150-03-01 14:05:00``, ``2150-03-01T14:05``
                        or ``2150-03-01``); a UTC offset is converted to UTC and dropped
creatinine    yes       serum creatinine, mg/dL
bun           yes       blood urea nitrogen, mg/dL
egfr          yes       estimated glomerular filtration rate, mL/min/1.73 m2
potassium     yes       serum potassium, mmol/L
sodium        yes       serum sodium, mmol/L
bicarbonate   yes       serum bicarbonate (total CO2), mmol/L
hemoglobin    yes       hemoglobin, g/dL
urine_output  yes       urine output, mL/kg/h (averaged over the 6 h before the visit)
============  ========  ===========================================================================

The eight lab columns (``LAB_FEATURES``, in that order) must all be present, but a field may be
empty: the value was not measured at that visit. A present value must be a finite number inside
the lab's physiological range (``LAB_RANGES``; a value outside it is a unit or entry error, and one
such value would otherwise dominate the site's standardisation):

============  ===============
lab           accepted range
============  ===============
creatinine    0 - 40 mg/dL
bun           0 - 400 mg/dL
egfr          0 - 250 mL/min/1.73 m2
potassium     0.5 - 15 mmol/L
sodium        80 - 220 mmol/L
bicarbonate   0 - 80 mmol/L
hemoglobin    0 - 30 g/dL
urine_output  0 - 50 mL/kg/h
============  ===============

``labels.csv`` - one row per patient.

============  ========  ===========================================================================
column        required  content
============  ========  ===========================================================================
patient_id    yes       as in visits.csv, unique in the file
aki           yes       the label: 1 if the patient developed acute kidney injury (KDIGO stage >= 1)
                        within 48 h after the last visit in visits.csv, else 0; no missing values
split         no        ``train`` / ``val`` / ``test``: a fixed split (shared/data/splits.py)
============  ========  ===========================================================================

Other columns are ignored. Only an empty field is missing (``NA`` or ``null`` are values, and
not numbers). Visits of a patient are ordered by timestamp (file order among equal timestamps);
a patient has at least one visit by construction.

Loading rejects, with an ``InputError`` naming the file and column: a missing file or required
column, a file that is not readable CSV (a row with more or fewer fields than the header
included), an empty patient_id or visit_id, a duplicate visit_id, an unparseable or missing
timestamp, a lab value that is not a finite number (``NaN``, ``inf`` and text included) or lies
outside its range, a
label that is not 0/1 (missing included), a patient listed twice in labels.csv, a site without
visits and a site whose visits have no labelled patient.

Loading drops and counts (``VisitSiteData.dropped``): ``labels_unknown_patient`` (a labels.csv
row whose patient has no visit) and ``patients_without_label`` (a patient with visits but no
labels.csv row; their visits are dropped too). Loading for prediction (``require_label=False``)
does not read labels.csv at all and keeps every patient.

A new patient for ``fedcare predict --patient FILE.json`` (``visits_from_records``) is a JSON
object ``{"patient_id": "P-1", "visits": [visit, ...]}`` (patient_id optional, default
``new_patient``) or the bare list of visits, in any order; a visit is an object with ``timestamp``
(ISO-8601 text, required), any of the eight labs (a finite number in its range, or null / left out when not
measured) and optionally ``visit_id`` (unique; default ``visit_<position in the list>``). Ids are
non-empty text or integers. Other keys are rejected (a misspelt lab would otherwise be silently
imputed), and so are NaN / Infinity, numbers given as text and an empty list of visits.

How the RETAIN task uses it (shared/tasks/retain_aki.py): per patient, the most recent
``data.max_events`` visits, chronological, left-aligned and padded at the end; a missing lab value
is filled with the patient's previous value of that lab (last observation carried forward), else
with the site's training-split median; each lab is then standardised with the training split's mean
and standard deviation and clipped to +-5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.splits import parse_split
from shared.data.tables import find_site_table, first_bad, read_csv_as_text, require_columns
from shared.data.visit_schema import (
    FEATURES,
    LAB_FEATURES,
    LAB_RANGES,
    LABEL,
    LABEL_COLUMNS,
    LABELS_FILE,
    VISIT_COLUMNS,
    VISITS_FILE,
)
from shared.errors import InputError

DROP_REASONS = ("labels_unknown_patient", "patients_without_label")


@dataclass
class VisitSiteData:
    """One hospital's patients and their visits, validated.

    visits: columns ``VISIT_COLUMNS``: patient_id (str), visit_id (str), timestamp (datetime64),
    the labs (float, NaN where not measured); sorted by patient_id then timestamp (file order
    within ties), index 0..n-1.
    patients: the patient ids (str, sorted), each with at least one visit.
    labels: aki (int64 0/1) indexed by patient_id, aligned with `patients`; None when loaded
    without labels.
    dropped: rows left out while loading, by reason (every key of DROP_REASONS present).
    split: the fixed split of each patient in `patients` order (labels.csv's ``split`` column,
    shared/data/splits.py), None without one.
    """

    site: str
    visits: pd.DataFrame
    patients: pd.Index
    labels: pd.Series | None
    dropped: dict[str, int] = field(default_factory=dict)
    split: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_visit_site(site_dir: Path, site: str | None = None, require_label: bool = True) -> VisitSiteData:
    """Load and validate one site folder (format in this module's docstring).

    `site` names the result (default: the folder name). With `require_label` False, labels.csv is
    not read (new patients to predict). Raises InputError on every rejected input listed in the
    module docstring; drops and counts the rows listed there.
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise InputError(site_dir, None, "site folder does not exist")
    visits_path = find_site_table(site_dir, VISITS_FILE)
    visits = _parse_visits(read_csv_as_text(visits_path), visits_path)
    dropped = dict.fromkeys(DROP_REASONS, 0)
    if not require_label:
        patients = pd.Index(np.sort(visits["patient_id"].unique()), name="patient_id")
        return VisitSiteData(site or site_dir.name, visits, patients, None, dropped)

    labels_path = find_site_table(site_dir, LABELS_FILE)
    labels_table = read_csv_as_text(labels_path)
    labels = _parse_labels(labels_table, labels_path)
    split = parse_split(labels_table, labels_path)
    has_visits = labels.index.isin(visits["patient_id"])
    dropped["labels_unknown_patient"] = int((~has_visits).sum())
    labels = labels[has_visits]
    labelled = visits["patient_id"].isin(labels.index)
    dropped["patients_without_label"] = int(visits.loc[~labelled, "patient_id"].nunique())
    visits = visits[labelled].reset_index(drop=True)
    if visits.empty:
        raise InputError(labels_path, "patient_id", "no patient of visits.csv has a label here")
    patients = pd.Index(np.sort(visits["patient_id"].unique()), name="patient_id")
    if split is not None:
        split = pd.Series(split, index=labels_table["patient_id"].str.strip().to_numpy()).reindex(patients).to_numpy(dtype=str)
    return VisitSiteData(site or site_dir.name, visits, patients, labels.reindex(patients), dropped, split)


def _parse_text(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    text = df[col].str.strip()
    empty = text.isna() | (text == "")
    if empty.any():
        raise first_bad(path, col, df[col], empty, "is not an identifier (empty)")
    return text


def _parse_lab(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    raw = df[col].str.strip()
    num = pd.to_numeric(raw, errors="coerce")
    bad = (num.isna() & raw.notna()) | np.isinf(num)
    if bad.any():
        raise first_bad(path, col, df[col], bad, f"is not a finite number ({LAB_FEATURES[col]}) or empty")
    low, high = LAB_RANGES[col]
    outside = (num < low) | (num > high)
    if outside.any():
        raise first_bad(path, col, df[col], outside, f"is outside the physiological range {low:g}-{high:g} {LAB_FEATURES[col]}")
    return num.astype(float)


def _parse_visits(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    require_columns(df, path, VISIT_COLUMNS)
    if df.empty:
        raise InputError(path, None, "no visits: the site has no rows in its visits file")
    patient_id = _parse_text(df, "patient_id", path)
    visit_id = _parse_text(df, "visit_id", path)
    dup = visit_id.duplicated()
    if dup.any():
        raise first_bad(path, "visit_id", df["visit_id"], dup, "is a duplicate visit_id")
    raw_time = df["timestamp"].str.strip()
    timestamp = pd.to_datetime(raw_time, format="ISO8601", errors="coerce", utc=True).dt.tz_localize(None)
    if timestamp.isna().any():
        raise first_bad(path, "timestamp", df["timestamp"], timestamp.isna(), "is not an ISO-8601 datetime")
    visits = pd.DataFrame({"patient_id": patient_id, "visit_id": visit_id, "timestamp": timestamp.astype("datetime64[ns]")})
    for col in FEATURES:
        visits[col] = _parse_lab(df, col, path)
    visits = visits.sort_values(["patient_id", "timestamp"], kind="stable").reset_index(drop=True)
    return visits[list(VISIT_COLUMNS)]


def _parse_labels(df: pd.DataFrame, path: Path) -> pd.Series:
    require_columns(df, path, LABEL_COLUMNS)
    patient_id = _parse_text(df, "patient_id", path)
    dup = patient_id.duplicated()
    if dup.any():
        raise first_bad(path, "patient_id", df["patient_id"], dup, "is listed twice")
    label = pd.to_numeric(df[LABEL].str.strip(), errors="coerce")
    not_binary = ~label.isin([0.0, 1.0])
    if not_binary.any():
        raise first_bad(path, LABEL, df[LABEL], not_binary, "is not a 0/1 label")
    return pd.Series(label.astype(np.int64).to_numpy(), index=pd.Index(patient_id.to_numpy(), name="patient_id"), name=LABEL)


def visits_from_records(records: object, source: str | Path = "<patient>") -> pd.DataFrame:
    """One new patient's visits, given as parsed JSON (format in the module docstring), as a
    visits frame (``VISIT_COLUMNS``, sorted by timestamp). Raises InputError(source, field) on a
    bad record, e.g. field ``visits[2].creatinine``."""
    patient_id = "new_patient"
    if isinstance(records, dict):
        unknown = sorted(set(records) - {"patient_id", "visits"})
        if unknown or "visits" not in records:
            raise InputError(source, "visits", f"expected an object with keys patient_id, visits (got {sorted(records)})")
        if "patient_id" in records:
            patient_id = _record_id(records["patient_id"], source, "patient_id")
        records = records["visits"]
    if not isinstance(records, list) or not records:
        raise InputError(source, "visits", "expected a non-empty list of visits")
    allowed = {"visit_id", "timestamp", *FEATURES}
    rows, seen_ids = [], set()
    for i, visit in enumerate(records):
        where = f"visits[{i}]"
        if not isinstance(visit, dict):
            raise InputError(source, where, f"expected an object, got {type(visit).__name__}")
        unknown = sorted(set(visit) - allowed)
        if unknown:
            raise InputError(source, f"{where}.{unknown[0]}", f"unknown key; allowed: {', '.join(sorted(allowed))}")
        raw_time = visit.get("timestamp")
        text_time = raw_time.strip() if isinstance(raw_time, str) else None
        stamp = pd.to_datetime(text_time, format="ISO8601", errors="coerce", utc=True)
        if pd.isna(stamp):
            raise InputError(source, f"{where}.timestamp", f"{raw_time!r} is not an ISO-8601 datetime text")
        visit_id = _record_id(visit["visit_id"], source, f"{where}.visit_id") if "visit_id" in visit else f"visit_{i}"
        if visit_id in seen_ids:
            raise InputError(source, f"{where}.visit_id", f"{visit_id!r} is a duplicate visit_id")
        seen_ids.add(visit_id)
        row: dict[str, object] = {"patient_id": patient_id, "visit_id": visit_id, "timestamp": stamp.tz_localize(None)}
        for lab in FEATURES:
            value = visit.get(lab)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            low, high = LAB_RANGES[lab]
            if not (value is None or (number and np.isfinite(value) and low <= value <= high)):
                raise InputError(source, f"{where}.{lab}",
                                 f"{value!r} is not a number in {low:g}-{high:g} {LAB_FEATURES[lab]}, or null")
            row[lab] = np.nan if value is None else float(value)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(VISIT_COLUMNS))
    frame["timestamp"] = frame["timestamp"].astype("datetime64[ns]")
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _record_id(value: object, source: str | Path, where: str) -> str:
    """An identifier given in JSON: non-empty text or an integer, returned as stripped text."""
    integer = isinstance(value, int) and not isinstance(value, bool)
    text = value.strip() if isinstance(value, str) else str(value) if integer else ""
    if not text:
        raise InputError(source, where, f"{value!r} is not an identifier (non-empty text or an integer)")
    return text
