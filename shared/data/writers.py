"""Writing site folders in the on-disk formats the loaders read (formats: the docstrings of
shared/data/events.py, visits.py, omics.py and psg.py).

Apart from the loaders so that the simulators (shared/data/synth/) and the MIMIC-IV converter
write a site without importing the code that reads one. Every table is written atomically.
"""

from __future__ import annotations

import gzip
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data import event_schema, omics_schema, visit_schema
from shared.io import write_bytes


def write_csv(df: pd.DataFrame, path: Path, float_format: str | None = None) -> Path:
    """`df` without its index to `path` (gzip-compressed, reproducibly, when it ends in .gz), atomically."""
    data = df.to_csv(index=False, float_format=float_format).encode()
    write_bytes(path, gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def write_event_site(site_dir: Path, stays: pd.DataFrame, events: pd.DataFrame, compress: bool = False) -> Path:
    """Write one ICU-event site folder.

    stays: a `stay_id` column or index plus the format's columns (extra columns are not written);
    events: the format's event columns. `compress` writes .csv.gz instead of .csv (and removes a
    stale file of the other variant so the folder stays unambiguous).
    """
    site_dir = Path(site_dir)
    site_dir.mkdir(parents=True, exist_ok=True)
    stays = stays.reset_index() if "stay_id" not in stays.columns else stays
    s = event_schema
    stay_cols = [c for c in (*s.STAY_REQUIRED_COLUMNS, *s.STAY_OPTIONAL_COLUMNS) if c in stays.columns]
    event_cols = [c for c in (*s.EVENT_REQUIRED_COLUMNS, *s.EVENT_OPTIONAL_COLUMNS) if c in events.columns]
    for name, frame in ((s.STAYS_FILE, stays[stay_cols]), (s.EVENTS_FILE, events[event_cols])):
        frame = frame.copy()
        for col in frame.columns:
            if pd.api.types.is_datetime64_any_dtype(frame[col]):
                frame[col] = frame[col].dt.strftime(s.DATETIME_FORMAT)
        write_csv(frame, site_dir / (f"{name}.csv.gz" if compress else f"{name}.csv"))
        (site_dir / (f"{name}.csv" if compress else f"{name}.csv.gz")).unlink(missing_ok=True)
    return site_dir


def write_visit_site(site_dir: Path, visits: pd.DataFrame, labels: pd.DataFrame | None) -> Path:
    """Write one AKI visit site folder.

    visits: the ``VISIT_COLUMNS`` (extra columns are not written); labels: patient_id and aki (and
    an optional fixed ``split``), or None to write visits.csv only (new patients to predict).
    """
    s = visit_schema
    site_dir = Path(site_dir)
    site_dir.mkdir(parents=True, exist_ok=True)
    visits = visits[list(s.VISIT_COLUMNS)].copy()
    if pd.api.types.is_datetime64_any_dtype(visits["timestamp"]):
        visits["timestamp"] = visits["timestamp"].dt.strftime(s.DATETIME_FORMAT)
    write_csv(visits, site_dir / f"{s.VISITS_FILE}.csv", float_format="%.4g")
    if labels is not None:
        columns = [*s.LABEL_COLUMNS, *(["split"] if "split" in labels.columns else [])]
        write_csv(labels[columns], site_dir / f"{s.LABELS_FILE}.csv", float_format="%.4g")
    return site_dir


def write_multimodal_site(site_dir: Path, labels: pd.DataFrame, omics: pd.DataFrame, notes: pd.DataFrame) -> Path:
    """Write one multimodal site folder (labels.csv, omics.csv, notes.csv).

    Each frame has a `patient_id` column; `omics` holds the feature columns beside it, `notes` a
    `text` column. Missing omics values (NaN) are written as empty fields.
    """
    s = omics_schema
    site_dir = Path(site_dir)
    site_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in ((s.LABELS_TABLE, labels), (s.OMICS_TABLE, omics), (s.NOTES_TABLE, notes)):
        write_csv(frame, site_dir / f"{name}.csv", float_format="%.10g")
    return site_dir

def write_edf(
    path: Path, start: datetime, labels: list[str], signals: list[np.ndarray], rates: list[int], dims: list[str] | None = None
) -> None:
    """An EDF+ file of `signals` (physical units, `dims`, default uV) at integer `rates` Hz."""
    import pyedflib

    dims = dims or ["uV"] * len(signals)

    headers = []
    for label, x, fs, dim in zip(labels, signals, rates, dims):
        bound = float(np.ceil(np.abs(x).max() * 1.1 + 1.0))
        headers.append(
            {"label": label, "dimension": dim, "sample_frequency": fs, "physical_max": bound, "physical_min": -bound,
             "digital_max": 32767, "digital_min": -32768, "transducer": "", "prefilter": ""}
        )  # fmt: skip
    writer = pyedflib.EdfWriter(str(path), len(signals), file_type=pyedflib.FILETYPE_EDFPLUS)
    try:
        writer.setStartdatetime(start)
        writer.setSignalHeaders(headers)
        writer.writeSamples([np.ascontiguousarray(x, dtype=np.float64) for x in signals])
    finally:
        writer.close()


def write_hypnogram(path: Path, start: datetime, annotations: list[tuple[float, float, str]]) -> None:
    """An EDF+ annotation-only file of (onset s, duration s, label) annotations."""
    import pyedflib

    writer = pyedflib.EdfWriter(str(path), 0, file_type=pyedflib.FILETYPE_EDFPLUS)
    try:
        writer.setStartdatetime(start)
        for onset, duration, label in annotations:
            writer.writeAnnotation(onset, duration, label)
    finally:
        writer.close()

