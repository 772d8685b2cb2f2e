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

Preprocessing (``OmicsPreprocessor``, ``standardize_text_vectors``)
-------------------------------------------------------------------
Nothing is fitted on a site's patients (issue 17: a scaler fitted on the training split moves every
patient's input when one patient changes, outside the DP guarantee). The statistics are public:

Omics (``OmicsPreprocessor.reference``): optional ``log1p`` (for counts; values must then be >= 0),
per-feature standardisation with a public mean and standard deviation (on the log1p scale when
``log1p`` is on): the run config's ``data.standardize: {<feature>: {mean, sd}}``, else the shipped
reference of the synthetic panel (``REFERENCE_OMICS``: a synthetic draw with a seed no site uses,
2027). A pinned feature with neither is an error naming ``data.standardize.<feature>``: take the
values from a public cohort of the same assay (``fedcare reference-stats`` computes them from a
public omics table). A missing value is imputed with the reference mean (0 after standardisation),
values are clipped to +-10 sd, then one 0/1 missing-value indicator per pinned feature appended. The
indicators are part of the model's input whatever the site's data hold, so the omics input size
depends on the run config alone: ``omics_dim = n_features * (2 if missing_indicators else 1)``
(``omics_input_dim``).

Text (``standardize_text_vectors``): each patient's text vector standardised over its own
dimensions (its own mean and sd: no other patient's data), clipped to +-10 sd.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.omics_schema import EVENT, LABEL, LABELS_TABLE, NOTE_TEXT, NOTES_TABLE, OMICS_TABLE, PATIENT_ID, TIME
from shared.data.public_stats import parse_public_stats
from shared.data.splits import parse_split
from shared.data.tables import first_bad, read_csv_as_text, require_columns
from shared.data.text_embedding import TextEmbedder
from shared.errors import InputError

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


# (mean, sd) of log1p(count) per synthetic panel gene: a synthetic draw with a seed no site uses (2027),
# pooled over its three sites (584 patients); the panel's genes are fixed across draws (synth/omics.py)
REFERENCE_OMICS: dict[str, tuple[float, float]] = {
    "GENE001": (6.571, 0.789), "GENE002": (4.948, 0.647), "GENE003": (6.332, 0.809), "GENE004": (5.601, 0.655),
    "GENE005": (6.361, 0.397), "GENE006": (3.122, 0.439), "GENE007": (5.863, 1.021), "GENE008": (2.190, 0.516),
    "GENE009": (2.276, 0.675), "GENE010": (4.072, 0.726), "GENE011": (6.310, 0.702), "GENE012": (4.196, 0.814),
    "GENE013": (6.419, 0.995), "GENE014": (3.119, 0.700), "GENE015": (4.338, 0.775), "GENE016": (4.147, 0.685),
    "GENE017": (3.375, 0.680), "GENE018": (2.661, 0.737), "GENE019": (1.982, 0.538), "GENE020": (4.936, 0.393),
    "GENE021": (6.992, 0.928), "GENE022": (6.526, 0.597), "GENE023": (5.371, 0.715), "GENE024": (4.970, 0.563),
    "GENE025": (6.052, 0.749), "GENE026": (5.486, 0.591), "GENE027": (2.482, 0.516), "GENE028": (5.541, 0.799),
    "GENE029": (4.644, 0.875), "GENE030": (2.169, 0.534), "GENE031": (4.835, 0.436), "GENE032": (2.126, 0.649),
    "GENE033": (4.477, 0.420), "GENE034": (4.612, 0.983), "GENE035": (6.031, 0.889), "GENE036": (5.636, 0.765),
    "GENE037": (6.709, 0.671), "GENE038": (4.565, 0.624), "GENE039": (3.078, 0.692), "GENE040": (3.866, 0.835),
    "GENE041": (5.185, 0.585), "GENE042": (3.434, 0.448), "GENE043": (6.509, 0.525), "GENE044": (4.114, 0.700),
    "GENE045": (3.297, 0.682), "GENE046": (4.852, 0.986), "GENE047": (6.847, 0.657), "GENE048": (6.053, 0.723),
    "GENE049": (5.888, 0.763), "GENE050": (6.562, 0.519), "GENE051": (3.078, 0.464), "GENE052": (4.943, 0.469),
    "GENE053": (3.221, 0.591), "GENE054": (6.260, 0.946), "GENE055": (3.254, 0.588), "GENE056": (5.780, 0.729),
    "GENE057": (6.802, 0.509), "GENE058": (5.757, 1.021), "GENE059": (2.941, 0.898), "GENE060": (4.589, 0.526),
    "GENE061": (6.163, 0.776), "GENE062": (4.916, 0.667), "GENE063": (5.145, 0.770), "GENE064": (3.499, 0.758),
    "GENE065": (5.942, 0.642), "GENE066": (5.338, 0.893), "GENE067": (4.549, 0.543), "GENE068": (2.140, 0.845),
    "GENE069": (2.665, 0.532), "GENE070": (3.570, 0.665), "GENE071": (2.247, 0.759), "GENE072": (5.436, 0.854),
    "GENE073": (2.383, 0.624), "GENE074": (5.671, 0.589), "GENE075": (2.344, 0.772), "GENE076": (5.249, 0.388),
    "GENE077": (6.112, 0.762), "GENE078": (2.633, 0.819), "GENE079": (4.871, 0.738), "GENE080": (3.252, 0.668),
    "GENE081": (3.328, 0.742), "GENE082": (2.079, 0.512), "GENE083": (4.084, 0.654), "GENE084": (7.162, 0.544),
    "GENE085": (4.458, 1.021), "GENE086": (2.489, 0.733), "GENE087": (5.392, 0.704), "GENE088": (5.378, 0.597),
    "GENE089": (6.060, 0.712), "GENE090": (5.277, 0.515), "GENE091": (6.984, 1.086), "GENE092": (2.073, 0.841),
    "GENE093": (3.239, 0.505), "GENE094": (4.155, 0.864), "GENE095": (4.442, 0.451), "GENE096": (3.287, 0.782),
    "GENE097": (3.736, 0.723), "GENE098": (4.484, 0.675), "GENE099": (6.108, 0.729), "GENE100": (5.601, 0.381),
}  # fmt: skip


@dataclass
class OmicsPreprocessor:
    """log1p (optional) -> standardise with public statistics -> impute the mean -> clip -> missing indicators."""

    features: list[str]
    log1p: bool
    missing_indicators: bool
    mean: list[float]
    scale: list[float]

    @classmethod
    def reference(
        cls, features: list[str], log1p: bool, missing_indicators: bool,
        standardize: Mapping[str, Mapping[str, float]] | None = None, source: object = "<config>",
    ) -> OmicsPreprocessor:
        """Each feature's {mean, sd} from `standardize` (the run config's public values), else from
        REFERENCE_OMICS (log1p scale, so only with log1p on); never from a site's data."""
        given = parse_public_stats(standardize, source, set(features).__contains__, "not a pinned feature (model.features)")
        reference = REFERENCE_OMICS if log1p else {}
        stats_of = []
        for name in features:
            if name not in given and name not in reference:
                raise InputError(source, f"data.standardize.{name}", "missing: every pinned omics feature needs a public "
                                 "{mean, sd}" + (" on the log1p scale" if log1p else "") + " (fedcare reference-stats)")
            stats_of.append(given.get(name) or reference[name])
        return cls(list(features), bool(log1p), bool(missing_indicators),
                   [m for m, _ in stats_of], [sd for _, sd in stats_of])

    @property
    def dim(self) -> int:
        return omics_input_dim(len(self.features), self.missing_indicators)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """values (N, G) raw, NaN = missing -> (N, dim) float32."""
        x = np.log1p(values) if self.log1p else np.asarray(values, dtype=float)
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        missing = np.isnan(z)
        z = np.clip(np.where(missing, 0.0, z), -CLIP_SD, CLIP_SD)
        parts = [z, missing.astype(float)] if self.missing_indicators else [z]
        return np.concatenate(parts, axis=1).astype(np.float32)


def read_public_omics(path: Path, features: list[str] | None = None) -> pd.DataFrame:
    """A public omics table (the omics.csv format: patient_id + one numeric column per feature) -> the
    `features` columns (default: every column but patient_id) as floats, NaN = missing."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "no such file")
    df = _read_table(path)
    require_columns(df, path, (PATIENT_ID,))
    wanted = features or [str(c) for c in df.columns if c != PATIENT_ID]
    absent = [f for f in wanted if f not in df.columns]
    if absent:
        raise InputError(path, absent[0], f"feature column missing ({len(absent)} of {len(wanted)} absent)")
    return pd.DataFrame({col: _numeric_column(df, col, path) for col in wanted}, index=df.index)


def reference_stats(values: pd.DataFrame, log1p: bool) -> dict[str, dict[str, float]]:
    """{feature: {mean, sd}} of a public omics table's observed values (log1p scale when `log1p`), for a
    run config's data.standardize; sd 0 or a never-observed feature is left out (no usable scale)."""
    x = np.log1p(values.to_numpy(dtype=float)) if log1p else values.to_numpy(dtype=float)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a never-observed column: NaN, left out below
        mean, sd = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    for name, m, s in zip(values.columns, mean, sd):
        if np.isfinite(m) and np.isfinite(s) and s > 1e-8:
            out[str(name)] = {"mean": round(float(m), 4), "sd": round(float(s), 4)}
    return out


def standardize_text_vectors(vectors: np.ndarray) -> np.ndarray:
    """Each row over its own dimensions: (x - mean) / sd, clipped to +-10 (a constant row -> 0). Hashed
    bag-of-words entries sit near 1/sqrt(D) and a language model's CLS vector has a few large dimensions;
    unit-scale rows suit the model's first Linear and DP-SGD's fixed clipping norm, and use no other patient."""
    x = np.asarray(vectors, dtype=float)
    sd = x.std(axis=1, keepdims=True)
    z = (x - x.mean(axis=1, keepdims=True)) / np.where(sd > 1e-8, sd, 1.0)
    return np.clip(z, -CLIP_SD, CLIP_SD).astype(np.float32)


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
