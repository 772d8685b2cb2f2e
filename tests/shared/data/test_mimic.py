"""MIMIC-IV -> ICU-event sites: exact conversion of a hand-written fixture, and the real demo."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.data.events import load_event_site
from shared.data.mimic import convert_mimic_iv, slugify_site
from shared.errors import InputError

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "mimic_iv_mini"
REPO_ROOT = Path(__file__).resolve().parents[3]


def _mimic_demo_dir() -> Path | None:
    """The shared MIMIC-IV demo: beside the repository (main checkout) or beside the worktrees."""
    candidates = [Path(os.environ["FEDCARE_MIMIC_DEMO"])] if "FEDCARE_MIMIC_DEMO" in os.environ else []
    candidates += [REPO_ROOT / ".." / "shared" / "data" / "mimic-iv-demo",
                   REPO_ROOT / ".." / ".." / "shared" / "data" / "mimic-iv-demo"]  # fmt: skip
    return next((p.resolve() for p in candidates if (p / "icu" / "icustays.csv.gz").is_file()), None)


MICU, CCU, CVICU = (
    "medical_intensive_care_unit_micu",
    "coronary_care_unit_ccu",
    "cardiac_vascular_intensive_care_unit_cvicu",
)
T = pd.Timestamp
BLOOD_CULTURE = "BLOOD CULTURE - Blood Culture, Routine"
EXPECTED_EVENTS = [  # (stay_id, charttime, event_type, event_text, value)
    (30000001, T("2150-05-01 13:00"), "prescription", "Heparin", np.nan),
    (30000001, T("2150-05-01 14:00"), "microbiology", "MRSA SCREEN: no growth", np.nan),
    (30000001, T("2150-05-01 15:00"), "procedure", "Invasive Ventilation", np.nan),
    (30000001, T("2150-05-02 06:00"), "lab", "Lactate", 4.2),
    (30000001, T("2150-05-02 06:00"), "lab", "Sodium", 139.0),
    (30000001, T("2150-05-03 11:00"), "prescription", "Norepinephrine", np.nan),
    (30000002, T("2162-03-01 09:00"), "prescription", "Vancomycin", np.nan),
    (30000002, T("2162-03-01 10:00"), "lab", "Lactate", 6.5),
    (30000002, T("2162-03-01 11:00"), "microbiology", f"{BLOOD_CULTURE}: ESCHERICHIA COLI", np.nan),
    (30000003, T("2162-03-03 14:00"), "ingredient", "Water", 100.0),
    (30000003, T("2162-03-04 00:00"), "microbiology", "URINE - URINE CULTURE: no growth", np.nan),  # by date
    (30000003, T("2162-03-04 08:00"), "lab", "INR(PT)", 1.8),
    (30000003, T("2162-03-04 09:00"), "lab", "Sodium", np.nan),  # valuenum empty ("___")
    (30000003, T("2162-03-04 10:00"), "prescription", "Vasopressin", np.nan),
    (30000004, T("2171-09-09 10:00"), "prescription", "Propofol", np.nan),
    (30000004, T("2171-09-09 12:00"), "procedure", "Chest X-Ray", np.nan),
    (30000004, T("2171-09-09 13:00"), "ingredient", "Calories", 250.0),
]  # fmt: skip


def _copy_fixture(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "mimic"))


def test_convert_fixture_exactly(tmp_path: Path):
    counts = convert_mimic_iv(FIXTURE, tmp_path / "out")
    assert counts == {CVICU: 1, CCU: 1, MICU: 2}
    assert list(counts) == sorted(counts)
    assert "MIMIC-IV" in (tmp_path / "out" / "README.txt").read_text()
    assert sorted(p.name for p in (tmp_path / "out" / MICU).iterdir()) == ["events.csv.gz", "stays.csv.gz"]
    sites = {name: load_event_site(tmp_path / "out" / name) for name in counts}
    assert all(site.dropped == dict.fromkeys(site.dropped, 0) for site in sites.values())

    stays = pd.concat([site.stays for site in sites.values()]).sort_index()
    assert stays.index.tolist() == [30000001, 30000002, 30000003, 30000004]
    assert stays["subject_id"].tolist() == [10000001, 10000002, 10000002, 10000003]
    assert stays["age"].tolist() == [60.0, 47.0, 47.0, 81.0]  # anchor_age + (intime year - anchor_year)
    assert stays["gender"].tolist() == ["F", "M", "M", "M"]
    assert stays["hospital_expire_flag"].tolist() == [0, 1, 1, 0]
    assert stays["admission_type"].tolist() == ["EW EMER.", "URGENT", "URGENT", "EW EMER."]
    assert stays["first_careunit"].tolist() == [
        "Medical Intensive Care Unit (MICU)",
        "Medical Intensive Care Unit (MICU)",
        "Coronary Care Unit (CCU)",
        "Cardiac Vascular Intensive Care Unit (CVICU)",
    ]
    assert stays["race"].tolist() == ["WHITE", "BLACK/AFRICAN AMERICAN", "BLACK/AFRICAN AMERICAN", "WHITE"]
    assert stays["marital_status"].tolist() == ["MARRIED", "unknown", "unknown", "WIDOWED"]
    assert stays["insurance"].tolist() == ["Medicare", "Private", "Private", "Medicare"]
    assert stays["admission_location"].tolist()[:2] == ["EMERGENCY ROOM", "TRANSFER FROM HOSPITAL"]
    assert stays.loc[30000003, "intime"] == T("2162-03-03 12:00")
    assert stays["los_hours"].tolist() == [48.0, 24.0, 42.0, 24.0]

    events = pd.concat([site.events for site in sites.values()]).sort_values(
        ["stay_id", "charttime"], kind="stable"
    )
    got = list(events.itertuples(index=False, name=None))
    assert len(got) == len(EXPECTED_EVENTS) == 17
    for row, expected in zip(got, EXPECTED_EVENTS, strict=True):
        assert row[:4] == expected[:4]
        np.testing.assert_equal(row[4], expected[4])
    # each site holds only its own stays' events
    assert set(sites[MICU].events["stay_id"]) == {30000001, 30000002}


def test_min_stays_and_other_site_columns(tmp_path: Path):
    assert convert_mimic_iv(FIXTURE, tmp_path / "a", min_stays=2) == {MICU: 2}
    assert not (tmp_path / "a" / CCU).exists()
    micu = load_event_site(tmp_path / "a" / MICU)
    assert micu.dropped == dict.fromkeys(micu.dropped, 0)
    assert len(micu.events) == 9 and set(micu.events["stay_id"]) == {30000001, 30000002}
    assert convert_mimic_iv(FIXTURE, tmp_path / "b", site_by="admission_type") == {"ew_emer": 2, "urgent": 2}
    assert convert_mimic_iv(FIXTURE, tmp_path / "c", site_by="marital_status") == {
        "married": 1,
        "unknown": 2,
        "widowed": 1,
    }
    with pytest.raises(InputError, match="site_by"):
        convert_mimic_iv(FIXTURE, tmp_path / "d", site_by="los")
    with pytest.raises(InputError, match="min_stays"):
        convert_mimic_iv(FIXTURE, tmp_path / "e", min_stays=0)


def test_site_map_by_subject_or_stay(tmp_path: Path):
    by_subject = tmp_path / "by_subject.csv"
    by_subject.write_text("subject_id,site\n10000001,North Hospital\n10000002,south\n")
    counts = convert_mimic_iv(FIXTURE, tmp_path / "a", site_map=by_subject)
    assert counts == {"north_hospital": 1, "south": 2}  # subject 10000003 is not listed: left out
    assert load_event_site(tmp_path / "a" / "south").stays.index.tolist() == [30000002, 30000003]

    by_stay = tmp_path / "by_stay.csv"
    by_stay.write_text("stay_id,site\n30000001,east\n30000002,east\n30000003,west\n30000004,west\n")
    assert convert_mimic_iv(FIXTURE, tmp_path / "b", site_map=by_stay, min_stays=2) == {"east": 2, "west": 2}


@pytest.mark.parametrize(
    ("content", "field", "fragment"),
    [
        ("subject_id,hospital\n10000001,a\n", "site", "missing required column"),
        ("patient,site\n10000001,a\n", "stay_id", "stay_id or subject_id"),
        ("subject_id,site\n10000001,a\nabc,b\n", "subject_id", "data row 2"),
        ("subject_id,site\n10000001,a\n10000001,b\n", "subject_id", "more than one site"),
        ("subject_id,site\n10000001,\n", "site", "empty site name"),
    ],
)
def test_bad_site_map(tmp_path: Path, content: str, field: str, fragment: str):
    site_map = tmp_path / "sites.csv"
    site_map.write_text(content)
    with pytest.raises(InputError) as info:
        convert_mimic_iv(FIXTURE, tmp_path / "out", site_map=site_map)
    assert info.value.field == field and "sites.csv" in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize(
    "table",
    [
        "hosp/admissions.csv",
        "hosp/patients.csv",
        "hosp/prescriptions.csv",
        "hosp/labevents.csv",
        "hosp/d_labitems.csv",
        "hosp/microbiologyevents.csv",
        "icu/icustays.csv",
        "icu/procedureevents.csv",
        "icu/ingredientevents.csv",
        "icu/d_items.csv.gz",
    ],
)
def test_missing_table_is_named(tmp_path: Path, table: str):
    mimic = _copy_fixture(tmp_path)
    (mimic / table).unlink()
    name = table.split(".")[0]
    with pytest.raises(InputError, match=f"missing MIMIC-IV table {name}"):
        convert_mimic_iv(mimic, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_missing_column_and_older_column_names(tmp_path: Path):
    mimic = _copy_fixture(tmp_path)
    path = mimic / "hosp" / "prescriptions.csv"
    pd.read_csv(path).drop(columns=["drug"]).to_csv(path, index=False)
    with pytest.raises(InputError) as info:
        convert_mimic_iv(mimic, tmp_path / "out")
    assert info.value.field == "drug" and "prescriptions.csv" in str(info.value)

    mimic = _copy_fixture(tmp_path / "v1")
    path = mimic / "hosp" / "admissions.csv"
    pd.read_csv(path).rename(columns={"race": "ethnicity"}).to_csv(path, index=False)
    counts = convert_mimic_iv(mimic, tmp_path / "out_v1")
    races = load_event_site(tmp_path / "out_v1" / MICU).stays["race"].tolist()
    assert counts[MICU] == 2 and races == ["WHITE", "BLACK/AFRICAN AMERICAN"]


def test_empty_event_table(tmp_path: Path):
    mimic = _copy_fixture(tmp_path)
    path = mimic / "icu" / "ingredientevents.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert convert_mimic_iv(mimic, tmp_path / "out") == {CVICU: 1, CCU: 1, MICU: 2}
    events = load_event_site(tmp_path / "out" / CVICU).events
    assert events["event_text"].tolist() == ["Propofol", "Chest X-Ray"]


def test_slugify_site():
    assert slugify_site("Medical/Surgical Intensive Care Unit (MICU/SICU)") == (
        "medical_surgical_intensive_care_unit_micu_sicu"
    )
    assert slugify_site("EW EMER.") == "ew_emer"
    assert slugify_site(float("nan")) == "unknown" and slugify_site("***") == "unknown"


def test_real_mimic_iv_demo(tmp_path: Path):
    demo = _mimic_demo_dir()
    if demo is None:
        pytest.skip("MIMIC-IV demo not found beside the repository (../shared/data/mimic-iv-demo)")
    counts = convert_mimic_iv(demo, tmp_path / "demo")
    assert sum(counts.values()) == 140
    assert counts["medical_intensive_care_unit_micu"] == 29 and counts["coronary_care_unit_ccu"] == 13

    icustays = pd.read_csv(demo / "icu" / "icustays.csv.gz")
    admissions = pd.read_csv(demo / "hosp" / "admissions.csv.gz")
    expected_label = icustays.merge(admissions, on="hadm_id").set_index("stay_id")["hospital_expire_flag"]
    sites = [load_event_site(tmp_path / "demo" / name) for name in counts]
    assert [len(site.stays) for site in sites] == list(counts.values())
    stays = pd.concat([site.stays for site in sites])
    events = pd.concat([site.events for site in sites])
    pd.testing.assert_series_equal(
        stays["hospital_expire_flag"].sort_index(), expected_label.sort_index(), check_names=False
    )
    assert stays["hospital_expire_flag"].sum() == 20  # 15 deaths in admissions; some had two ICU stays
    assert all(site.dropped == dict.fromkeys(site.dropped, 0) for site in sites)
    assert set(events["event_type"]) == {"prescription", "procedure", "lab", "microbiology", "ingredient"}
    assert events.groupby("stay_id").size().min() > 0 and len(events) > 50_000
    window = events.join(stays[["intime", "outtime"]], on="stay_id")
    timed = window["event_type"] != "microbiology"
    assert (window["charttime"][timed] >= window["intime"][timed]).all()
    assert (window["charttime"] <= window["outtime"]).all()
    assert stays["age"].between(18, 100).all()
