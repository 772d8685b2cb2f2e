"""ICU-event sites: synthetic round trip, determinism, planted signal strength, strict validation."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from shared.data.event_schema import (
    EMERGENCY_ADMISSION_TYPES,
    EVENT_REQUIRED_COLUMNS,
    EVENT_TYPES,
    STATIC_CATEGORICAL,
    STAY_REQUIRED_COLUMNS,
)
from shared.data.events import DROP_REASONS, EVENT_COLUMNS, STAY_COLUMNS, EventSiteData, load_event_site
from shared.data.synth.events import synthesize_event_sites
from shared.data.writers import write_event_site
from shared.errors import InputError

# --------------------------------------------------------------------------------------------
# Synthetic sites
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    synthesize_event_sites(root, seed=0)
    return root


@pytest.fixture(scope="module")
def synthetic_sites(synthetic_root: Path) -> list[EventSiteData]:
    return [load_event_site(synthetic_root / name) for name in ("hospital_a", "hospital_b", "hospital_c")]


def test_synthetic_sites_round_trip_sizes_columns_and_types(synthetic_root: Path, synthetic_sites):
    assert sorted(p.name for p in synthetic_root.iterdir() if p.is_dir()) == [
        "hospital_a",
        "hospital_b",
        "hospital_c",
    ]
    assert "SYNTHETIC" in (synthetic_root / "README.txt").read_text()
    assert [len(s.stays) for s in synthetic_sites] == [400, 250, 120]
    all_ids = np.concatenate([s.stays.index.to_numpy() for s in synthetic_sites])
    assert len(set(all_ids)) == 770  # unique across sites, so pooled analyses can join on stay_id
    for s in synthetic_sites:
        assert s.dropped == dict.fromkeys(DROP_REASONS, 0)
        assert list(s.stays.columns) == list(STAY_COLUMNS)
        assert s.stays.index.name == "stay_id" and s.stays.index.is_monotonic_increasing
        assert s.stays.index.dtype == np.int64 and s.stays["subject_id"].dtype == np.int64
        assert s.stays["intime"].dtype == "datetime64[ns]" and s.stays["outtime"].dtype == "datetime64[ns]"
        assert s.stays["hospital_expire_flag"].dtype == np.int64
        assert set(s.stays["hospital_expire_flag"]) == {0, 1}
        assert s.stays["age"].between(18, 91).all()
        expected_los = (s.stays["outtime"] - s.stays["intime"]).dt.total_seconds() / 3600
        np.testing.assert_allclose(s.stays["los_hours"], expected_los)
        assert (s.stays["los_hours"] >= 7.9).all()
        assert set(s.stays["gender"]) == {"M", "F"}
        for col in ("admission_type", "first_careunit", "insurance", "admission_location"):
            assert set(s.stays[col]) <= set(STATIC_CATEGORICAL[col]), col

        ev = s.events
        assert list(ev.columns) == list(EVENT_COLUMNS)
        assert ev["charttime"].dtype == "datetime64[ns]" and ev["stay_id"].dtype == np.int64
        assert set(ev["event_type"]) == set(EVENT_TYPES)
        assert ev.index.equals(pd.RangeIndex(len(ev)))
        assert ev.sort_values(["stay_id", "charttime"], kind="stable").index.equals(ev.index)
        counts = ev.groupby("stay_id").size().reindex(s.stays.index, fill_value=0)
        assert counts.between(20, 200).all()
        valued = ev["event_type"].isin(["lab", "ingredient"])
        assert ev.loc[valued, "value"].notna().all() and ev.loc[~valued, "value"].isna().all()
        assert (ev["event_text"].str.len() > 0).all()

    a, _, c = synthetic_sites
    # hospital_c does not record marital status: the optional column is missing and filled in
    assert set(c.stays["marital_status"]) == {"unknown"}
    assert {"MARRIED", "SINGLE", "unknown"} <= set(a.stays["marital_status"])


def test_synthetic_sites_differ_like_real_hospitals(synthetic_sites):
    a, _, c = synthetic_sites
    prevalence = [s.stays["hospital_expire_flag"].mean() for s in synthetic_sites]
    assert prevalence[0] < prevalence[1] < prevalence[2]
    assert 0.06 <= prevalence[0] <= 0.14 and 0.22 <= prevalence[2] <= 0.36
    ages = [s.stays["age"].mean() for s in synthetic_sites]
    assert ages[2] - ages[0] > 5
    emergency = [s.stays["admission_type"].isin(EMERGENCY_ADMISSION_TYPES).mean() for s in synthetic_sites]
    assert emergency[2] - emergency[0] > 0.2
    cvicu = "Cardiac Vascular Intensive Care Unit (CVICU)"
    assert (a.stays["first_careunit"] == cvicu).mean() > 0.15 and (
        c.stays["first_careunit"] == cvicu
    ).sum() == 0
    per_stay = [len(s.events) / len(s.stays) for s in synthetic_sites]
    assert per_stay[1] < per_stay[0] < per_stay[2]
    vocab = [set(s.events["event_text"]) for s in synthetic_sites]
    assert "Lasix" in vocab[1] and "Lasix" not in vocab[0] | vocab[2]
    assert "Furosemide" in vocab[0] and "Furosemide" not in vocab[1]
    assert "NORepinephrine" in vocab[1] and "Norepinephrine" in vocab[0]


def _planted_features(site: EventSiteData) -> pd.DataFrame:
    """Simple features a clinician would write down: planted signals overall and in the last 24 h."""
    ev = site.events.join(site.stays[["outtime"]], on="stay_id")
    recent = ev["outtime"] - ev["charttime"] <= pd.Timedelta(hours=24)
    text = ev["event_text"]
    signals = {
        "vasopressor": text.str.contains("norepinephrine|vasopressin", case=False),
        "ventilation": text.eq("Invasive Ventilation"),
        "lactate_high": text.eq("Lactate") & (ev["value"] > 4),
        "blood_culture_positive": text.str.startswith("BLOOD CULTURE")
        & ~text.str.contains("no growth|COAGULASE NEGATIVE"),
    }
    feats = pd.DataFrame(index=site.stays.index)
    for name, hit in signals.items():
        feats[f"{name}_any"] = hit.groupby(ev["stay_id"]).any().reindex(feats.index, fill_value=False)
        feats[f"{name}_24h"] = (
            (hit & recent).groupby(ev["stay_id"]).any().reindex(feats.index, fill_value=False)
        )
    feats["age"] = site.stays["age"] / 10
    feats["emergency"] = site.stays["admission_type"].isin(EMERGENCY_ADMISSION_TYPES)
    return feats.astype(float)


def test_planted_signals_give_a_realistic_not_flattering_auroc(synthetic_root: Path, synthetic_sites):
    features = pd.concat([_planted_features(s) for s in synthetic_sites])
    labels = pd.concat([s.stays["hospital_expire_flag"] for s in synthetic_sites]).to_numpy()
    scores = cross_val_predict(
        LogisticRegression(max_iter=2000), features.to_numpy(), labels, cv=5, method="predict_proba"
    )[:, 1]
    model_auroc = roc_auc_score(labels, scores)
    truth = pd.read_csv(synthetic_root / "synthetic_truth.csv").set_index("stay_id")
    assert set(truth["site"]) == {"hospital_a", "hospital_b", "hospital_c"}
    oracle_auroc = roc_auc_score(labels, truth["true_logit"].reindex(features.index))
    assert 0.72 <= model_auroc <= 0.93
    assert 0.82 <= oracle_auroc <= 0.95
    assert model_auroc < oracle_auroc
    # each planted signal matters on its own: recent ones raise mortality
    for name in ("vasopressor_24h", "ventilation_24h", "lactate_high_24h", "blood_culture_positive_any"):
        hit = features[name].to_numpy() > 0
        assert labels[hit].mean() > 2 * labels[~hit].mean(), name


def test_synthesis_is_deterministic_for_a_seed(tmp_path: Path):
    first = synthesize_event_sites(tmp_path / "one", sizes=[30, 20, 10], seed=7)
    second = synthesize_event_sites(tmp_path / "two", sizes=[30, 20, 10], seed=7)
    other = synthesize_event_sites(tmp_path / "three", sizes=[30, 20, 10], seed=8)
    alone = synthesize_event_sites(tmp_path / "alone", n_sites=1, sizes=[30], seed=7)
    for a, b in zip(first, second, strict=True):
        for name in ("stays.csv", "events.csv"):
            assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (first[0] / "events.csv").read_bytes() != (other[0] / "events.csv").read_bytes()
    # a site's data do not depend on how many sites were written
    assert (alone[0] / "events.csv").read_bytes() == (first[0] / "events.csv").read_bytes()


def test_more_sites_keep_shrinking_and_bad_arguments_are_rejected(tmp_path: Path):
    dirs = synthesize_event_sites(tmp_path, n_sites=5, sizes=None, seed=1)
    assert [d.name for d in dirs] == [f"hospital_{x}" for x in "abcde"]
    assert [len(load_event_site(d).stays) for d in dirs[3:]] == [90, 68]
    with pytest.raises(InputError, match="sizes"):
        synthesize_event_sites(tmp_path / "x", n_sites=2, sizes=[10])
    with pytest.raises(InputError, match="n_sites"):
        synthesize_event_sites(tmp_path / "y", n_sites=0)


# --------------------------------------------------------------------------------------------
# Loading hand-written sites
# --------------------------------------------------------------------------------------------

STAYS_HEADER = "stay_id,intime,outtime,age,gender,admission_type,first_careunit,hospital_expire_flag"
GOOD_STAYS = [
    "1,2150-01-01 10:00:00,2150-01-03 10:00:00,70,M,EW EMER.,Coronary Care Unit (CCU),1",
    "2,2150-02-01T08:00,2150-02-01 20:30:00,45.5,F,ELECTIVE,Trauma SICU (TSICU),0",
    "3,2150-03-01 00:00:00,2150-03-02 00:00:00,88,F,URGENT,Neuro Stepdown,0",
]
EVENTS_HEADER = "stay_id,charttime,event_type,event_text,value"
GOOD_EVENTS = [
    "1,2150-01-02 09:00:00,lab,Lactate,5.1",
    "1,2150-01-01 11:00:00,prescription,Norepinephrine,",
    "2,2150-02-01 09:00:00,Procedure ,Arterial Line,",
    "1,2150-01-01 11:00:00,ingredient,Water,100",
]


def _write_site(
    site_dir: Path,
    stays: list[str] | None = None,
    events: list[str] | None = None,
    stays_header: str = STAYS_HEADER,
    events_header: str = EVENTS_HEADER,
) -> Path:
    site_dir.mkdir(parents=True, exist_ok=True)
    rows = GOOD_STAYS if stays is None else stays
    (site_dir / "stays.csv").write_text("\n".join([stays_header, *rows]) + "\n")
    rows = GOOD_EVENTS if events is None else events
    (site_dir / "events.csv").write_text("\n".join([events_header, *rows]) + "\n")
    return site_dir


def test_load_hand_written_site(tmp_path: Path):
    site = load_event_site(_write_site(tmp_path / "north"))
    assert site.site == "north"
    assert load_event_site(tmp_path / "north", site="renamed").site == "renamed"
    assert site.stays.index.tolist() == [1, 2, 3]
    assert site.stays.loc[1, "los_hours"] == 48.0 and site.stays.loc[2, "los_hours"] == 12.5
    assert site.stays.loc[2, "intime"] == pd.Timestamp("2150-02-01 08:00")
    assert site.stays["subject_id"].tolist() == [1, 2, 3]  # defaults to stay_id
    for col in ("race", "marital_status", "insurance", "admission_location"):
        assert (site.stays[col] == "unknown").all()
    assert site.stays["hospital_expire_flag"].tolist() == [1, 0, 0]
    # sorted by stay then time; file order kept within ties; event types normalised
    assert site.events["event_text"].tolist() == ["Norepinephrine", "Water", "Lactate", "Arterial Line"]
    assert site.events["event_type"].tolist() == ["prescription", "ingredient", "lab", "procedure"]
    np.testing.assert_array_equal(site.events["value"].to_numpy(), [np.nan, 100.0, 5.1, np.nan])
    assert site.dropped == {"events_unknown_stay": 0, "events_empty_text": 0, "events_outside_stay": 0}
    assert 3 not in set(site.events["stay_id"])  # a stay without events is kept


def test_optional_columns_subject_id_gzip_and_literal_na_text(tmp_path: Path):
    site_dir = tmp_path / "south"
    header = STAYS_HEADER + ",subject_id,race,marital_status,insurance,admission_location"
    stays = [
        GOOD_STAYS[0] + ",77,WHITE,MARRIED,Medicare,EMERGENCY ROOM",
        GOOD_STAYS[1] + ",77,,SINGLE,Private,",
    ]
    _write_site(site_dir, stays=stays, events=["1,2150-01-02 09:00:00,lab,NA,1.5"], stays_header=header)
    for name in ("stays.csv", "events.csv"):
        raw = (site_dir / name).read_bytes()
        (site_dir / name).unlink()
        (site_dir / f"{name}.gz").write_bytes(gzip.compress(raw))
    site = load_event_site(site_dir)
    assert site.stays["subject_id"].tolist() == [77, 77]
    assert site.stays["race"].tolist() == ["WHITE", "unknown"]
    assert site.stays["admission_location"].tolist() == ["EMERGENCY ROOM", "unknown"]
    assert site.events["event_text"].tolist() == ["NA"]  # only an empty field is missing


def test_utc_offsets_are_converted_and_must_not_be_mixed(tmp_path: Path):
    stays = [
        "1,2150-01-01T10:00:00+02:00,2150-01-03T10:00Z,70,M,EW EMER.,Coronary Care Unit (CCU),1",
        "2,2150-02-01 08:00:00-05:00,2150-02-01T20:30:00+0000,45,F,ELECTIVE,Trauma SICU (TSICU),0",
    ]
    site = load_event_site(_write_site(tmp_path / "utc", stays=stays, events=[]))
    assert site.stays["intime"].tolist() == [
        pd.Timestamp("2150-01-01 08:00"),
        pd.Timestamp("2150-02-01 13:00"),
    ]
    assert site.stays["los_hours"].tolist() == [50.0, 7.5]
    dates_only = ["1,2150-01-01,2150-01-03,70,M,EW EMER.,Coronary Care Unit (CCU),1"]
    site = load_event_site(_write_site(tmp_path / "dates", stays=dates_only, events=[]))
    assert site.stays["intime"].tolist() == [pd.Timestamp("2150-01-01")]
    mixed = [stays[0], "2,2150-02-01 08:00:00,2150-02-01T20:30:00Z,45,F,ELECTIVE,Trauma SICU (TSICU),0"]
    _assert_input_error(
        _write_site(tmp_path / "mixed", stays=mixed), "stays.csv", "intime", "data row 2", "UTC"
    )


def test_counted_drops_and_window_edges(tmp_path: Path):
    events = [
        "1,2150-01-02 09:00:00,lab,Lactate,5.1",  # kept
        "9,2150-01-02 09:00:00,lab,Lactate,5.1",  # unknown stay
        "1,2150-01-02 09:00:00,lab,,5.1",  # empty text
        '1,2150-01-02 09:00:00,lab,"   ",5.1',  # blank text
        "1,2149-12-31 10:00:00,lab,Sodium,140",  # exactly intime - 24 h: kept
        "1,2149-12-31 09:59:00,lab,Sodium,140",  # before the window
        "1,2150-01-03 11:00:00,lab,Sodium,140",  # exactly outtime + 1 h: kept
        "1,2150-01-03 11:01:00,lab,Sodium,140",  # after the window
        "9,2100-01-01 00:00:00,lab,,",  # unknown stay counts first
    ]
    site = load_event_site(_write_site(tmp_path / "s", events=events))
    assert site.dropped == {"events_unknown_stay": 2, "events_empty_text": 2, "events_outside_stay": 2}
    assert len(site.events) == 3
    assert site.events["charttime"].tolist() == [
        pd.Timestamp("2149-12-31 10:00"),
        pd.Timestamp("2150-01-02 09:00"),
        pd.Timestamp("2150-01-03 11:00"),
    ]
    assert len(site.stays) == 3


def test_write_event_site_round_trip_and_compression_switch(tmp_path: Path):
    site = load_event_site(_write_site(tmp_path / "src"))
    out = write_event_site(tmp_path / "copy", site.stays, site.events)
    again = load_event_site(out)
    pd.testing.assert_frame_equal(again.stays, site.stays)
    pd.testing.assert_frame_equal(again.events, site.events)
    write_event_site(out, site.stays, site.events, compress=True)
    assert sorted(p.name for p in out.iterdir()) == ["events.csv.gz", "stays.csv.gz"]
    pd.testing.assert_frame_equal(load_event_site(out).events, site.events)


# --------------------------------------------------------------------------------------------
# Every rejected input names its file and column
# --------------------------------------------------------------------------------------------


def _assert_input_error(site_dir: Path, file_name: str, column: str | None, *fragments: str) -> InputError:
    with pytest.raises(InputError) as info:
        load_event_site(site_dir)
    message = str(info.value)
    assert "\n" not in message
    assert file_name in message, message
    if column is not None:
        assert info.value.field == column and column in message, message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_missing_files(tmp_path: Path):
    site_dir = _write_site(tmp_path / "s")
    (site_dir / "events.csv").unlink()
    _assert_input_error(site_dir, "events.csv", None, "missing file")
    (site_dir / "stays.csv").unlink()
    _assert_input_error(site_dir, "stays.csv", None, "missing file")
    _assert_input_error(tmp_path / "nowhere", "nowhere", None, "does not exist")


@pytest.mark.parametrize("column", STAY_REQUIRED_COLUMNS)
def test_missing_required_stay_column(tmp_path: Path, column: str):
    table = pd.DataFrame([r.split(",") for r in GOOD_STAYS], columns=STAYS_HEADER.split(","))
    site_dir = _write_site(tmp_path / "s")
    table.drop(columns=[column]).to_csv(site_dir / "stays.csv", index=False)
    _assert_input_error(site_dir, "stays.csv", column, "missing required column")


@pytest.mark.parametrize("column", EVENT_REQUIRED_COLUMNS)
def test_missing_required_event_column(tmp_path: Path, column: str):
    table = pd.DataFrame([r.split(",") for r in GOOD_EVENTS], columns=EVENTS_HEADER.split(","))
    site_dir = _write_site(tmp_path / "s")
    table.drop(columns=[column]).to_csv(site_dir / "events.csv", index=False)
    _assert_input_error(site_dir, "events.csv", column, "missing required column")


@pytest.mark.parametrize(
    ("stays", "column", "fragments"),
    [
        (
            [GOOD_STAYS[0], "2,2150-13-01 08:00:00,2150-02-01 20:30:00,45,F,ELECTIVE,Neuro Stepdown,0"],
            "intime",
            ("data row 2", "'2150-13-01 08:00:00'", "ISO-8601"),
        ),
        (
            [GOOD_STAYS[0], GOOD_STAYS[1], "3,2150-03-01 00:00:00,,88,F,URGENT,Neuro Stepdown,0"],
            "outtime",
            ("data row 3", "empty field"),
        ),
        (
            [GOOD_STAYS[0], "2,2150-02-01 08:00:00,2150-02-01 20:30:00,forty,F,ELECTIVE,Neuro Stepdown,0"],
            "age",
            ("data row 2", "'forty'", "not a finite number"),
        ),
        (
            ["1,2150-01-01 10:00:00,2150-01-03 10:00:00,,M,EW EMER.,Coronary Care Unit (CCU),1"],
            "age",
            ("data row 1", "empty field"),
        ),
        (
            ["1,2150-01-01 10:00:00,2150-01-03 10:00:00,130,M,EW EMER.,Coronary Care Unit (CCU),1"],
            "age",
            ("outside 0-120",),
        ),
        (
            [GOOD_STAYS[0], "2,2150-02-01 08:00:00,2150-02-01 20:30:00,45,F,ELECTIVE,Neuro Stepdown,2"],
            "hospital_expire_flag",
            ("data row 2", "not a 0/1 label"),
        ),
        (
            [GOOD_STAYS[0], "2,2150-02-01 08:00:00,2150-02-01 20:30:00,45,F,ELECTIVE,Neuro Stepdown,"],
            "hospital_expire_flag",
            ("data row 2", "empty field"),
        ),
        (
            [GOOD_STAYS[0], "2,2150-02-01 08:00:00,2150-02-01 20:30:00,45,F,ELECTIVE,Neuro Stepdown,yes"],
            "hospital_expire_flag",
            ("'yes'",),
        ),
        ([GOOD_STAYS[0], GOOD_STAYS[1], GOOD_STAYS[0]], "stay_id", ("data row 3", "duplicate")),
        (
            ["1.5,2150-01-01 10:00:00,2150-01-03 10:00:00,70,M,EW EMER.,Coronary Care Unit (CCU),1"],
            "stay_id",
            ("not an integer",),
        ),
        (
            [GOOD_STAYS[0], "2,2150-02-02 08:00:00,2150-02-01 20:30:00,45,F,ELECTIVE,Neuro Stepdown,0"],
            "outtime",
            ("data row 2", "before the stay's intime"),
        ),
    ],
)
def test_bad_stay_values(tmp_path: Path, stays: list[str], column: str, fragments: tuple[str, ...]):
    _assert_input_error(_write_site(tmp_path / "s", stays=stays), "stays.csv", column, *fragments)


@pytest.mark.parametrize(
    ("events", "column", "fragments"),
    [
        (
            ["1,2150-01-02 09:00:00,lab,Lactate,5.1", "1,yesterday,lab,Lactate,5.1"],
            "charttime",
            ("data row 2",),
        ),
        (["1,2150-01-02 09:00:00,vital sign,Heart Rate,80"], "event_type", ("'vital sign'", "prescription")),
        (["1,2150-01-02 09:00:00,,Heart Rate,80"], "event_type", ("empty field",)),
        (["1,2150-01-02 09:00:00,lab,Lactate,high"], "value", ("'high'", "not a finite number")),
        (["x,2150-01-02 09:00:00,lab,Lactate,1"], "stay_id", ("'x'",)),
    ],
)
def test_bad_event_values(tmp_path: Path, events: list[str], column: str, fragments: tuple[str, ...]):
    _assert_input_error(_write_site(tmp_path / "s", events=events), "events.csv", column, *fragments)


def test_empty_site(tmp_path: Path):
    _assert_input_error(_write_site(tmp_path / "s", stays=[]), "stays.csv", None, "no stays")


def test_corrupt_files(tmp_path: Path):
    site_dir = _write_site(tmp_path / "bad_gzip")
    (site_dir / "stays.csv").unlink()
    (site_dir / "stays.csv.gz").write_bytes(b"this is not gzip data at all")
    _assert_input_error(site_dir, "stays.csv.gz", None, "not a readable CSV")

    site_dir = _write_site(tmp_path / "truncated_gzip")
    (site_dir / "events.csv").unlink()
    (site_dir / "events.csv.gz").write_bytes(gzip.compress(b"stay_id,charttime\n1,2150-01-01\n" * 50)[:40])
    _assert_input_error(site_dir, "events.csv.gz", None, "not a readable CSV")

    for name, rows in {
        "ragged_first": ["1,2150-01-02 09:00:00,lab,Lactate,5.1,extra,fields"],
        "ragged_later": [
            "1,2150-01-02 09:00:00,lab,Lactate,5.1",
            "1,2150-01-02 09:00:00,lab,Lactate,5.1,extra",
        ],
    }.items():
        site_dir = _write_site(tmp_path / name, events=rows)
        _assert_input_error(site_dir, "events.csv", None, "not a readable CSV")

    site_dir = _write_site(tmp_path / "empty")
    (site_dir / "stays.csv").write_text("")
    _assert_input_error(site_dir, "stays.csv", None, "empty")

    site_dir = _write_site(tmp_path / "both")
    (site_dir / "stays.csv.gz").write_bytes(gzip.compress((site_dir / "stays.csv").read_bytes()))
    _assert_input_error(site_dir, "stays.csv", None, "keep one")
