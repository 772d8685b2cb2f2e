"""Multimodal (omics + clinical notes) sites: the on-disk format, a strict loader, the site's
omics preprocessing, note embeddings per patient, a writer and a synthetic generator.

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

import gzip
import json
import string
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.tables import first_bad, require_columns
from shared.data.text_embedding import TextEmbedder
from shared.errors import InputError
from shared.io import atomic_file, write_json, write_text

PATIENT_ID = "patient_id"
LABEL, TIME, EVENT = "label", "time", "event"
LABEL_TYPES = ("binary", "survival")
LABELS_TABLE, OMICS_TABLE, NOTES_TABLE = "labels", "omics", "notes"
NOTE_TEXT = "text"
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
    """

    site: str
    labels: pd.DataFrame
    omics: pd.DataFrame
    notes: pd.DataFrame
    omics_path: Path
    dropped: dict[str, int] = field(default_factory=dict)
    ignored_omics_columns: list[str] = field(default_factory=list)

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
    notes_raw = _read_table(notes_path, as_text=True)
    if label_type is None and not _table_variants(site_dir, LABELS_TABLE, (".csv", ".csv.gz")):
        ids = pd.concat([_patient_ids(omics_raw, omics_path), _patient_ids(notes_raw, notes_path)])
        labels = pd.DataFrame(index=pd.Index(sorted(set(ids)), name=PATIENT_ID))
        labels_path = site_dir / f"{LABELS_TABLE}.csv"
    else:
        labels_path = find_table(site_dir, LABELS_TABLE, (".csv", ".csv.gz"))
        labels = _parse_labels(_read_table(labels_path, as_text=True), labels_path, label_type)
    if len(labels) == 0:
        raise InputError(labels_path, PATIENT_ID, "the site has no patients")
    dropped = dict.fromkeys(DROP_REASONS, 0)
    omics, ignored = _parse_omics(omics_raw, omics_path, features, labels.index, dropped)
    notes = _parse_notes(notes_raw, notes_path, labels.index, dropped)
    return MultimodalSiteData(site or site_dir.name, labels, omics, notes, omics_path, dropped, ignored)


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


def _read_table(path: Path, as_text: bool = False) -> pd.DataFrame:
    """CSV (all text when `as_text`; else numbers inferred, patient_id text) or parquet."""
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        elif as_text:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], compression="infer")
        else:
            df = pd.read_csv(
                path, dtype={PATIENT_ID: str}, keep_default_na=False, na_values=list(OMICS_MISSING_MARKERS),
                compression="infer", low_memory=False,
            )
    except ImportError as err:
        raise InputError(path, None, f"reading parquet needs pyarrow ({err})") from None
    except pd.errors.EmptyDataError:
        raise InputError(path, None, "file is empty (no header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError) as err:
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


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_multimodal_site(site_dir: Path, labels: pd.DataFrame, omics: pd.DataFrame, notes: pd.DataFrame) -> Path:
    """Write one site folder (labels.csv, omics.csv, notes.csv), each atomically (shared.io).

    Each frame has a `patient_id` column; `omics` holds the feature columns beside it, `notes` a
    `text` column. Missing omics values (NaN) are written as empty fields.
    """
    site_dir = Path(site_dir)
    site_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in ((LABELS_TABLE, labels), (OMICS_TABLE, omics), (NOTES_TABLE, notes)):
        with atomic_file(site_dir / f"{name}.csv") as handle:
            frame.to_csv(handle, index=False, float_format="%.10g")
    return site_dir


# ---------------------------------------------------------------------------------------------
# Synthetic sites
# ---------------------------------------------------------------------------------------------

SYNTHETIC_GENES: tuple[str, ...] = tuple(f"GENE{k:03d}" for k in range(1, 101))
# Informative genes: loading of the omics risk factor on log expression.
_INFORMATIVE_GENES = {
    "GENE007": 0.9, "GENE013": -0.8, "GENE021": 0.7, "GENE034": 0.8, "GENE046": 0.6,
    "GENE058": -0.7, "GENE063": 0.6, "GENE072": 0.7, "GENE085": -0.6, "GENE091": 0.8,
}  # fmt: skip
_RISK_FINDINGS = (
    "metastatic disease", "poorly differentiated tumour", "lymph node involvement", "lymphovascular invasion",
    "high mitotic rate", "tumour necrosis", "unintentional weight loss", "rising tumour markers",
)  # fmt: skip
_FAVOURABLE_FINDINGS = (
    "well differentiated tumour", "clear surgical margins", "no nodal disease", "low grade histology",
    "good performance status", "stable disease on imaging", "normal tumour markers", "complete response to therapy",
)  # fmt: skip
_SOURCES = ("CT", "MRI", "biopsy", "PET-CT", "ultrasound", "pathology review")
_FINDING_TEMPLATES = (
    "Pathology: {f}.", "{src} shows {f}.", "Impression: {f}.", "Findings consistent with {f}.",
    "Assessment notable for {f}.", "{f} documented on {src}.",
)  # fmt: skip
_FILLER_SENTENCES = (
    "Patient seen in oncology clinic.", "Vital signs stable.", "Medications reviewed and reconciled.",
    "Discussed plan with patient and family.", "Follow-up in four weeks.", "Tolerating oral intake.",
    "No acute distress.", "Labs reviewed.", "Consent obtained for next cycle.", "Social work referral placed.",
)  # fmt: skip
_OMICS_WEIGHT, _TEXT_WEIGHT, _NOISE_SD = 2.0, 2.0, 0.5  # true logit = intercept + these x the two factors + noise


@dataclass(frozen=True)
class _MultimodalSiteProfile:
    """How one synthetic hospital differs: case mix, assay batch, documentation, missingness."""

    prevalence: float  # binary labels
    baseline_median_days: float  # survival labels: median time to event at zero risk
    library_shift: float  # log-scale sequencing depth of the site's assay
    batch_sd: float  # sd of the site's per-gene log offsets
    value_missing: float  # fraction of omics values left empty
    notes_missing: float  # fraction of patients without notes
    omics_missing: float  # fraction of patients without a profile
    notes_per_patient: float  # mean extra notes (1 + Poisson)
    extra_columns: tuple[str, ...] = ()  # omics columns outside the panel
    unknown_patient_rows: int = 0  # omics rows and notes of patients absent from labels.csv


_DEFAULT_MULTIMODAL_PROFILES = (
    _MultimodalSiteProfile(0.25, 1400.0, 0.0, 0.25, 0.01, 0.12, 0.06, 0.8),
    _MultimodalSiteProfile(0.35, 1100.0, 0.6, 0.35, 0.02, 0.18, 0.09, 1.2, unknown_patient_rows=3),
    _MultimodalSiteProfile(0.45, 900.0, -0.5, 0.30, 0.015, 0.15, 0.07, 0.5, extra_columns=("GENE101", "assay_plate")),
)
_DEFAULT_MULTIMODAL_SIZES = (300, 200, 120)


def synthesize_multimodal_sites(
    out_dir: Path, n_sites: int = 3, sizes: list[int] | None = None, seed: int = 0, label: str = "binary"
) -> list[Path]:
    """Write `n_sites` synthetic omics + notes sites (hospital_a, ...) under `out_dir`.

    Default sizes 300 / 200 / 120 patients, then 100, 80, ... (never below 60). Each patient has
    two hidden risk factors, one expressed in the omics and one in the notes, so both modalities
    carry signal; the true logit is
        site intercept + 1.3 omics factor + 1.3 text factor + noise (sd 0.6).
    Omics: counts of the 100 panel genes (SYNTHETIC_GENES, Poisson around log-normal means),
    ten informative genes loading on the omics factor, three co-expression modules of noise genes,
    and per-site batch effects (sequencing depth, per-gene offsets), 1-2 % empty values.
    Notes: 1 + Poisson notes per patient of templated sentences mixing findings (risk findings such
    as "lymph node involvement" more likely with a high text factor, favourable ones such as "clear
    surgical margins" otherwise) with routine sentences. Sites differ in prevalence (25 / 35 / 45 %
    for binary labels), baseline hazard (survival labels: exponential times, administrative
    censoring after 1-8 years), assay batch, how many notes they write, and missingness: 12-18 %
    of patients without notes, 6-9 % without omics (never both). hospital_b also holds omics rows
    and notes of 3 patients absent from labels.csv, hospital_c two extra omics columns.
    With label="survival" labels.csv holds time (days) and event instead of label.
    Deterministic for a seed; site k's data do not depend on how many sites are written. Writes
    README.txt and synthetic_truth.csv (site, patient_id, true_logit) beside the site folders.
    """
    if label not in LABEL_TYPES:
        raise InputError(None, "label", f"must be one of {', '.join(LABEL_TYPES)}, got {label!r}")
    if not 1 <= n_sites <= 26:
        raise InputError(None, "n_sites", f"must be 1-26, got {n_sites}")
    if sizes is None:
        sizes = [
            _DEFAULT_MULTIMODAL_SIZES[k] if k < 3 else max(60, round(120 * 0.8 ** (k - 2))) for k in range(n_sites)
        ]
    if len(sizes) != n_sites or any(int(s) < 1 for s in sizes):
        raise InputError(None, "sizes", f"need {n_sites} positive site sizes, got {sizes}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panel = _gene_panel(np.random.default_rng([seed, 999]))
    site_dirs, truths = [], []
    for k in range(n_sites):
        name = f"hospital_{string.ascii_lowercase[k]}"
        rng = np.random.default_rng([seed, k])
        profile = _DEFAULT_MULTIMODAL_PROFILES[k] if k < len(_DEFAULT_MULTIMODAL_PROFILES) else _random_profile(rng)
        labels, omics, notes, truth = _simulate_multimodal_site(profile, panel, int(sizes[k]), k, label, rng)
        site_dirs.append(write_multimodal_site(out_dir / name, labels, omics, notes))
        truths.append(truth.assign(site=name)[["site", PATIENT_ID, "true_logit"]])
    with atomic_file(out_dir / "synthetic_truth.csv") as handle:
        pd.concat(truths, ignore_index=True).to_csv(handle, index=False, float_format="%.6g")
    write_text(out_dir / "README.txt", _SYNTHETIC_README.format(seed=seed, n_sites=n_sites, sizes=sizes, label=label))
    return site_dirs


_SYNTHETIC_README = """\
SYNTHETIC DATA - NOT REAL PATIENTS.

Written by fedcare's synthesize_multimodal_sites (seed {seed}, {n_sites} sites, sizes {sizes},
{label} labels). Every patient, gene count, note and outcome here is simulated. The site folders
(hospital_a, ...) follow the multimodal site format documented in shared/data/omics.py; the omics
panel is GENE001-GENE100. Labels come from two hidden risk factors, one expressed in ten genes
and one in the findings the notes mention, plus noise; synthetic_truth.csv holds the true logit
per patient for oracle comparisons and must not be used for training.
"""


@dataclass(frozen=True)
class _GenePanel:
    log_mean: np.ndarray  # (G,) log expression at zero factors
    module: np.ndarray  # (G,) co-expression module 0-2 of a noise gene, -1 = none
    loading: np.ndarray  # (G,) loading on the omics risk factor


def _gene_panel(rng: np.random.Generator) -> _GenePanel:
    n = len(SYNTHETIC_GENES)
    module = np.full(n, -1)
    noise_genes = [g for g, name in enumerate(SYNTHETIC_GENES) if name not in _INFORMATIVE_GENES]
    module[rng.choice(noise_genes, size=45, replace=False)] = np.repeat(np.arange(3), 15)
    loading = np.array([_INFORMATIVE_GENES.get(name, 0.0) for name in SYNTHETIC_GENES])
    log_mean = rng.uniform(1.5, 7.0, n)
    log_mean[loading != 0] = rng.uniform(4.0, 7.0, int((loading != 0).sum()))  # informative genes are well expressed
    return _GenePanel(log_mean, module, loading)


def _random_profile(rng: np.random.Generator) -> _MultimodalSiteProfile:
    return _MultimodalSiteProfile(
        prevalence=float(rng.uniform(0.2, 0.45)),
        baseline_median_days=float(rng.uniform(900.0, 1500.0)),
        library_shift=float(rng.normal(0.0, 0.5)),
        batch_sd=float(rng.uniform(0.2, 0.4)),
        value_missing=float(rng.uniform(0.005, 0.02)),
        notes_missing=float(rng.uniform(0.10, 0.20)),
        omics_missing=float(rng.uniform(0.05, 0.10)),
        notes_per_patient=float(rng.uniform(0.5, 1.2)),
    )


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))


def _intercept_for_prevalence(logit: np.ndarray, prevalence: float) -> float:
    low, high = -12.0, 12.0
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if _sigmoid(logit + middle).mean() < prevalence else (low, middle)
    return 0.5 * (low + high)


def _simulate_multimodal_site(
    profile: _MultimodalSiteProfile, panel: _GenePanel, n: int, site_index: int, label: str, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """labels, omics, notes and the truth (patient_id, true_logit) of one synthetic site."""
    letter = string.ascii_uppercase[site_index]
    ids = np.array([f"{letter}-{i:04d}" for i in range(1, n + 1)], dtype=object)
    omics_factor, text_factor = rng.normal(size=n), rng.normal(size=n)
    risk = _OMICS_WEIGHT * omics_factor + _TEXT_WEIGHT * text_factor + rng.normal(0.0, _NOISE_SD, n)
    if label == "binary":
        intercept = _intercept_for_prevalence(risk, profile.prevalence)
        labels = pd.DataFrame({PATIENT_ID: ids, LABEL: rng.binomial(1, _sigmoid(intercept + risk))})
    else:
        intercept = 0.0
        hazard = np.log(2.0) / profile.baseline_median_days * np.exp(0.6 * risk)
        event_time = rng.exponential(1.0 / hazard)
        censor_time = rng.uniform(365.0, 8 * 365.0, n)
        time = np.round(np.minimum(event_time, censor_time), 1)
        labels = pd.DataFrame({PATIENT_ID: ids, TIME: time, EVENT: (event_time <= censor_time).astype(int)})
    no_notes = rng.random(n) < profile.notes_missing
    no_omics = ~no_notes & (rng.random(n) < profile.omics_missing / max(1e-9, 1.0 - profile.notes_missing))
    counts = _simulate_counts(profile, panel, omics_factor, rng)
    omics = pd.DataFrame(counts, columns=list(SYNTHETIC_GENES))
    omics.insert(0, PATIENT_ID, ids)
    omics = omics[~no_omics]
    written = [(pid, note) for pid, t in zip(ids[~no_notes], text_factor[~no_notes]) for note in _simulate_notes(t, profile, rng)]
    notes = pd.DataFrame(written, columns=[PATIENT_ID, NOTE_TEXT])
    if profile.unknown_patient_rows:
        strangers = np.array([f"{letter}-X{i:03d}" for i in range(profile.unknown_patient_rows)], dtype=object)
        stranger_counts = _simulate_counts(profile, panel, rng.normal(size=len(strangers)), rng)
        stranger_omics = pd.DataFrame(stranger_counts, columns=list(SYNTHETIC_GENES))
        stranger_omics.insert(0, PATIENT_ID, strangers)
        omics = pd.concat([omics, stranger_omics], ignore_index=True)
        stranger_notes = [(p, note) for p in strangers for note in _simulate_notes(float(rng.normal()), profile, rng)]
        notes = pd.concat([notes, pd.DataFrame(stranger_notes, columns=[PATIENT_ID, NOTE_TEXT])], ignore_index=True)
    for col in profile.extra_columns:
        omics[col] = rng.poisson(50.0, len(omics)) if col.startswith("GENE") else rng.choice(["P1", "P2", "P3"], len(omics))
    truth = pd.DataFrame({PATIENT_ID: ids, "true_logit": intercept + risk})
    return labels, omics, notes, truth


def _simulate_counts(
    profile: _MultimodalSiteProfile, panel: _GenePanel, omics_factor: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(n, G) gene counts with this site's batch effects; NaN = value left empty."""
    n, g = len(omics_factor), len(panel.log_mean)
    modules = rng.normal(size=(n, 3))
    module_effect = np.where(panel.module >= 0, 0.5 * modules[:, np.clip(panel.module, 0, None)], 0.0)  # (n, G)
    batch = rng.normal(0.0, profile.batch_sd, g)  # the site's per-gene offsets
    depth = profile.library_shift + rng.normal(0.0, 0.15, (n, 1))  # per-sample sequencing depth
    log_expr = panel.log_mean + batch + depth + module_effect + np.outer(omics_factor, panel.loading) + rng.normal(0, 0.3, (n, g))
    counts = rng.poisson(np.exp(log_expr)).astype(float)
    counts[rng.random((n, g)) < profile.value_missing] = np.nan
    return counts


def _simulate_notes(text_factor: float, profile: _MultimodalSiteProfile, rng: np.random.Generator) -> list[str]:
    """1 + Poisson notes; each finding is a risk finding with probability sigmoid(3 x factor)."""
    n_notes = 1 + min(3, int(rng.poisson(profile.notes_per_patient)))
    n_findings = 3 + int(rng.poisson(2.0))
    sentences: list[list[str]] = [[] for _ in range(n_notes)]
    for _ in range(n_findings):
        pool = _RISK_FINDINGS if rng.random() < _sigmoid(3.0 * text_factor) else _FAVOURABLE_FINDINGS
        template = str(rng.choice(_FINDING_TEMPLATES))
        sentence = template.format(f=str(rng.choice(pool)), src=str(rng.choice(_SOURCES)))
        sentences[int(rng.integers(n_notes))].append(sentence[0].upper() + sentence[1:])
    notes = []
    for note in sentences:
        note += [str(s) for s in rng.choice(_FILLER_SENTENCES, size=int(rng.integers(1, 3)), replace=False)]
        notes.append(" ".join(note[i] for i in rng.permutation(len(note))))
    return notes
