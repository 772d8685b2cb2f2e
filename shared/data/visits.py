"""Patient-visit sites for AKI prediction (RETAIN): the on-disk format, a strict loader, a writer and a
synthetic generator.

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

import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.tables import find_site_table, first_bad, read_csv_as_text, require_columns
from shared.errors import InputError
from shared.io import atomic_file, write_text

VISITS_FILE = "visits"
LABELS_FILE = "labels"
LABEL = "aki"
# lab name -> unit; the model's input features, in this order
LAB_FEATURES: dict[str, str] = {
    "creatinine": "mg/dL",
    "bun": "mg/dL",
    "egfr": "mL/min/1.73m2",
    "potassium": "mmol/L",
    "sodium": "mmol/L",
    "bicarbonate": "mmol/L",
    "hemoglobin": "g/dL",
    "urine_output": "mL/kg/h",
}
FEATURES: tuple[str, ...] = tuple(LAB_FEATURES)
# lab name -> (lowest, highest) value accepted, in the unit above (documented in the module docstring)
LAB_RANGES: dict[str, tuple[float, float]] = {
    "creatinine": (0.0, 40.0),
    "bun": (0.0, 400.0),
    "egfr": (0.0, 250.0),
    "potassium": (0.5, 15.0),
    "sodium": (80.0, 220.0),
    "bicarbonate": (0.0, 80.0),
    "hemoglobin": (0.0, 30.0),
    "urine_output": (0.0, 50.0),
}
VISIT_COLUMNS: tuple[str, ...] = ("patient_id", "visit_id", "timestamp", *FEATURES)
LABEL_COLUMNS: tuple[str, ...] = ("patient_id", LABEL)
DROP_REASONS = ("labels_unknown_patient", "patients_without_label")
_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"


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
    """

    site: str
    visits: pd.DataFrame
    patients: pd.Index
    labels: pd.Series | None
    dropped: dict[str, int] = field(default_factory=dict)


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
    labels = _parse_labels(read_csv_as_text(labels_path), labels_path)
    has_visits = labels.index.isin(visits["patient_id"])
    dropped["labels_unknown_patient"] = int((~has_visits).sum())
    labels = labels[has_visits]
    labelled = visits["patient_id"].isin(labels.index)
    dropped["patients_without_label"] = int(visits.loc[~labelled, "patient_id"].nunique())
    visits = visits[labelled].reset_index(drop=True)
    if visits.empty:
        raise InputError(labels_path, "patient_id", "no patient of visits.csv has a label here")
    patients = pd.Index(np.sort(visits["patient_id"].unique()), name="patient_id")
    return VisitSiteData(site or site_dir.name, visits, patients, labels.reindex(patients), dropped)


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


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_visit_site(site_dir: Path, visits: pd.DataFrame, labels: pd.DataFrame | None) -> Path:
    """Write one site folder in the format above; each file atomically (shared.io).

    visits: the ``VISIT_COLUMNS`` (extra columns are not written); labels: patient_id and aki,
    or None to write visits.csv only (new patients to predict).
    """
    site_dir = Path(site_dir)
    site_dir.mkdir(parents=True, exist_ok=True)
    visits = visits[list(VISIT_COLUMNS)].copy()
    if pd.api.types.is_datetime64_any_dtype(visits["timestamp"]):
        visits["timestamp"] = visits["timestamp"].dt.strftime(_DATETIME_FORMAT)
    _write_csv(visits, site_dir / f"{VISITS_FILE}.csv")
    if labels is not None:
        _write_csv(labels[list(LABEL_COLUMNS)], site_dir / f"{LABELS_FILE}.csv")
    return site_dir


def _write_csv(df: pd.DataFrame, final: Path) -> None:
    with atomic_file(final) as handle:
        df.to_csv(handle, index=False, float_format="%.4g")


# ---------------------------------------------------------------------------------------------
# Synthetic sites
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SiteProfile:
    """How one synthetic hospital differs: case mix, assay calibration, charting habits."""

    prevalence: float
    ckd_rate: float  # share of patients with chronic kidney disease (high baseline creatinine)
    creatinine_assay: float  # multiplicative calibration of the creatinine assay (Jaffe vs enzymatic)
    sodium_offset: float  # mmol/L, analyser offset
    missing_rate: float  # per lab value, urine output excepted
    urine_missing_rate: float
    visit_gap_days: float  # median days between visits
    integer_ids: bool  # patient and visit ids as numbers (else text like "P-000017")


_DEFAULT_PROFILES = (
    _SiteProfile(0.12, 0.15, 1.00, 0.0, 0.05, 0.25, 4.0, True),  # academic centre, enzymatic assay
    _SiteProfile(0.20, 0.22, 1.12, -2.0, 0.10, 0.45, 7.0, False),  # community hospital, Jaffe assay
    _SiteProfile(0.30, 0.32, 0.93, 1.5, 0.15, 0.65, 2.5, False),  # safety-net hospital, sparse charting
)
_DEFAULT_SIZES = (500, 300, 150)
MIN_VISITS, MAX_SYNTH_VISITS = 3, 20
TRUTH_FILE = "synthetic_truth.csv"  # beside the site folders


def synthesize_visit_sites(out_dir: Path, n_sites: int = 3, sizes: list[int] | None = None, seed: int = 0) -> list[Path]:
    """Write `n_sites` synthetic visit sites (hospital_a, hospital_b, ...) under `out_dir`.

    Default sizes 500 / 300 / 150 patients, then 110, 80, ... (never below 40); 3-20 visits per
    patient. Sites differ as hospitals do: AKI prevalence (12 %, 20 %, 30 %; later sites drawn in
    10-30 %), CKD case mix, creatinine assay calibration (x1.00, x1.12, x0.93), a sodium analyser
    offset, missing values (5-15 % per lab, 25-65 % for urine output), visit spacing and id style.

    Per patient, a hidden baseline creatinine (higher with CKD) and a hidden risk r drive the labs.
    With probability sigmoid(-1.2 + 1.2 r) an injury begins at one of the last three visits and
    creatinine climbs from there by 15-50 % of baseline per visit (BUN and potassium rise, urine
    output, bicarbonate and eGFR fall with it); with probability 0.35 an earlier, resolved episode
    of the same kind happens in the first half of the history (a decoy: it does not raise the risk).
    Labs carry 6-20 % measurement noise. The AKI logit is
        site intercept + 5.5 log(creatinine at the last visit / baseline) + 0.6 [CKD] + 0.4 r
        + 0.3 [baseline BUN-to-creatinine ratio above 20] + N(0, 0.5) unobserved noise,
    so recent rises matter and old ones do not. An oracle on the true logit reaches AUROC
    0.85-0.9 at the two larger sites; logistic regression on hand-made trajectory features of the
    observed labs, 0.8-0.87 (less at the small, sparsely charted hospital_c). Site intercepts are
    solved to hit each site's prevalence.
    Deterministic for a seed; site k does not depend on how many sites are written. Also writes
    README.txt and the ground truth (synthetic_truth.csv: site, patient_id, true_logit) beside,
    not inside, the site folders. Returns the site folders.
    """
    if not 1 <= n_sites <= 26:
        raise InputError(None, "n_sites", f"must be 1-26, got {n_sites}")
    if sizes is None:
        sizes = [_DEFAULT_SIZES[k] if k < 3 else max(40, round(150 * 0.75 ** (k - 2))) for k in range(n_sites)]
    if len(sizes) != n_sites or any(int(s) < 1 for s in sizes):
        raise InputError(None, "sizes", f"need {n_sites} positive site sizes, got {sizes}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    site_dirs, truths = [], []
    for k in range(n_sites):
        name = f"hospital_{string.ascii_lowercase[k]}"
        rng = np.random.default_rng([seed, k, 7])
        profile = _DEFAULT_PROFILES[k] if k < len(_DEFAULT_PROFILES) else _random_profile(rng)
        visits, labels, true_logit = _simulate_site(profile, int(sizes[k]), k, rng)
        site_dirs.append(write_visit_site(out_dir / name, visits, labels))
        truths.append(pd.DataFrame({"site": name, "patient_id": labels["patient_id"], "true_logit": true_logit}))
    _write_csv(pd.concat(truths, ignore_index=True), out_dir / TRUTH_FILE)
    write_text(out_dir / "README.txt", _SYNTHETIC_README.format(seed=seed, n_sites=n_sites, sizes=sizes))
    return site_dirs


_SYNTHETIC_README = """\
SYNTHETIC DATA - NOT REAL PATIENTS.

Written by fedcare's synthesize_visit_sites (seed {seed}, {n_sites} sites, sizes {sizes}).
Every patient, visit, lab value, date and outcome here is simulated; nothing comes from a real
hospital. The site folders (hospital_a, ...) follow the visit site format documented in
shared/data/visits.py. AKI labels come from a known logit over the recent creatinine trajectory,
chronic kidney disease and a hidden risk, plus unobserved noise; synthetic_truth.csv holds that
true logit per patient for oracle comparisons and must not be used for training.
"""


def _random_profile(rng: np.random.Generator) -> _SiteProfile:
    return _SiteProfile(
        prevalence=float(rng.uniform(0.10, 0.30)),
        ckd_rate=float(rng.uniform(0.12, 0.32)),
        creatinine_assay=float(rng.uniform(0.9, 1.15)),
        sodium_offset=float(rng.uniform(-2.0, 2.0)),
        missing_rate=float(rng.uniform(0.05, 0.15)),
        urine_missing_rate=float(rng.uniform(0.25, 0.65)),
        visit_gap_days=float(rng.uniform(2.0, 8.0)),
        integer_ids=bool(rng.uniform() < 0.5),
    )


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))


def _injury_curve(n_visits: int, onset: int, rate: float) -> np.ndarray:
    """Creatinine multiplier per visit: 1 before `onset`, then 1 + rate, 1 + 2 rate, ..."""
    steps = np.arange(n_visits) - onset + 1
    return 1.0 + rate * np.clip(steps, 0, None)


def _simulate_site(
    profile: _SiteProfile, n: int, site_index: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Visits, labels and the true AKI logit of one synthetic site."""
    n_visits = rng.integers(MIN_VISITS, MAX_SYNTH_VISITS + 1, size=n)
    ckd = rng.uniform(size=n) < profile.ckd_rate
    risk = rng.normal(size=n)  # hidden
    age = np.clip(rng.normal(64.0, 14.0, size=n), 18.0, 95.0)
    baseline_cr = rng.lognormal(np.log(np.where(ckd, 1.7, 0.85)), 0.2)
    prerenal = rng.uniform(size=n) < 0.25  # baseline BUN-to-creatinine ratio above 20
    injured = rng.uniform(size=n) < _sigmoid(-1.2 + 1.2 * risk)
    decoy = rng.uniform(size=n) < 0.35

    rows, final_multiplier = [], np.ones(n)
    start = pd.Timestamp("2140-01-01") + pd.to_timedelta(rng.uniform(0, 40 * 365.25, size=n), unit="D")
    for i in range(n):
        t = int(n_visits[i])
        multiplier = np.ones(t)
        if injured[i]:
            onset = t - int(rng.integers(1, min(3, t) + 1))  # one of the last three visits
            multiplier *= _injury_curve(t, onset, rng.uniform(0.15, 0.5))
        if decoy[i] and t >= 6:
            onset = int(rng.integers(0, t // 2 - 1))
            episode = _injury_curve(t, onset, rng.uniform(0.2, 0.5))
            episode[onset + int(rng.integers(1, 3)) :] = 1.0  # resolved one or two visits later
            multiplier *= episode
        final_multiplier[i] = multiplier[-1]
        gaps = rng.lognormal(np.log(profile.visit_gap_days), 0.7, size=t)
        times = start[i] + pd.to_timedelta(np.cumsum(gaps) - gaps[0], unit="D")
        labs = _simulate_labs(profile, baseline_cr[i] * multiplier, multiplier, ckd[i], prerenal[i], age[i], rng)
        rows.append(labs.assign(patient=i, timestamp=times.floor("min")))
    visits = pd.concat(rows, ignore_index=True)

    logit = 5.5 * np.log(final_multiplier) + 0.6 * ckd + 0.4 * risk + 0.3 * prerenal + rng.normal(0.0, 0.5, size=n)
    logit += _intercept_for_prevalence(logit, profile.prevalence)
    aki = (rng.uniform(size=n) < _sigmoid(logit)).astype(np.int64)

    patient_ids, visit_ids = _site_ids(profile, n, len(visits), site_index, rng)
    visits["patient_id"] = patient_ids[visits.pop("patient").to_numpy()]
    visits["visit_id"] = visit_ids
    visits = visits.sample(frac=1.0, random_state=int(rng.integers(2**31))).reset_index(drop=True)  # files are unordered
    return visits[list(VISIT_COLUMNS)], pd.DataFrame({"patient_id": patient_ids, LABEL: aki}), logit


def _simulate_labs(
    profile: _SiteProfile,
    creatinine: np.ndarray,
    multiplier: np.ndarray,
    ckd: bool,
    prerenal: bool,
    age: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """One patient's labs per visit from the true creatinine trajectory (mg/dL) and injury multiplier."""
    t = len(creatinine)

    def noise(scale: float) -> np.ndarray:
        return rng.normal(0.0, scale, size=t)

    log_rise = np.log(multiplier)
    measured_cr = creatinine * np.exp(noise(0.08))
    labs = {
        "creatinine": measured_cr * profile.creatinine_assay,
        "bun": 14.0 * creatinine**0.9 * (1.45 if prerenal else 1.0) * np.exp(0.4 * log_rise + noise(0.18)),
        # on the true creatinine: the site's lab reports eGFR from a calibrated method
        "egfr": _ckd_epi_2021(creatinine, age) * np.exp(noise(0.06)),
        "potassium": 4.1 + 0.25 * ckd + 0.8 * log_rise + noise(0.35),
        "sodium": 139.0 + profile.sodium_offset + noise(3.0),
        "bicarbonate": 24.5 - 1.5 * ckd - 3.0 * log_rise + noise(2.2),
        "hemoglobin": 12.8 - 1.4 * ckd + rng.normal(0.0, 1.2) + noise(0.6),
        "urine_output": np.exp(np.log(1.0) - 1.2 * log_rise + noise(0.35)),
    }
    frame = pd.DataFrame({name: np.clip(values, 0.0, None) for name, values in labs.items()})
    for name in FEATURES:
        rate = profile.urine_missing_rate if name == "urine_output" else profile.missing_rate
        if name == "creatinine":
            rate /= 3.0  # creatinine is almost always drawn
        frame.loc[rng.uniform(size=t) < rate, name] = np.nan
    return frame


def _ckd_epi_2021(creatinine: np.ndarray, age: float) -> np.ndarray:
    """eGFR (mL/min/1.73 m2) by the 2021 race-free CKD-EPI equation, female and male constants averaged."""
    ratio = creatinine / 0.8
    return 142.0 * np.minimum(ratio, 1.0) ** -0.3 * np.maximum(ratio, 1.0) ** -1.2 * 0.9938**age


def _site_ids(
    profile: _SiteProfile, n: int, n_rows: int, site_index: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    block = 1_000_000 * (site_index + 1)
    patients = block + rng.choice(900_000, size=n, replace=False)
    visits = 10 * block + rng.choice(9_000_000, size=n_rows, replace=False)
    if profile.integer_ids:
        return patients.astype(str), visits.astype(str)
    return np.array([f"P-{p:07d}" for p in patients]), np.array([f"V-{v:08d}" for v in visits])


def _intercept_for_prevalence(logit: np.ndarray, prevalence: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < prevalence else (lo, mid)
    return (lo + hi) / 2
