"""Multimodal (omics + clinical notes) sites: the on-disk format, a strict loader, the site's
omics preprocessing and note embeddings per patient (names: omics_schema.py; writer: writers.py;
synthetic sites: synth/omics.py).

On-disk format of one site
==========================
One folder per hospital (e.g. ``data/synthetic/multimodal/hospital_a/``) holding three tables.
CSV files have a header row and may be gzip-compressed (``.csv.gz``); exactly one variant of
each table may be present.

``labels.csv`` - one row per patient; it defines the site's patients (required).

=============  ========  ===========================================================================
column         required  content
=============  ========  ===========================================================================
patient_id     yes       text, non-empty, unique in the file
label          binary    0 or 1 (binary runs)
time           survival  follow-up in days, a finite number >= 0 (survival runs)
event          survival  1 = the event happened at ``time``, 0 = censored at ``time``
split          no        ``train`` / ``val`` / ``test``: a fixed split (shared/data/splits.py)
=============  ========  ===========================================================================

Which label columns are read follows the run (``label_type``, see shared/tasks/multimodal.py);
other columns are ignored. Every patient must have a label: an empty label field is an error.

``omics.csv`` (or ``omics.csv.gz`` or ``omics.parquet``) - one row per patient with a profile:
a ``patient_id`` column (conventionally the first) and one numeric column per gene / protein /
probe. Values are raw measurements (counts, intensities or log-scale values; whether log1p is
applied is a run setting). An empty field, ``NA``, ``NaN`` or ``nan`` is a missing value. Only
the run's pinned feature columns are read (same names, any order); every pinned feature must be
a column, other columns are ignored (their number is reported). Reading ``.parquet`` needs
pyarrow. A patient without a row, or whose row has no observed pinned value, has no omics.

``notes.csv`` - clinical notes, any number per patient (zero included): columns ``patient_id``
and ``text``. All notes of a patient are embedded one by one (each cached by its text's SHA-256)
and the patient's text vector is the mean of its notes' vectors, so a long history is not cut
by the text encoder's length limit and an unchanged note is never embedded twice. A patient
without notes has no text. A site without notes (or without omics) ships a header-only file.

Errors and counted drops
------------------------
Loading rejects, with an ``InputError`` naming the file and column (one line, with the first bad
data row): a missing table or required column, an unreadable file, an empty ``patient_id``, a
duplicate ``patient_id`` in labels or omics, a missing / non-0-1 label or event, a missing,
negative or non-numeric time, a pinned omics column absent from the file, a non-numeric or
infinite omics value and a site without patients.

Loading drops and counts (``MultimodalSiteData.dropped``): ``omics_unknown_patient`` (omics row
of a patient not in labels.csv), ``notes_unknown_patient`` (note of a patient not in
labels.csv) and ``notes_empty_text`` (a note whose text is empty or blank).

Preprocessing (``SitePreprocessing``)
-------------------------------------
Fitted at the site on the training split only, saved as one JSON file in the site's state folder.

Omics (``OmicsPreprocessor``): optional ``log1p`` (for counts; values must then be >= 0),
per-feature standardisation with the training mean and standard deviation of the observed
values (sd 0 -> 1), missing values imputed with the training median (0 after standardisation
when a feature was never observed in training), values clipped to +-10 sd, then one 0/1
missing-value indicator per pinned feature appended. The indicators are part of the model's
input whatever the site's data hold, so the omics input size depends on the run config alone:
``omics_dim = n_features * (2 if missing_indicators else 1)`` (``omics_input_dim``).

Text (``TextStandardizer``): each dimension of the patient text vectors standardised with the
mean and sd of the training patients that have notes, clipped to +-10 sd.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.omics_schema import EVENT, LABEL, LABELS_TABLE, NOTE_TEXT, NOTES_TABLE, OMICS_TABLE, PATIENT_ID, TIME
from shared.data.splits import parse_split
from shared.data.tables import first_bad, read_csv_as_text, require_columns
from shared.data.text_embedding import TextEmbedder
from shared.errors import InputError
from shared.io import write_json

OMICS_MISSING_MARKERS = ("", "NA", "NaN", "nan")
DROP_REASONS = ("omics_unknown_patient", "notes_unknown_patient", "notes_empty_text")
CLIP_SD = 10.0


@dataclass
class MultimodalSiteData:
    """One hospital's patients, validated.

    labels: index ``patient_id`` (str, file order); column ``label`` (int64 0/1) or ``time``
    (float days) and ``event`` (int64 0/1). Without labels (prediction) no columns.
    omics: index ``patient_id`` (labels' order, patients with a profile only); the pinned
    features in config order, float64, NaN = missing value.
    notes: columns ``patient_id`` and ``text`` (stripped, non-empty), known patients, file order.
    dropped: rows left out while loading, by reason (every key of DROP_REASONS present).
    ignored_omics_columns: omics columns that are not pinned features.
    split: the fixed split of each patient in `labels` order (labels.csv's ``split`` column,
    shared/data/splits.py), None without one.
    """

    site: str
    labels: pd.DataFrame
    omics: pd.DataFrame
    notes: pd.DataFrame
    omics_path: Path
    dropped: dict[str, int] = field(default_factory=dict)
    ignored_omics_columns: list[str] = field(default_factory=list)
    split: np.ndarray | None = None

    @property
    def patient_ids(self) -> np.ndarray:
        return self.labels.index.to_numpy(dtype=object)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_multimodal_site(
    site_dir: Path,
    features: list[str],
    label_type: str | None,
    site: str | None = None,
) -> MultimodalSiteData:
    """Load and validate one site folder (format in this module's docstring).

    `features` are the run's pinned omics columns. `label_type` "binary" or "survival" reads those
    label columns; None (prediction) makes labels.csv optional: when absent, the patients are
    every id in omics and notes (sorted). Raises InputError on every rejected input listed in the
    module docstring; drops and counts the rows listed there.
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise InputError(site_dir, None, "site folder does not exist")
    omics_path = find_table(site_dir, OMICS_TABLE, (".csv", ".csv.gz", ".parquet"))
    notes_path = find_table(site_dir, NOTES_TABLE, (".csv", ".csv.gz"))
    omics_raw = _read_table(omics_path)
    notes_raw = _read_table(notes_path)
    if label_type is None and not _table_variants(site_dir, LABELS_TABLE, (".csv", ".csv.gz")):
        ids = pd.concat([_patient_ids(omics_raw, omics_path), _patient_ids(notes_raw, notes_path)])
        labels = pd.DataFrame(index=pd.Index(sorted(set(ids)), name=PATIENT_ID))
        labels_path = site_dir / f"{LABELS_TABLE}.csv"
        split = None
    else:
        labels_path = find_table(site_dir, LABELS_TABLE, (".csv", ".csv.gz"))
        labels_table = _read_table(labels_path)
        labels = _parse_labels(labels_table, labels_path, label_type)
        split = parse_split(labels_table, labels_path, require_train=label_type is not None)
    if len(labels) == 0:
        raise InputError(labels_path, PATIENT_ID, "the site has no patients")
    dropped = dict.fromkeys(DROP_REASONS, 0)
    omics, ignored = _parse_omics(omics_raw, omics_path, features, labels.index, dropped)
    notes = _parse_notes(notes_raw, notes_path, labels.index, dropped)
    return MultimodalSiteData(site or site_dir.name, labels, omics, notes, omics_path, dropped, ignored, split)


def _table_variants(site_dir: Path, name: str, suffixes: tuple[str, ...]) -> list[Path]:
    return [site_dir / f"{name}{s}" for s in suffixes if (site_dir / f"{name}{s}").is_file()]


def find_table(site_dir: Path, name: str, suffixes: tuple[str, ...]) -> Path:
    """The one existing `site_dir/<name><suffix>`."""
    found = _table_variants(site_dir, name, suffixes)
    if len(found) > 1:
        raise InputError(found[0], None, f"{' and '.join(p.name for p in found)} exist; keep one")
    if not found:
        expected = " or ".join(f"{name}{s}" for s in suffixes)
        raise InputError(site_dir / f"{name}{suffixes[0]}", None, f"missing file (expected {expected})")
    return found[0]


def _read_table(path: Path) -> pd.DataFrame:
    """A CSV through the strict reader (every field text; _numeric_column converts the pinned features),
    or parquet."""
    if path.suffix != ".parquet":
        return read_csv_as_text(path)
    try:
        df = pd.read_parquet(path)
    except ImportError as err:
        raise InputError(path, None, f"reading parquet needs pyarrow ({err})") from None
    except (OSError, ValueError) as err:
        raise InputError(path, None, f"not a readable table: {type(err).__name__}: {err}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _patient_ids(df: pd.DataFrame, path: Path) -> pd.Series:
    require_columns(df, path, (PATIENT_ID,))
    raw = df[PATIENT_ID]
    ids = raw.map(lambda v: str(v).strip() if pd.notna(v) else "")
    empty = ids == ""
    if empty.any():
        raise first_bad(path, PATIENT_ID, raw, empty, "is not a patient id")
    return ids


def _unique_ids(df: pd.DataFrame, path: Path) -> pd.Series:
    ids = _patient_ids(df, path)
    dup = ids.duplicated()
    if dup.any():
        raise first_bad(path, PATIENT_ID, df[PATIENT_ID], dup, "is a duplicate patient_id")
    return ids


def _parse_flag(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    raw = df[col]
    text = raw.str.strip()
    bad = ~text.isin(["0", "1", "0.0", "1.0"])
    if bad.any():
        raise first_bad(path, col, raw, bad, "is not 0 or 1")
    return text.astype(float).astype(np.int64).to_numpy()


def _parse_labels(df: pd.DataFrame, path: Path, label_type: str | None) -> pd.DataFrame:
    ids = _unique_ids(df, path)
    out = pd.DataFrame(index=pd.Index(ids.to_numpy(), name=PATIENT_ID))
    if label_type == "binary":
        require_columns(df, path, (LABEL,))
        out[LABEL] = _parse_flag(df, LABEL, path)
    elif label_type == "survival":
        require_columns(df, path, (TIME, EVENT))
        time = pd.to_numeric(df[TIME].str.strip(), errors="coerce")
        bad = time.isna() | ~np.isfinite(time) | (time < 0)
        if bad.any():
            raise first_bad(path, TIME, df[TIME], bad, "is not a finite number of days >= 0")
        out[TIME] = time.to_numpy(dtype=float)
        out[EVENT] = _parse_flag(df, EVENT, path)
    return out


def _parse_omics(
    df: pd.DataFrame, path: Path, features: list[str], patients: pd.Index, dropped: dict[str, int]
) -> tuple[pd.DataFrame, list[str]]:
    ids = _unique_ids(df, path)
    absent = [f for f in features if f not in df.columns]
    if absent:
        shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise InputError(
            path, absent[0], f"pinned feature column missing ({len(absent)} of {len(features)} absent: {shown})"
        )
    values = pd.DataFrame({col: _numeric_column(df, col, path) for col in features}, index=df.index)
    values.index = pd.Index(ids.to_numpy(), name=PATIENT_ID)
    known = values.index.isin(patients)
    dropped["omics_unknown_patient"] = int((~known).sum())
    values = values[known]
    values = values[values.notna().any(axis=1)]  # a row without any observed value = no omics
    values = values.reindex([p for p in patients if p in values.index])
    pinned = set(features)
    ignored = [c for c in df.columns if c != PATIENT_ID and c not in pinned]
    return values, ignored


def _numeric_column(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """A pinned omics column as float (NaN = missing); InputError on the first non-number or infinity."""
    raw = df[col]
    if pd.api.types.is_bool_dtype(raw):
        raise first_bad(path, col, raw, np.ones(len(raw), dtype=bool), "is not a number")
    if pd.api.types.is_numeric_dtype(raw):
        values = raw.astype(float)
    else:  # CSV inference left text in the column (some field is not a number), or a parquet text column
        text = raw.map(lambda v: str(v).strip() if pd.notna(v) else "")
        missing = text.isin(OMICS_MISSING_MARKERS)
        values = pd.to_numeric(text.where(~missing), errors="coerce").astype(float)
        not_number = values.isna() & ~missing
        if not_number.any():
            raise first_bad(path, col, raw, not_number, "is not a number")
    infinite = np.isinf(values)
    if infinite.any():
        raise first_bad(path, col, raw, infinite, "is not a finite number")
    return values


def _parse_notes(df: pd.DataFrame, path: Path, patients: pd.Index, dropped: dict[str, int]) -> pd.DataFrame:
    ids = _patient_ids(df, path)
    require_columns(df, path, (NOTE_TEXT,))
    text = df[NOTE_TEXT].fillna("").str.strip()
    known = ids.isin(patients)
    dropped["notes_unknown_patient"] = int((~known).sum())
    has_text = text != ""
    dropped["notes_empty_text"] = int((known & ~has_text).sum())
    keep = (known & has_text).to_numpy()
    return pd.DataFrame({PATIENT_ID: ids[keep].to_numpy(), NOTE_TEXT: text[keep].to_numpy()})


# ---------------------------------------------------------------------------------------------
# Featurisation at the site
# ---------------------------------------------------------------------------------------------


def omics_input_dim(n_features: int, missing_indicators: bool) -> int:
    """The omics input size, from the run config alone (server and sites agree)."""
    return n_features * (2 if missing_indicators else 1)


@dataclass
class OmicsPreprocessor:
    """log1p (optional) -> standardise -> impute the median -> clip -> missing indicators.

    Statistics are per pinned feature, fitted on the training patients' observed values only.
    """

    features: list[str]
    log1p: bool
    missing_indicators: bool
    mean: list[float]
    scale: list[float]
    median: list[float]  # after log1p, before standardisation; NaN where never observed
    n_fit: int

    @classmethod
    def fit(cls, values: np.ndarray, features: list[str], log1p: bool, missing_indicators: bool) -> OmicsPreprocessor:
        """values (N, G) raw with NaN = missing; N may be 0 (every statistic then neutral)."""
        x = np.log1p(values) if log1p else np.asarray(values, dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a never-observed feature: NaN, handled here
            mean, sd, median = np.nanmean(x, axis=0), np.nanstd(x, axis=0), np.nanmedian(x, axis=0)
        mean = np.nan_to_num(mean, nan=0.0)
        scale = np.where(sd > 1e-8, sd, 1.0)  # NaN (never observed) compares False -> 1
        return cls(list(features), bool(log1p), bool(missing_indicators), mean.tolist(), scale.tolist(),
                   median.tolist(), int(len(values)))

    @property
    def dim(self) -> int:
        return omics_input_dim(len(self.features), self.missing_indicators)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """values (N, G) raw, NaN = missing -> (N, dim) float32."""
        x = np.log1p(values) if self.log1p else np.asarray(values, dtype=float)
        mean, scale = np.asarray(self.mean), np.asarray(self.scale)
        z = (x - mean) / scale
        fill = np.nan_to_num((np.asarray(self.median, dtype=float) - mean) / scale, nan=0.0)
        missing = np.isnan(z)
        z = np.clip(np.where(missing, fill, z), -CLIP_SD, CLIP_SD)
        parts = [z, missing.astype(float)] if self.missing_indicators else [z]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        state = asdict(self)
        state["median"] = [None if np.isnan(v) else v for v in self.median]  # JSON has no NaN
        return state

    @classmethod
    def from_dict(cls, state: dict) -> OmicsPreprocessor:
        return cls(**{**state, "median": [np.nan if v is None else v for v in state["median"]]})


@dataclass
class TextStandardizer:
    """Per-dimension standardisation of patient text vectors (training patients with notes only).

    Hashed bag-of-words vectors have entries around 1/sqrt(D) and a language model's CLS vector a
    few dimensions far larger than the rest; standardised inputs suit the model's first Linear
    (its bias would otherwise dominate) and DP-SGD's fixed clipping norm.
    """

    embedder: str  # name of the text embedder the statistics belong to
    mean: list[float]
    scale: list[float]
    n_fit: int

    @classmethod
    def fit(cls, vectors: np.ndarray, embedder: str) -> TextStandardizer:
        """vectors (N, D); N may be 0 (identity)."""
        if len(vectors) == 0:
            return cls(embedder, [0.0] * vectors.shape[1], [1.0] * vectors.shape[1], 0)
        sd = vectors.std(axis=0)
        return cls(embedder, vectors.mean(axis=0).tolist(), np.where(sd > 1e-8, sd, 1.0).tolist(), int(len(vectors)))

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        z = (vectors - np.asarray(self.mean)) / np.asarray(self.scale)
        return np.clip(z, -CLIP_SD, CLIP_SD).astype(np.float32)


@dataclass
class SitePreprocessing:
    """What a site fits on its training split; saved as one JSON file in its state folder."""

    omics: OmicsPreprocessor
    text: TextStandardizer

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"omics": self.omics.to_dict(), "text": asdict(self.text)}, indent=None)

    @classmethod
    def load(cls, path: Path) -> SitePreprocessing:
        if not path.is_file():
            raise InputError(path, None, "no saved site preprocessing (prepare the site's data first)")
        try:
            state = json.loads(path.read_text())
            return cls(OmicsPreprocessor.from_dict(state["omics"]), TextStandardizer(**state["text"]))
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(path, None, f"not a saved site preprocessing ({type(err).__name__}: {err})") from None


def patient_text_vectors(
    notes: pd.DataFrame, patient_ids: np.ndarray, embedder: TextEmbedder
) -> tuple[np.ndarray, np.ndarray]:
    """Mean note embedding per patient: (N, D) float32 (0 without notes) and has_text (N,) bool."""
    row_of = {p: i for i, p in enumerate(patient_ids)}
    out = np.zeros((len(patient_ids), embedder.dim), dtype=np.float32)
    counts = np.zeros(len(patient_ids))
    rows = np.array([row_of[p] for p in notes[PATIENT_ID]], dtype=np.int64)
    if len(rows):
        vectors = embedder.embed(notes[NOTE_TEXT].tolist())
        np.add.at(out, rows, vectors)
        np.add.at(counts, rows, 1.0)
    has_text = counts > 0
    out[has_text] /= counts[has_text, None]
    return out, has_text
