import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.data.synth.visits import synthesize_visit_sites
from shared.data.visits import FEATURES, LAB_FEATURES, VISIT_COLUMNS, load_visit_site, visits_from_records
from shared.errors import InputError
from shared.metrics import auroc

HEADER = ",".join(VISIT_COLUMNS)
LABS = "1.0,15,90,4.1,139,24,13,1.0"  # one plausible value per lab, in FEATURES order


def _site(tmp_path: Path, visits: list[str], labels: list[str] | None, header: str = HEADER) -> Path:
    site = tmp_path / "hospital_x"
    site.mkdir(exist_ok=True)
    (site / "visits.csv").write_text("\n".join([header, *visits]) + "\n")
    if labels is not None:
        (site / "labels.csv").write_text("\n".join(["patient_id,aki", *labels]) + "\n")
    return site


def _good_visits() -> list[str]:
    return [
        f"p2,v3,2150-01-05 10:00,{LABS}",
        f"p1,v2,2150-01-02T08:30,{LABS}",
        " p1 ,v1,2150-01-01,0.9,,80,4.0,140,25,12,",  # padded id, missing bun and urine output
    ]


def _error(tmp_path: Path, visits: list[str], labels: list[str] | None, **kw: object) -> InputError:
    site = _site(tmp_path, visits, labels, **kw)  # type: ignore[arg-type]
    with pytest.raises(InputError) as info:
        load_visit_site(site)
    assert "\n" not in str(info.value)
    return info.value


# ---------------------------------------------------------------- loading valid sites


def test_loads_sorts_and_keeps_missing_values(tmp_path: Path) -> None:
    data = load_visit_site(_site(tmp_path, _good_visits(), ["p1,1", "p2,0"]))
    assert data.site == "hospital_x"
    assert list(data.visits.columns) == list(VISIT_COLUMNS)
    assert list(data.visits["visit_id"]) == ["v1", "v2", "v3"]  # by patient, then time
    assert list(data.patients) == ["p1", "p2"]
    assert data.labels is not None and data.labels.to_dict() == {"p1": 1, "p2": 0}
    first = data.visits.iloc[0]
    assert np.isnan(first["bun"]) and np.isnan(first["urine_output"]) and first["creatinine"] == 0.9
    assert data.visits["timestamp"].iloc[1] == pd.Timestamp("2150-01-02 08:30")
    assert data.dropped == {"labels_unknown_patient": 0, "patients_without_label": 0}


def test_integer_ids_are_text_and_utc_offsets_are_converted(tmp_path: Path) -> None:
    data = load_visit_site(
        _site(tmp_path, [f"17,100,2150-01-01T10:00:00+02:00,{LABS}"], ["17,0"]), require_label=True
    )
    assert data.visits["patient_id"].tolist() == ["17"] and data.visits["visit_id"].tolist() == ["100"]
    assert data.visits["timestamp"].iloc[0] == pd.Timestamp("2150-01-01 08:00")


def test_unknown_and_unlabelled_patients_are_dropped_and_counted(tmp_path: Path) -> None:
    visits = [*_good_visits(), f"p3,v4,2150-01-03,{LABS}", f"p3,v5,2150-01-04,{LABS}"]
    data = load_visit_site(_site(tmp_path, visits, ["p1,1", "p2,0", "ghost,1", "ghost2,0"]))
    assert data.dropped == {"labels_unknown_patient": 2, "patients_without_label": 1}
    assert "p3" not in set(data.visits["patient_id"]) and list(data.patients) == ["p1", "p2"]


def test_prediction_load_needs_no_labels(tmp_path: Path) -> None:
    data = load_visit_site(_site(tmp_path, _good_visits(), None), require_label=False)
    assert data.labels is None and list(data.patients) == ["p1", "p2"] and len(data.visits) == 3


def test_gzip_variant_is_read(tmp_path: Path) -> None:
    site = _site(tmp_path, _good_visits(), ["p1,1", "p2,0"])
    plain = site / "visits.csv"
    (site / "visits.csv.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    assert len(load_visit_site(site).visits) == 3


# ---------------------------------------------------------------- rejected input


def test_missing_tables(tmp_path: Path) -> None:
    err = _error(tmp_path, _good_visits(), None)
    assert err.source is not None and err.source.endswith("labels.csv") and "missing file" in err.problem
    (tmp_path / "hospital_x" / "visits.csv").unlink()
    with pytest.raises(InputError, match="visits.csv"):
        load_visit_site(tmp_path / "hospital_x")


def test_both_plain_and_gzip_is_ambiguous(tmp_path: Path) -> None:
    site = _site(tmp_path, _good_visits(), ["p1,1", "p2,0"])
    (site / "labels.csv.gz").write_bytes(gzip.compress((site / "labels.csv").read_bytes()))
    with pytest.raises(InputError, match="keep one"):
        load_visit_site(site)


@pytest.mark.parametrize("column", ["patient_id", "visit_id", "timestamp", "egfr", "urine_output"])
def test_missing_column_names_it(tmp_path: Path, column: str) -> None:
    cols = [c for c in VISIT_COLUMNS if c != column]
    rows = ["p1,v1,2150-01-01," + LABS]
    frame = pd.DataFrame([r.split(",") for r in rows], columns=list(VISIT_COLUMNS))[cols]
    err = _error(tmp_path, [",".join(r) for r in frame.to_numpy()], ["p1,0"], header=",".join(cols))
    assert err.source.endswith("visits.csv") and err.field == column and "missing required column" in err.problem


def test_missing_label_column(tmp_path: Path) -> None:
    site = _site(tmp_path, _good_visits(), None)
    (site / "labels.csv").write_text("patient_id,label\np1,1\n")
    with pytest.raises(InputError) as info:
        load_visit_site(site)
    assert info.value.source.endswith("labels.csv") and info.value.field == "aki"


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        (f"p9,v9,2150-01-01,abc,{LABS.split(',', 1)[1]}", "creatinine", "not a finite number"),
        (f"p9,v9,2150-01-01,{LABS.rsplit(',', 1)[0]},inf", "urine_output", "not a finite number"),
        (f"p9,v9,2150-01-01,{LABS.rsplit(',', 1)[0]},-0.5", "urine_output", "outside the physiological range 0-50"),
        # one absurd value would blow the site's creatinine standard deviation up and erase the feature
        (f"p9,v9,2150-01-01,1e300,{LABS.split(',', 1)[1]}", "creatinine", "outside the physiological range 0-40"),
        (f"p9,v9,2150-01-01,1.0,15,90,0.2,{LABS.split(',', 4)[4]}", "potassium", "outside the physiological range 0.5-15"),
        (f"p9,v9,2150-01-01,NaN,{LABS.split(',', 1)[1]}", "creatinine", "not a finite number"),
        (f"p9,v9,2150-01-01,1.0,NA,{LABS.split(',', 2)[2]}", "bun", "not a finite number"),
        (f"p9,v9,2150-01-01,1.0,15,90,4.1,139 mmol/L,{LABS.split(',', 5)[5]}", "sodium", "not a finite number"),
        (f"p9,v9,1e9,{LABS}", "timestamp", "ISO-8601"),
        (f"p9,v9,yesterday,{LABS}", "timestamp", "ISO-8601"),
        (f"p9,v9,,{LABS}", "timestamp", "ISO-8601"),
        (f"p9,v1,2150-01-01,{LABS}", "visit_id", "duplicate"),
        (f",v9,2150-01-01,{LABS}", "patient_id", "empty"),
    ],
)
def test_bad_visit_values_name_file_column_and_row(tmp_path: Path, row: str, field: str, problem: str) -> None:
    err = _error(tmp_path, [*_good_visits(), row], ["p1,1", "p2,0", "p9,0"])
    assert err.source.endswith("visits.csv") and err.field == field
    assert problem in err.problem and "data row 4 (line 5)" in err.problem


@pytest.mark.parametrize(("label_row", "problem"), [("p2,", "0/1"), ("p2,2", "0/1"), ("p2,yes", "0/1"), ("p1,0", "twice")])
def test_bad_labels(tmp_path: Path, label_row: str, problem: str) -> None:
    err = _error(tmp_path, _good_visits(), ["p1,1", label_row])
    assert err.source.endswith("labels.csv") and err.field in ("aki", "patient_id") and problem in err.problem


def test_empty_site_and_site_without_labelled_patients(tmp_path: Path) -> None:
    err = _error(tmp_path, [], ["p1,1"])
    assert err.source.endswith("visits.csv") and "no visits" in err.problem
    err = _error(tmp_path, _good_visits(), ["ghost,1"])
    assert err.source.endswith("labels.csv") and "no patient" in err.problem
    err = _error(tmp_path, _good_visits(), [])  # labels.csv: header only
    assert err.source.endswith("labels.csv") and "no patient" in err.problem


def test_empty_missing_or_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="site folder does not exist"):
        load_visit_site(tmp_path / "nowhere")
    site = _site(tmp_path, _good_visits(), ["p1,1", "p2,0"])
    (site / "visits.csv").write_text("")
    err = _error(tmp_path, [], ["p1,1"], header="")
    assert err.source.endswith("visits.csv") and "file is empty" in err.problem
    (site / "visits.csv").write_bytes(f"{HEADER}\np\xe9,v1,2150-01-01,{LABS}\n".encode("latin-1"))
    with pytest.raises(InputError, match="not a readable CSV file: UnicodeDecodeError"):
        load_visit_site(site)
    (site / "visits.csv").unlink()
    (site / "visits.csv.gz").write_bytes(gzip.compress(f"{HEADER}\np1,v1,2150-01-01,{LABS}\n".encode())[:-12])
    with pytest.raises(InputError) as info:
        load_visit_site(site)
    assert info.value.source.endswith("visits.csv.gz") and "not a readable CSV file" in info.value.problem


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([f"p1,v1,2150-01-01,{LABS},extra", f"p1,v2,2150-01-02,{LABS}"], "data row 1 (line 2) has 12 fields"),  # pandas: an index
        ([f"p1,v1,2150-01-01,{LABS}", "", "p1,v2,2150-01-02,1.0"], "data row 2 (line 4) has 4 fields"),  # pandas: padded
        ([f"p1,v1,2150-01-01,{LABS}", f"p1,v2,2150-01-02,{LABS},1,2"], "Expected 11 fields in line 3, saw 13"),
    ],
)
def test_rows_with_the_wrong_number_of_fields(tmp_path: Path, rows: list[str], problem: str) -> None:
    err = _error(tmp_path, rows, ["p1,1"])
    assert err.source.endswith("visits.csv") and err.field is None and problem in err.problem


def test_unsorted_visits_are_ordered_by_time_and_ties_keep_file_order(tmp_path: Path) -> None:
    rows = [
        f"p1,late,2150-01-09,{LABS}",
        f"p2,b1,2150-02-01 12:00,{LABS}",
        f"p1,tie_first,2150-01-05T06:00,{LABS}",
        f"p1,early,2150-01-01,{LABS}",
        f"p1,tie_second,2150-01-05 06:00:00,{LABS}",
        f"p2,b0,2150-02-01 11:59,{LABS}",
    ]
    data = load_visit_site(_site(tmp_path, rows, ["p1,0", "p2,1"]))
    assert data.visits["visit_id"].tolist() == ["early", "tie_first", "tie_second", "late", "b0", "b1"]
    assert data.visits.groupby("patient_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()


# ---------------------------------------------------------------- a new patient as JSON records


def test_records_accept_object_or_list_and_sort_by_time() -> None:
    visits = [
        {"timestamp": "2150-01-03T08:00", "creatinine": 2.1, "bun": 40},
        {"timestamp": "2150-01-01", "creatinine": 1.0, "urine_output": None, "visit_id": "a"},
    ]
    frame = visits_from_records({"patient_id": "P-7", "visits": visits})
    assert list(frame.columns) == list(VISIT_COLUMNS) and list(frame["visit_id"]) == ["a", "visit_0"]
    assert frame["creatinine"].tolist() == [1.0, 2.1] and frame["patient_id"].unique().tolist() == ["P-7"]
    assert frame[list(FEATURES)].isna().sum().sum() == 2 * len(FEATURES) - 3
    assert visits_from_records(visits)["patient_id"].iloc[0] == "new_patient"


@pytest.mark.parametrize(
    ("records", "field"),
    [
        ([{"timestamp": "2150-01-01", "creatinin": 1.0}], "visits[0].creatinin"),
        ([{"timestamp": "2150-01-01"}, {"timestamp": "soon"}], "visits[1].timestamp"),
        ([{"creatinine": 1.0}], "visits[0].timestamp"),
        ([{"timestamp": "2150-01-01", "bun": "high"}], "visits[0].bun"),
        ([{"timestamp": "2150-01-01", "bun": True}], "visits[0].bun"),
        ([{"timestamp": "2150-01-01", "egfr": -3}], "visits[0].egfr"),
        ([], "visits"),
        ({"visit": []}, "visits"),
        (["2150-01-01"], "visits[0]"),
    ],
)
def test_bad_records_name_the_field(records: object, field: str) -> None:
    with pytest.raises(InputError) as info:
        visits_from_records(records, "new.json")
    assert info.value.source == "new.json" and info.value.field == field


# ---------------------------------------------------------------- synthetic sites


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("visits")
    synthesize_visit_sites(out, n_sites=3, seed=3)
    return out


def test_synthetic_sites_round_trip(synthetic: Path) -> None:
    truth = pd.read_csv(synthetic / "synthetic_truth.csv", dtype={"patient_id": str})
    for name, size, prevalence in (("hospital_a", 500, 0.12), ("hospital_b", 300, 0.2), ("hospital_c", 150, 0.3)):
        data = load_visit_site(synthetic / name)
        assert len(data.patients) == size and data.dropped == {"labels_unknown_patient": 0, "patients_without_label": 0}
        per_patient = data.visits.groupby("patient_id").size()
        assert per_patient.min() >= 3 and per_patient.max() <= 20
        assert abs(data.labels.mean() - prevalence) < 0.07
        assert data.visits["visit_id"].is_unique and data.visits["creatinine"].notna().mean() > 0.9
        assert (data.visits[list(FEATURES)].dropna() >= 0).all().all()
        site_truth = truth[truth["site"] == name].set_index("patient_id").loc[data.patients, "true_logit"]
        assert 0.75 < auroc(data.labels.to_numpy(), site_truth.to_numpy()) < 0.97  # learnable, not trivial
    assert load_visit_site(synthetic / "hospital_a").visits["patient_id"].str.isdigit().all()
    assert load_visit_site(synthetic / "hospital_b").visits["patient_id"].str.startswith("P-").all()
    assert "SYNTHETIC" in (synthetic / "README.txt").read_text()


def test_synthetic_sites_differ_in_calibration_and_missingness(synthetic: Path) -> None:
    sites = {name: load_visit_site(synthetic / name).visits for name in ("hospital_a", "hospital_b", "hospital_c")}
    urine_missing = [v["urine_output"].isna().mean() for v in sites.values()]
    assert urine_missing == sorted(urine_missing) and urine_missing[2] - urine_missing[0] > 0.25
    sodium = [v["sodium"].median() for v in sites.values()]
    assert sodium[1] < sodium[0] < sodium[2]


def test_recent_creatinine_rise_drives_aki(synthetic: Path) -> None:
    data = load_visit_site(synthetic / "hospital_a")
    creatinine = data.visits.groupby("patient_id")["creatinine"]
    rise = np.log(creatinine.last() / creatinine.median()).loc[data.patients]
    positives, negatives = rise[data.labels == 1], rise[data.labels == 0]
    assert positives.mean() > negatives.mean() + 0.15
    assert auroc(data.labels.to_numpy(), rise.to_numpy()) > 0.7


def test_synthesis_is_deterministic_and_site_a_ignores_site_count(synthetic: Path, tmp_path: Path) -> None:
    synthesize_visit_sites(tmp_path, n_sites=1, sizes=[500], seed=3)
    for table in ("visits.csv", "labels.csv"):
        assert (tmp_path / "hospital_a" / table).read_bytes() == (synthetic / "hospital_a" / table).read_bytes()
    other = tmp_path / "other"
    synthesize_visit_sites(other, n_sites=1, sizes=[500], seed=4)
    assert (other / "hospital_a" / "visits.csv").read_bytes() != (synthetic / "hospital_a" / "visits.csv").read_bytes()


def test_synthesis_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="sizes"):
        synthesize_visit_sites(tmp_path, n_sites=2, sizes=[10])
    with pytest.raises(InputError, match="n_sites"):
        synthesize_visit_sites(tmp_path, n_sites=0)


def test_units_cover_every_feature() -> None:
    assert tuple(LAB_FEATURES) == FEATURES and len(FEATURES) == 8 and all(LAB_FEATURES.values())
