"""MIMIC-IV (or its open demo) -> ICU-event sites in the format of shared/data/events.py.

Reads the official file names and columns, each as ``<name>.csv.gz`` or ``<name>.csv`` under
``hosp/`` and ``icu/`` (or directly in the MIMIC folder):

- hosp: admissions, patients, prescriptions, labevents, d_labitems, microbiologyevents
- icu:  icustays, procedureevents, ingredientevents, d_items

One row of stays.csv per ICU stay (icustays) with an admission row, a patient row and
intime <= outtime (other stays are left out):
age = anchor_age + (year of intime - anchor_year); gender from patients; admission_type,
admission_location, insurance, marital_status, race (``ethnicity`` in MIMIC-IV 1.0) and the
label hospital_expire_flag from admissions; first_careunit, intime, outtime from icustays;
subject_id is kept so a patient's stays can stay on one side of a split.

Events of a stay are those charted within [intime, outtime]. The hosp tables carry hadm_id,
not stay_id, so their rows join the stays of the same admission and fall into the stay whose
window holds them (rows without hadm_id are left out); the icu tables join on stay_id.

==============  ==================================  ======================================  ==========
event_type      table                               event_text                              value
==============  ==================================  ======================================  ==========
prescription    prescriptions.starttime             drug                                    -
procedure       procedureevents.starttime           d_items.label                           -
lab             labevents.charttime                 d_labitems.label                        valuenum
microbiology    microbiologyevents.charttime        "<spec_type_desc> - <test_name>:        -
                (chartdate if no charttime)         <org_name | no growth>"
ingredient      ingredientevents.starttime          d_items.label                           amount
==============  ==================================  ======================================  ==========

Microbiology rows repeat per antibiotic tested; one event is kept per specimen, test and
organism. A row with only a chartdate (midnight) belongs to a stay if that day is between the
day of intime and outtime; its charttime stays the midnight (the loader accepts events up to
24 h before intime). The specimen part is left out when it equals the test name
("MRSA SCREEN: no growth"). Rows without a time or a text are left out.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.event_schema import LABEL
from shared.data.events import EVENT_COLUMNS
from shared.data.tables import read_csv_as_text
from shared.data.writers import write_event_site
from shared.errors import InputError
from shared.io import write_text

# What an event table's rows become: (event_type, event_text, value or None).
EventSpec = Callable[[pd.DataFrame], tuple[str, pd.Series, "pd.Series | None"]]
# Rows read at a time from the large tables (full MIMIC-IV labevents has ~120M rows).
_CHUNK_ROWS = 2_000_000

_TABLE_MODULE = {
    "admissions": "hosp",
    "patients": "hosp",
    "prescriptions": "hosp",
    "labevents": "hosp",
    "d_labitems": "hosp",
    "microbiologyevents": "hosp",
    "icustays": "icu",
    "procedureevents": "icu",
    "ingredientevents": "icu",
    "d_items": "icu",
}


def convert_mimic_iv(
    mimic_dir: Path,
    out_dir: Path,
    site_by: str = "first_careunit",
    site_map: Path | None = None,
    min_stays: int = 1,
) -> dict[str, int]:
    """Convert MIMIC-IV to one site folder per hospital unit (or per a site map) under `out_dir`.

    Sites: by default the stays are split by the value of the stays column `site_by`
    (first_careunit, last_careunit, admission_type, admission_location, insurance, race,
    marital_status or gender); with `site_map`, a CSV with a ``site`` column and a ``stay_id``
    or ``subject_id`` column, each listed stay (or patient) goes to its site and stays not
    listed are left out. Site names are slugified ("Coronary Care Unit (CCU)" ->
    ``coronary_care_unit_ccu``); a missing value becomes ``unknown``. Sites with fewer than
    `min_stays` stays are not written. Each site folder gets stays.csv.gz and events.csv.gz,
    and `out_dir` a README.txt on where the data came from. Returns {site: number of stays}
    of the sites written, sorted by name. A missing table or column raises InputError.
    """
    mimic_dir, out_dir = Path(mimic_dir), Path(out_dir)
    if not mimic_dir.is_dir():
        raise InputError(mimic_dir, None, "MIMIC-IV folder does not exist")
    if min_stays < 1:
        raise InputError(None, "min_stays", f"must be at least 1, got {min_stays}")
    stays = build_mimic_stays(mimic_dir)
    sites = _assign_sites(stays, site_by, site_map)
    stays = stays[sites.notna()]
    sites = sites[sites.notna()]
    sizes = sites.value_counts()
    keep = sites.isin(sizes.index[sizes >= min_stays])
    stays, sites = stays[keep], sites[keep]
    events = build_mimic_events(mimic_dir, stays)

    counts: dict[str, int] = {}
    for site, site_stays in stays.groupby(sites, sort=True):
        site_events = events[events["stay_id"].isin(site_stays["stay_id"])]
        write_event_site(out_dir / str(site), site_stays, site_events, compress=True)
        counts[str(site)] = len(site_stays)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "README.txt", _MIMIC_README.format(mimic_dir=mimic_dir.resolve(), counts=counts))
    return counts


_MIMIC_README = """\
Derived from MIMIC-IV ({mimic_dir}) by fedcare's convert_mimic_iv.
These are real (de-identified) patient records: the MIMIC-IV data use agreement and license
apply to every file here. Do not share them beyond what that agreement allows.
Sites (stays): {counts}
"""


def slugify_site(value: object) -> str:
    """A folder-safe site name: lower case, runs of other characters -> '_' ('unknown' if empty)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "unknown"
    slug = re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_")
    return slug or "unknown"


def _assign_sites(stays: pd.DataFrame, site_by: str, site_map: Path | None) -> pd.Series:
    """Site name per stay (index aligned with `stays`); NaN for stays the site map leaves out."""
    if site_map is None:
        allowed = (
            "first_careunit",
            "last_careunit",
            "admission_type",
            "admission_location",
            "insurance",
            "race",
            "marital_status",
            "gender",
        )
        if site_by not in allowed:
            raise InputError(None, "site_by", f"{site_by!r} is not one of {', '.join(allowed)}")
        return stays[site_by].map(slugify_site)

    site_map = Path(site_map)
    table = read_csv_as_text(site_map)
    if "site" not in table.columns:
        raise InputError(site_map, "site", "missing required column")
    key = next((c for c in ("stay_id", "subject_id") if c in table.columns), None)
    if key is None:
        raise InputError(site_map, "stay_id", "missing required column: need stay_id or subject_id")
    ids = pd.to_numeric(table[key].str.strip(), errors="coerce")
    bad = ids.isna() | (ids != np.round(ids))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(site_map, key, f"data row {row + 1}: {table[key].iloc[row]!r} is not an integer id")
    names = table["site"].map(lambda v: slugify_site(v) if isinstance(v, str) and v.strip() else None)
    if names.isna().any():
        row = int(np.flatnonzero(names.isna().to_numpy())[0])
        raise InputError(site_map, "site", f"data row {row + 1}: empty site name")
    mapping = pd.DataFrame({"id": ids.astype(np.int64), "site": names}).drop_duplicates()
    conflict = mapping["id"].duplicated()
    if conflict.any():
        raise InputError(
            site_map, key, f"{int(mapping['id'][conflict].iloc[0])} is mapped to more than one site"
        )
    return stays[key].map(mapping.set_index("id")["site"])


# ---------------------------------------------------------------------------------------------
# Stays
# ---------------------------------------------------------------------------------------------


def build_mimic_stays(mimic_dir: Path) -> pd.DataFrame:
    """One row per ICU stay with an admission and a patient: the stays.csv columns plus
    subject_id, hadm_id and last_careunit, sorted by stay_id."""
    icu = _read_table(
        mimic_dir,
        "icustays",
        ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime"],
        dates=["intime", "outtime"],
    )
    adm_cols = [
        "hadm_id",
        "admission_type",
        "admission_location",
        "insurance",
        "marital_status",
        "race",
        LABEL,
    ]
    adm = _read_table(mimic_dir, "admissions", adm_cols, aliases={"race": "ethnicity"})
    patients = _read_table(mimic_dir, "patients", ["subject_id", "gender", "anchor_age", "anchor_year"])
    stays = icu.merge(adm, on="hadm_id", how="inner").merge(patients, on="subject_id", how="inner")
    stays = stays.dropna(
        subset=["stay_id", "hadm_id", "intime", "outtime", "anchor_age", "anchor_year", LABEL]
    )
    stays = stays[stays["outtime"] >= stays["intime"]]
    stays["age"] = stays["anchor_age"] + (stays["intime"].dt.year - stays["anchor_year"])
    for col in ("stay_id", "hadm_id", "subject_id", LABEL):
        stays[col] = stays[col].astype(np.int64)
    columns = [
        "stay_id",
        "subject_id",
        "hadm_id",
        "intime",
        "outtime",
        "age",
        "gender",
        "admission_type",
        "first_careunit",
        "last_careunit",
        "race",
        "marital_status",
        "insurance",
        "admission_location",
        LABEL,
    ]
    return stays[columns].sort_values("stay_id").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


def build_mimic_events(mimic_dir: Path, stays: pd.DataFrame) -> pd.DataFrame:
    """Events of the five types for `stays` (see the module docstring), sorted by stay and time."""
    windows = stays[["stay_id", "hadm_id", "intime", "outtime"]]
    lab_labels = _item_labels(mimic_dir, "d_labitems")
    icu_labels = _item_labels(mimic_dir, "d_items")
    parts = [
        *_hosp_events(
            mimic_dir,
            windows,
            "prescriptions",
            ["hadm_id", "starttime", "drug"],
            "starttime",
            lambda df: ("prescription", df["drug"], None),
        ),
        *_hosp_events(
            mimic_dir,
            windows,
            "labevents",
            ["hadm_id", "itemid", "charttime", "valuenum"],
            "charttime",
            lambda df: ("lab", df["itemid"].map(lab_labels), df["valuenum"]),
        ),
        _microbiology_events(mimic_dir, windows),
        *_icu_events(
            mimic_dir,
            windows,
            "procedureevents",
            ["stay_id", "starttime", "itemid"],
            lambda df: ("procedure", df["itemid"].map(icu_labels), None),
        ),
        *_icu_events(
            mimic_dir,
            windows,
            "ingredientevents",
            ["stay_id", "starttime", "itemid", "amount"],
            lambda df: ("ingredient", df["itemid"].map(icu_labels), df["amount"]),
        ),
    ]
    events = pd.concat(parts, ignore_index=True)
    events["event_text"] = events["event_text"].astype(str).str.strip()
    events = events[events["event_text"] != ""]
    return events.sort_values(
        ["stay_id", "charttime", "event_type", "event_text"], kind="stable"
    ).reset_index(drop=True)


def _event_frame(
    stay_id: pd.Series, charttime: pd.Series, spec: tuple[str, pd.Series, pd.Series | None]
) -> pd.DataFrame:
    event_type, text, value = spec
    frame = pd.DataFrame(
        {
            "stay_id": stay_id.to_numpy(np.int64),
            "charttime": charttime.to_numpy(),
            "event_type": event_type,
            "event_text": text.to_numpy(object),
            "value": np.nan if value is None else pd.to_numeric(value, errors="coerce").to_numpy(float),
        }
    )
    return frame[frame["event_text"].notna()][list(EVENT_COLUMNS)]


def _in_window(df: pd.DataFrame, time_col: str) -> pd.DataFrame:
    return df[(df[time_col] >= df["intime"]) & (df[time_col] <= df["outtime"])]


def _hosp_events(
    mimic_dir: Path, windows: pd.DataFrame, table: str, columns: list[str], time_col: str, spec: EventSpec
) -> Iterator[pd.DataFrame]:
    for chunk in _read_table_chunks(mimic_dir, table, columns, dates=[time_col]):
        chunk = chunk.dropna(subset=["hadm_id", time_col]).astype({"hadm_id": np.int64})
        chunk = _in_window(chunk.merge(windows, on="hadm_id", how="inner"), time_col)
        yield _event_frame(chunk["stay_id"], chunk[time_col], spec(chunk))


def _icu_events(
    mimic_dir: Path, windows: pd.DataFrame, table: str, columns: list[str], spec: EventSpec
) -> Iterator[pd.DataFrame]:
    for chunk in _read_table_chunks(mimic_dir, table, columns, dates=["starttime"]):
        chunk = chunk.dropna(subset=["stay_id", "starttime"]).astype({"stay_id": np.int64})
        chunk = _in_window(
            chunk.merge(windows.drop(columns="hadm_id"), on="stay_id", how="inner"), "starttime"
        )
        yield _event_frame(chunk["stay_id"], chunk["starttime"], spec(chunk))


def _microbiology_events(mimic_dir: Path, windows: pd.DataFrame) -> pd.DataFrame:
    columns = [
        "hadm_id",
        "micro_specimen_id",
        "chartdate",
        "charttime",
        "spec_type_desc",
        "test_name",
        "org_name",
    ]
    matched = []
    for chunk in _read_table_chunks(
        mimic_dir, "microbiologyevents", columns, dates=["chartdate", "charttime"]
    ):
        chunk = chunk.dropna(subset=["hadm_id"]).astype({"hadm_id": np.int64}).merge(windows, on="hadm_id")
        timed = chunk["charttime"].notna()
        dated = chunk[~timed & chunk["chartdate"].notna()]
        on_stay_days = (dated["chartdate"] >= dated["intime"].dt.normalize()) & (
            dated["chartdate"] <= dated["outtime"]
        )
        matched += [
            _in_window(chunk[timed], "charttime"),
            dated[on_stay_days].assign(charttime=lambda d: d["chartdate"]),
        ]
    # one row per antibiotic tested in MIMIC-IV: keep one event per specimen, test and organism
    micro = pd.concat(matched, ignore_index=True).drop_duplicates(
        ["stay_id", "micro_specimen_id", "test_name", "org_name"]
    )
    return _event_frame(micro["stay_id"], micro["charttime"], ("microbiology", _micro_text(micro), None))


def _micro_text(df: pd.DataFrame) -> pd.Series:
    spec = df["spec_type_desc"].fillna("").astype(str).str.strip()
    test = df["test_name"].fillna("").astype(str).str.strip()
    organism = df["org_name"].fillna("").astype(str).str.strip().replace("", "no growth")
    same = (spec.str.lower() == test.str.lower()) | (spec == "") | (test == "")
    what = spec.where(test == "", test).where(same, spec + " - " + test)
    return (what + ": " + organism).where(what != "", None)


def _item_labels(mimic_dir: Path, table: str) -> pd.Series:
    items = _read_table(mimic_dir, table, ["itemid", "label"]).dropna(subset=["itemid"])
    return items.drop_duplicates("itemid").set_index("itemid")["label"]


# ---------------------------------------------------------------------------------------------
# Reading MIMIC-IV tables
# ---------------------------------------------------------------------------------------------


def _table_path(mimic_dir: Path, table: str) -> Path:
    module = _TABLE_MODULE[table]
    for folder in (mimic_dir / module, mimic_dir):
        for name in (f"{table}.csv.gz", f"{table}.csv"):
            if (folder / name).is_file():
                return folder / name
    raise InputError(
        mimic_dir / module / f"{table}.csv.gz",
        None,
        f"missing MIMIC-IV table {module}/{table} (.csv.gz or .csv)",
    )


def _read_table(
    mimic_dir: Path,
    table: str,
    columns: list[str],
    dates: list[str] | None = None,
    aliases: dict[str, str] | None = None,
) -> pd.DataFrame:
    return pd.concat(list(_read_table_chunks(mimic_dir, table, columns, dates, aliases)), ignore_index=True)


def _read_table_chunks(
    mimic_dir: Path,
    table: str,
    columns: list[str],
    dates: list[str] | None = None,
    aliases: dict[str, str] | None = None,
) -> Iterator[pd.DataFrame]:
    """The `columns` of a MIMIC-IV table in chunks: ids and numbers as float, dates parsed.

    `aliases` names an older MIMIC-IV column accepted in place of a missing one (race <- ethnicity).
    """
    path = _table_path(mimic_dir, table)
    try:
        header = [c.strip() for c in pd.read_csv(path, nrows=0).columns]
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        gzip.BadGzipFile,
        zlib.error,
        EOFError,
        OSError,
    ) as err:
        raise InputError(path, None, f"not a readable CSV file: {type(err).__name__}: {err}") from None
    rename = {}
    for col in columns:
        if col not in header and (aliases or {}).get(col) in header:
            rename[aliases[col]] = col
        elif col not in header:
            raise InputError(path, col, f"missing column of MIMIC-IV table {table}")
    usecols = [next((old for old, new in rename.items() if new == c), c) for c in columns]
    numeric = {
        "subject_id",
        "hadm_id",
        "stay_id",
        "itemid",
        "micro_specimen_id",
        "anchor_age",
        "anchor_year",
        "valuenum",
        "amount",
        LABEL,
    }
    dtypes = {c: ("float64" if c in numeric else "string") for c in columns if c not in (dates or [])}
    try:
        reader = pd.read_csv(
            path,
            usecols=usecols,
            dtype={old: dtypes[new] for old, new in zip(usecols, columns, strict=True) if new in dtypes},
            chunksize=_CHUNK_ROWS,
        )
        for chunk in reader:
            chunk = chunk.rename(columns=rename)
            for col in dates or []:
                chunk[col] = pd.to_datetime(chunk[col], format="ISO8601", errors="coerce")
            for col in columns:
                if dtypes.get(col) == "string":
                    chunk[col] = chunk[col].astype(object).where(chunk[col].notna(), None)
            yield chunk[columns]
    except (
        pd.errors.ParserError,
        ValueError,
        UnicodeDecodeError,
        gzip.BadGzipFile,
        zlib.error,
        EOFError,
        OSError,
    ) as err:
        raise InputError(
            path, None, f"cannot read MIMIC-IV table {table}: {type(err).__name__}: {err}"
        ) from None
