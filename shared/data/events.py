"""ICU-event sites: the on-disk format and a strict loader (names: event_schema.py; writer:
writers.py; synthetic sites: synth/events.py).

On-disk format of one site
==========================
One folder per hospital (e.g. ``data/synthetic/event_mortality/hospital_a/``) holding two
comma-separated files with a header row, each either plain (``.csv``) or gzip-compressed
(``.csv.gz``); exactly one of the two variants of each file may be present.

``stays.csv`` - one row per ICU stay.

=====================  ========  =====================================================================
column                 required  content
=====================  ========  =====================================================================
stay_id                yes       integer, unique in the file
intime, outtime        yes       ISO-8601 datetimes (``2150-03-01 14:05:00`` or ``2150-03-01T14:05``),
                                 no missing values, outtime >= intime; with UTC offsets (in every
                                 row of the column, or none) times are converted to UTC
age                    yes       number of years, 0-120, no missing values
gender                 yes       ``M`` / ``F``
admission_type         yes       MIMIC-IV admissions.admission_type (e.g. ``EW EMER.``)
first_careunit         yes       MIMIC-IV icustays.first_careunit (e.g. ``Coronary Care Unit (CCU)``)
hospital_expire_flag   yes       the label: 0 or 1 (died in hospital), no missing values
subject_id             no        integer patient id (stays of one patient share it); default: stay_id
race                   no        MIMIC-IV admissions.race
marital_status         no        ``MARRIED`` / ``SINGLE`` / ``WIDOWED`` / ``DIVORCED``
insurance              no        ``Medicare`` / ``Medicaid`` / ``Private`` / ``Other`` / ``No charge``
admission_location     no        MIMIC-IV admissions.admission_location
split                  no        ``train`` / ``val`` / ``test``: a fixed split (shared/data/splits.py)
=====================  ========  =====================================================================

``events.csv`` - one row per clinical event.

=====================  ========  =====================================================================
column                 required  content
=====================  ========  =====================================================================
stay_id                yes       integer, the stay the event belongs to
charttime              yes       ISO-8601 datetime, no missing values
event_type             yes       ``prescription``, ``procedure``, ``lab``, ``microbiology`` or
                                 ``ingredient`` (case and surrounding spaces are ignored)
event_text             yes       the item as charted, e.g. ``Norepinephrine``, ``Lactate``,
                                 ``BLOOD CULTURE - Blood Culture, Routine: ESCHERICHIA COLI``
value                  no        number (lab value, ingredient amount); empty where not applicable
=====================  ========  =====================================================================

Other columns are ignored. Only an empty field is missing (``NA`` or ``null`` are text).
Categorical values are not checked against the schema's levels: a value outside
``event_schema.STATIC_CATEGORICAL`` (or ``unknown``, filled in for a missing value or a missing
optional column) lands in the encoder's "other" slot.

Loading rejects, with an ``InputError`` naming the file and column: a missing file or required
column, a file that is not readable CSV (bad gzip, malformed rows), an unparseable or missing
datetime, integer or number (with the first bad data row), an age outside 0-120, a label that
is not 0/1, a duplicate stay_id, an unknown event_type, a site without stays and a stay whose
outtime is before its intime.

Loading drops and counts (``EventSiteData.dropped``), checked in this order:
``events_unknown_stay`` (stay_id not in stays.csv), ``events_empty_text`` (empty event_text) and
``events_outside_stay`` (charttime more than 24 h before intime or more than 1 h after outtime).
Stays without events are kept: the model sees an empty sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.event_schema import (
    EVENT_COLUMNS,
    EVENT_HOURS_AFTER_OUTTIME,
    EVENT_HOURS_BEFORE_INTIME,
    EVENT_REQUIRED_COLUMNS,
    EVENT_TYPES,
    EVENTS_FILE,
    LABEL,
    STAY_REQUIRED_COLUMNS,
    STAYS_FILE,
    UNKNOWN_CATEGORY,
)
from shared.data.splits import parse_split
from shared.data.tables import find_site_table, first_bad, read_csv_as_text, require_columns
from shared.errors import InputError

STAY_CATEGORICAL_COLUMNS = (
    "gender",
    "admission_type",
    "first_careunit",
    "race",
    "marital_status",
    "insurance",
    "admission_location",
)
# Column order of EventSiteData.stays (its index is stay_id).
STAY_COLUMNS = ("subject_id", "intime", "outtime", "los_hours", "age", *STAY_CATEGORICAL_COLUMNS, LABEL)
DROP_REASONS = ("events_unknown_stay", "events_empty_text", "events_outside_stay")
_UTC_OFFSET = r"\d{2}:\d{2}(?::\d{2}(?:\.\d*)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"  # after a time, not a date


@dataclass
class EventSiteData:
    """One hospital's ICU stays and their events, validated.

    stays: index ``stay_id`` (int64, sorted); columns ``STAY_COLUMNS``: subject_id (int64),
    intime/outtime (datetime64), los_hours (float, outtime - intime), age (float), the seven
    categorical columns (str, ``unknown`` where missing) and hospital_expire_flag (int64 0/1).
    events: columns ``EVENT_COLUMNS``: stay_id (int64), charttime (datetime64), event_type (str,
    one of EVENT_TYPES), event_text (str, stripped, non-empty), value (float, NaN where absent);
    sorted by stay_id then charttime (file order within ties), index 0..n-1.
    dropped: rows left out while loading, by reason (every key of DROP_REASONS present).
    split: the fixed split of each stay in `stays` order (shared/data/splits.py), None without a
    ``split`` column.
    """

    site: str
    stays: pd.DataFrame
    events: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)
    split: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_event_site(site_dir: Path, site: str | None = None, require_label: bool = True) -> EventSiteData:
    """Load and validate one site folder (format in this module's docstring).

    `site` names the result (default: the folder name). Raises InputError on every rejected
    input listed in the module docstring; drops and counts the rows listed there. With
    `require_label=False` (new stays to predict) the label column may be absent; its value is -1.
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise InputError(site_dir, None, "site folder does not exist")
    stays_path = find_site_table(site_dir, STAYS_FILE)
    events_path = find_site_table(site_dir, EVENTS_FILE)
    stays_table = read_csv_as_text(stays_path)
    if not require_label and LABEL not in stays_table.columns:
        stays_table[LABEL] = "-1"
    stays = _parse_stays(stays_table, stays_path, allowed_labels=(0.0, 1.0) if require_label else (0.0, 1.0, -1.0))
    events, dropped = _parse_events(read_csv_as_text(events_path), events_path, stays)
    split = parse_split(stays_table, stays_path, require_train=require_label)
    if split is not None:  # into `stays` order (sorted by stay_id)
        split = split[np.argsort(pd.to_numeric(stays_table["stay_id"].str.strip()).to_numpy(), kind="stable")]
    return EventSiteData(site=site or site_dir.name, stays=stays, events=events, dropped=dropped, split=split)


def _parse_datetime(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    raw = df[col].str.strip()
    has_offset = raw.str.contains(_UTC_OFFSET, na=False)
    if has_offset.any() and not has_offset[raw.notna()].all():
        raise first_bad(path, col, df[col], ~has_offset, "has no UTC offset while other rows have one")
    # with offsets: converted to UTC; pandas would shift offset-free values too if they were mixed in
    parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce", utc=bool(has_offset.any()))
    if has_offset.any():
        parsed = parsed.dt.tz_localize(None)
    bad = parsed.isna()
    if bad.any():
        raise first_bad(path, col, df[col], bad, "is not an ISO-8601 datetime")
    return parsed.astype("datetime64[ns]")


def _parse_number(df: pd.DataFrame, col: str, path: Path, *, allow_missing: bool) -> pd.Series:
    raw = df[col].str.strip()
    num = pd.to_numeric(raw, errors="coerce")
    bad = num.isna() & raw.notna() if allow_missing else num.isna()
    bad |= np.isinf(num)
    if bad.any():
        raise first_bad(path, col, df[col], bad, "is not a finite number")
    return num.astype(float)


def _parse_int(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    num = _parse_number(df, col, path, allow_missing=False)
    bad = num != np.round(num)
    if bad.any():
        raise first_bad(path, col, df[col], bad, "is not an integer")
    return num.astype(np.int64)


def _parse_stays(df: pd.DataFrame, path: Path, allowed_labels: tuple[float, ...] = (0.0, 1.0)) -> pd.DataFrame:
    require_columns(df, path, STAY_REQUIRED_COLUMNS)
    if df.empty:
        raise InputError(path, None, "no stays: the site has no rows in its stays file")
    stay_id = _parse_int(df, "stay_id", path)
    dup = stay_id.duplicated()
    if dup.any():
        raise first_bad(path, "stay_id", df["stay_id"], dup, "is a duplicate stay_id")
    intime = _parse_datetime(df, "intime", path)
    outtime = _parse_datetime(df, "outtime", path)
    reversed_ = outtime < intime
    if reversed_.any():
        raise first_bad(path, "outtime", df["outtime"], reversed_, "is before the stay's intime")
    age = _parse_number(df, "age", path, allow_missing=False)
    out_of_range = (age < 0) | (age > 120)
    if out_of_range.any():
        raise first_bad(path, "age", df["age"], out_of_range, "is outside 0-120 years")
    label = _parse_number(df, LABEL, path, allow_missing=False)
    not_binary = ~label.isin(list(allowed_labels))
    if not_binary.any():
        raise first_bad(path, LABEL, df[LABEL], not_binary, "is not a 0/1 label")
    subject_id = _parse_int(df, "subject_id", path) if "subject_id" in df.columns else stay_id

    stays = pd.DataFrame(
        {
            "subject_id": subject_id.to_numpy(),
            "intime": intime.to_numpy(),
            "outtime": outtime.to_numpy(),
            "los_hours": ((outtime - intime).dt.total_seconds() / 3600.0).to_numpy(),
            "age": age.to_numpy(),
        },
        index=pd.Index(stay_id.to_numpy(), name="stay_id"),
    )
    for col in STAY_CATEGORICAL_COLUMNS:
        if col in df.columns:
            stays[col] = df[col].str.strip().replace("", np.nan).fillna(UNKNOWN_CATEGORY).to_numpy()
        else:
            stays[col] = UNKNOWN_CATEGORY
    stays[LABEL] = label.astype(np.int64).to_numpy()
    return stays[list(STAY_COLUMNS)].sort_index()


def _parse_events(df: pd.DataFrame, path: Path, stays: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    require_columns(df, path, EVENT_REQUIRED_COLUMNS)
    stay_id = _parse_int(df, "stay_id", path)
    charttime = _parse_datetime(df, "charttime", path)
    event_type = df["event_type"].str.strip().str.lower()
    unknown_type = ~event_type.isin(EVENT_TYPES)
    if unknown_type.any():
        raise first_bad(
            path, "event_type", df["event_type"], unknown_type, f"is not one of {', '.join(EVENT_TYPES)}"
        )
    if "value" in df.columns:
        value = _parse_number(df, "value", path, allow_missing=True)
    else:
        value = pd.Series(np.nan, index=df.index)
    events = pd.DataFrame(
        {
            "stay_id": stay_id,
            "charttime": charttime,
            "event_type": event_type,
            "event_text": df["event_text"].str.strip(),
            "value": value,
        }
    )
    dropped = dict.fromkeys(DROP_REASONS, 0)
    known = events["stay_id"].isin(stays.index)
    dropped["events_unknown_stay"] = int((~known).sum())
    events = events[known]
    has_text = events["event_text"].notna() & (events["event_text"] != "")
    dropped["events_empty_text"] = int((~has_text).sum())
    events = events[has_text]
    intime = stays["intime"].reindex(events["stay_id"]).to_numpy()
    outtime = stays["outtime"].reindex(events["stay_id"]).to_numpy()
    t = events["charttime"].to_numpy()
    inside = (t >= intime - np.timedelta64(int(EVENT_HOURS_BEFORE_INTIME * 3600), "s")) & (
        t <= outtime + np.timedelta64(int(EVENT_HOURS_AFTER_OUTTIME * 3600), "s")
    )
    dropped["events_outside_stay"] = int((~inside).sum())
    events = events[inside]
    events = events.sort_values(["stay_id", "charttime"], kind="stable").reset_index(drop=True)
    return events[list(EVENT_COLUMNS)], dropped
