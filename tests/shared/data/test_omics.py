"""Multimodal sites: exact round trips, strict validation, counted drops, preprocessing with public statistics only,
per-patient note embeddings with a reused cache (real MTS-Dialog notes), the synthetic generator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from shared.data.omics import (
    DROP_REASONS,
    REFERENCE_OMICS,
    OmicsPreprocessor,
    load_multimodal_site,
    omics_input_dim,
    patient_text_vectors,
    read_public_omics,
    reference_stats,
    standardize_text_vectors,
)
from shared.data.synth.omics import SYNTHETIC_GENES, synthesize_multimodal_sites
from shared.data.text_embedding import make_text_embedder
from shared.data.writers import write_multimodal_site
from shared.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[3]
FEATURES = ["G1", "G2", "G3"]


def shared_data_dir(name: str) -> Path | None:
    """A folder of the shared real data: beside the repository (main checkout) or beside the worktrees."""
    candidates = [Path(os.environ["FEDCARE_SHARED_DATA"]) / name] if "FEDCARE_SHARED_DATA" in os.environ else []
    candidates += [REPO_ROOT / ".." / "shared" / "data" / name, REPO_ROOT / ".." / ".." / "shared" / "data" / name]
    return next((p.resolve() for p in candidates if p.is_dir()), None)


def _site(tmp_path: Path, labels: str, omics: str, notes: str, omics_name: str = "omics.csv") -> Path:
    site = tmp_path / "hospital_a"
    site.mkdir(exist_ok=True)
    (site / "labels.csv").write_text(labels)
    (site / omics_name).write_text(omics)
    (site / "notes.csv").write_text(notes)
    return site


LABELS = "patient_id,label,age\np1,1,50\np2,0,61\np3,0,70\np4,1,44\n"
OMICS = "patient_id,G3,G1,G2,extra\np1,3,1,2.5,x\np2,,10,NA,y\np4,0,0,0,z\nstranger,1,1,1,w\np3,,,,v\n"
NOTES = "patient_id,text\np1,Metastatic disease.\np1, Clear margins. \np2,   \nnobody,Lost note.\np4,Stable.\n"


def test_load_reads_every_table_exactly(tmp_path: Path) -> None:
    data = load_multimodal_site(_site(tmp_path, LABELS, OMICS, NOTES), FEATURES, "binary")
    assert data.site == "hospital_a"
    assert list(data.patient_ids) == ["p1", "p2", "p3", "p4"]
    assert data.labels["label"].tolist() == [1, 0, 0, 1]
    # config order of the pinned features, labels' patient order, NaN = missing; p3's empty row = no omics
    assert list(data.omics.columns) == FEATURES
    assert list(data.omics.index) == ["p1", "p2", "p4"]
    np.testing.assert_array_equal(data.omics.to_numpy(), [[1, 2.5, 3], [10, np.nan, np.nan], [0, 0, 0]])
    assert data.notes.to_dict("list") == {
        "patient_id": ["p1", "p1", "p4"], "text": ["Metastatic disease.", "Clear margins.", "Stable."]
    }
    assert data.dropped == {"omics_unknown_patient": 1, "notes_unknown_patient": 1, "notes_empty_text": 1}
    assert set(data.dropped) == set(DROP_REASONS)
    assert data.ignored_omics_columns == ["extra"]


def test_survival_labels_and_writer_round_trip(tmp_path: Path) -> None:
    labels = pd.DataFrame({"patient_id": ["a", "b"], "time": [12.5, 400.0], "event": [1, 0]})
    omics = pd.DataFrame({"patient_id": ["b", "a"], "G1": [0.125, np.nan], "G2": [3.0, 4.0], "G3": [1e-7, 2e6]})
    notes = pd.DataFrame({"patient_id": ["a"], "text": ["Lymph node involvement, see biopsy."]})
    site = write_multimodal_site(tmp_path / "s", labels, omics, notes)
    assert sorted(p.name for p in site.iterdir()) == ["labels.csv", "notes.csv", "omics.csv"]
    data = load_multimodal_site(site, FEATURES, "survival")
    assert data.labels.to_dict("list") == {"time": [12.5, 400.0], "event": [1, 0]}
    np.testing.assert_array_equal(data.omics.loc[["a", "b"]].to_numpy(), [[np.nan, 4.0, 2e6], [0.125, 3.0, 1e-7]])
    assert data.notes["text"].tolist() == ["Lymph node involvement, see biopsy."]


def test_parquet_and_gzip_variants(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    site = _site(tmp_path, LABELS, OMICS, NOTES)
    frame = pd.read_csv(site / "omics.csv", dtype={"patient_id": str})
    (site / "omics.csv").unlink()
    frame.to_parquet(site / "omics.parquet")
    pd.read_csv(site / "labels.csv", dtype=str).to_csv(site / "labels.csv.gz", index=False)
    (site / "labels.csv").unlink()
    data = load_multimodal_site(site, FEATURES, "binary")
    np.testing.assert_array_equal(data.omics.to_numpy(), [[1, 2.5, 3], [10, np.nan, np.nan], [0, 0, 0]])
    assert data.labels["label"].tolist() == [1, 0, 0, 1]
    frame.to_csv(site / "omics.csv", index=False)
    with pytest.raises(InputError, match="omics.csv and omics.parquet exist; keep one"):
        load_multimodal_site(site, FEATURES, "binary")


MALFORMED = [  # (table, content, label type, expected message)
    ("omics", "patient_id,G1,G2,G3\np1,1,high,3\n", "binary", r"omics\.csv: G2: data row 1 \(line 2\): 'high' is not a number"),
    ("omics", "patient_id,G1,G2,G3\np1,1,2,3\np2,1,2,inf\n", "binary", r"omics\.csv: G3: data row 2 .*: 'inf' is not a finite"),
    ("omics", "patient_id,G1,G3\np1,1,3\n", "binary", r"omics\.csv: G2: pinned feature column missing \(1 of 3 absent: G2\)"),
    ("omics", "patient_id,G1,G2,G3\np1,1,2,3\np1,4,5,6\n", "binary", r"omics\.csv: patient_id: data row 2 .*'p1' is a dup"),
    ("labels", "patient_id,outcome\np1,1\n", "binary", r"labels\.csv: label: missing required column"),
    ("labels", "patient_id,label\np1,1\np2,\n", "binary", r"labels\.csv: label: data row 2 .*an empty field is not 0 or 1"),
    ("labels", "patient_id,label\np1,2\n", "binary", r"labels\.csv: label: data row 1 .*'2' is not 0 or 1"),
    ("labels", "patient_id,label\np1,1\np1,0\n", "binary", r"labels\.csv: patient_id: data row 2 .*duplicate patient_id"),
    ("labels", "patient_id,label\n", "binary", r"labels\.csv: patient_id: the site has no patients"),
    ("labels", "patient_id,label\n,1\n", "binary", r"labels\.csv: patient_id: data row 1 .*empty field is not a patient id"),
    ("labels", "patient_id,time,event\np1,-3,1\n", "survival", r"labels\.csv: time: data row 1 .*'-3' is not a finite"),
    ("labels", "patient_id,time\np1,3\n", "survival", r"labels\.csv: event: missing required column"),
    ("notes", "patient_id,note\np1,x\n", "binary", r"notes\.csv: text: missing required column"),
]


@pytest.mark.parametrize(("table", "content", "label_type", "message"), MALFORMED)
def test_malformed_input_is_one_clear_error(tmp_path: Path, table: str, content: str, label_type: str, message: str) -> None:
    files = {"labels": "patient_id,label,time,event\np1,1,5,1\n", "omics": "patient_id,G1,G2,G3\np1,1,2,3\n",
             "notes": "patient_id,text\np1,x\n"}  # fmt: skip
    files[table] = content
    site = _site(tmp_path, files["labels"], files["omics"], files["notes"])
    with pytest.raises(InputError, match=message) as err:
        load_multimodal_site(site, FEATURES, label_type)
    assert "\n" not in str(err.value)


def test_missing_files_are_errors(tmp_path: Path) -> None:
    site = _site(tmp_path, LABELS, OMICS, NOTES)
    (site / "notes.csv").unlink()
    with pytest.raises(InputError, match=r"notes\.csv: missing file \(expected notes\.csv or notes\.csv\.gz\)"):
        load_multimodal_site(site, FEATURES, "binary")
    with pytest.raises(InputError, match="site folder does not exist"):
        load_multimodal_site(tmp_path / "nowhere", FEATURES, "binary")


def test_prediction_mode_takes_patients_from_omics_and_notes(tmp_path: Path) -> None:
    site = _site(tmp_path, LABELS, OMICS, NOTES)
    (site / "labels.csv").unlink()
    data = load_multimodal_site(site, FEATURES, None)
    assert list(data.patient_ids) == ["nobody", "p1", "p2", "p3", "p4", "stranger"]
    assert list(data.labels.columns) == []
    assert data.dropped["notes_unknown_patient"] == 0 and len(data.notes) == 4


# ---------------------------------------------------------------------------------------------
# Preprocessing


def test_omics_preprocessor_uses_the_configs_public_statistics_exactly() -> None:
    stats = {"a": {"mean": 1.0, "sd": 0.5}, "b": {"mean": 2.0, "sd": 2.0}, "c": {"mean": 0.0, "sd": 1.0}}
    pre = OmicsPreprocessor.reference(["a", "b", "c"], log1p=True, missing_indicators=True, standardize=stats)
    assert pre.mean == [1.0, 2.0, 0.0] and pre.scale == [0.5, 2.0, 1.0] and pre.dim == 6 == omics_input_dim(3, True)
    out = pre.transform(np.array([[np.e - 1, np.nan, 7.0], [1e30, np.e**2 - 1, np.nan]]))
    assert out.dtype == np.float32
    # log1p, then (x - mean) / sd; a missing value -> the mean (0) with its indicator; clipped at +-10 sd
    np.testing.assert_allclose(out[0], [0.0, 0.0, np.log(8.0), 0, 1, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[1], [10.0, 0.0, 0.0, 0, 0, 1], rtol=1e-6, atol=1e-6)
    # a row's output depends on that row alone
    np.testing.assert_array_equal(pre.transform(np.array([[np.e - 1, np.nan, 7.0]])), out[:1])


def test_omics_preprocessor_defaults_to_the_shipped_reference_and_names_a_missing_feature() -> None:
    genes = list(SYNTHETIC_GENES[:3])
    pre = OmicsPreprocessor.reference(genes, log1p=True, missing_indicators=False,
                                      standardize={genes[1]: {"mean": 3.0, "sd": 1.5}})
    assert pre.mean == [REFERENCE_OMICS[genes[0]][0], 3.0, REFERENCE_OMICS[genes[2]][0]]
    assert pre.scale[1] == 1.5 and pre.dim == 3
    with pytest.raises(InputError, match=r"data\.standardize\.X1: missing: every pinned omics feature needs"):
        OmicsPreprocessor.reference(["X1"], log1p=True, missing_indicators=False, source="run.yaml")
    with pytest.raises(InputError, match=r"data\.standardize\.GENE001: missing"):  # the reference is log1p-scale
        OmicsPreprocessor.reference(["GENE001"], log1p=False, missing_indicators=False)
    with pytest.raises(InputError, match=r"data\.standardize\.a: mean must be finite and sd > 0"):
        OmicsPreprocessor.reference(["a"], True, False, {"a": {"mean": 1.0, "sd": 0.0}})
    with pytest.raises(InputError, match=r"data\.standardize\.zz: not a pinned feature"):
        OmicsPreprocessor.reference(["a"], True, False, {"a": {"mean": 1.0, "sd": 1.0}, "zz": {"mean": 0, "sd": 1}})


def test_the_synthetic_reference_describes_a_fresh_draw(tmp_path: Path) -> None:
    dirs = synthesize_multimodal_sites(tmp_path, n_sites=3, seed=11)
    values = pd.concat([read_public_omics(d / "omics.csv", list(SYNTHETIC_GENES)) for d in dirs])
    fresh = reference_stats(values, log1p=True)
    means = np.array([[fresh[g]["mean"], REFERENCE_OMICS[g][0]] for g in SYNTHETIC_GENES])
    # the panel's genes are fixed across draws: per-gene means agree far inside their 1.5-7 spread
    assert np.abs(means[:, 0] - means[:, 1]).max() < 0.6 and np.corrcoef(means.T)[0, 1] > 0.97


def test_reference_stats_of_a_public_table(tmp_path: Path) -> None:
    path = tmp_path / "public.csv"
    path.write_text("patient_id,a,b,c\np1,1,5,\np2,3,5,\np3,NA,5,\n")
    stats = reference_stats(read_public_omics(path), log1p=False)
    assert stats == {"a": {"mean": 2.0, "sd": 1.0}}  # b is constant, c never observed: left out
    with pytest.raises(InputError, match="public.csv: d: feature column missing"):
        read_public_omics(path, ["a", "d"])


def test_reference_stats_command_writes_the_config_block_a_run_accepts(tmp_path: Path) -> None:
    import yaml

    from fedcare.cli import main

    public = synthesize_multimodal_sites(tmp_path / "public", n_sites=1, seed=3)[0] / "omics.csv"
    out = tmp_path / "stats.yaml"
    assert main(["reference-stats", str(public), "--log1p", "--features", "GENE001,GENE007", "--out", str(out)]) == 0
    block = yaml.safe_load(out.read_text())["data"]["standardize"]
    values = np.log1p(pd.read_csv(public)["GENE007"].to_numpy(float))
    assert set(block) == {"GENE001", "GENE007"}
    assert block["GENE007"]["mean"] == pytest.approx(np.nanmean(values), abs=1e-4)
    assert block["GENE007"]["sd"] == pytest.approx(np.nanstd(values), abs=1e-4)
    pre = OmicsPreprocessor.reference(["GENE001", "GENE007"], log1p=False, missing_indicators=False, standardize=block)
    assert pre.mean[1] == block["GENE007"]["mean"]
    assert main(["reference-stats", str(public), "--features", "GENE001,NOPE"]) == 2  # one-line error, exit 2


def test_text_vectors_are_standardised_per_patient() -> None:
    out = standardize_text_vectors(np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 30.0]]))
    np.testing.assert_allclose(out, [[-1.0, 1.0], [0.0, 0.0], [-1.0, 1.0]])
    assert out.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# Text


def test_patient_text_is_the_mean_of_its_notes(tmp_path: Path) -> None:
    data = load_multimodal_site(_site(tmp_path, LABELS, OMICS, NOTES), FEATURES, "binary")
    embedder = make_text_embedder(None, 16, tmp_path / "cache")
    vectors, has_text = patient_text_vectors(data.notes, data.patient_ids, embedder)
    assert has_text.tolist() == [True, False, False, True]
    one_by_one = embedder.embed(["Metastatic disease.", "Clear margins.", "Stable."])
    np.testing.assert_allclose(vectors[0], one_by_one[:2].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(vectors[3], one_by_one[2])
    assert not vectors[1:3].any()


def test_real_clinical_notes_embed_once_and_reuse_the_cache(tmp_path: Path) -> None:
    mts = shared_data_dir("mts-dialog")
    if mts is None:
        pytest.skip("shared MTS-Dialog data not present")
    dialogues = pd.read_csv(mts / "MTS_Dataset_TrainingSet.csv").head(60)
    assert {"section_header", "section_text", "dialogue"} <= set(dialogues.columns)
    ids = [f"p{i % 20:02d}" for i in range(len(dialogues))]  # three real note sections per patient
    labels = pd.DataFrame({"patient_id": sorted(set(ids)), "label": [i % 2 for i in range(20)]})
    notes = pd.DataFrame({"patient_id": ids, "text": dialogues["section_text"]})
    omics = pd.DataFrame({"patient_id": ["p00"], "G1": [1.0], "G2": [2.0], "G3": [3.0]})
    data = load_multimodal_site(write_multimodal_site(tmp_path / "site", labels, omics, notes), FEATURES, "binary")
    expected_notes = int(dialogues["section_text"].fillna("").str.strip().ne("").sum())
    assert len(data.notes) == expected_notes
    first = make_text_embedder(None, 64, tmp_path / "embeddings")
    vectors, has_text = patient_text_vectors(data.notes, data.patient_ids, first)
    assert first.computed == data.notes["text"].nunique() > 40
    assert has_text.all() and np.isfinite(vectors).all() and (np.linalg.norm(vectors, axis=1) > 0).all()
    again = make_text_embedder(None, 64, tmp_path / "embeddings")  # a later round / run at the same site
    vectors_again, _ = patient_text_vectors(data.notes, data.patient_ids, again)
    assert again.computed == 0
    np.testing.assert_array_equal(vectors_again, vectors)


# ---------------------------------------------------------------------------------------------
# Synthetic sites


def test_synthetic_sites_are_deterministic_heterogeneous_and_informative(tmp_path: Path) -> None:
    dirs = synthesize_multimodal_sites(tmp_path / "one", seed=3)
    again = synthesize_multimodal_sites(tmp_path / "two", n_sites=2, seed=3)
    for name in ("labels.csv", "omics.csv", "notes.csv"):
        assert (dirs[0] / name).read_bytes() == (again[0] / name).read_bytes()
    assert (tmp_path / "one" / "README.txt").read_text().startswith("SYNTHETIC DATA")
    truth = pd.read_csv(tmp_path / "one" / "synthetic_truth.csv", dtype={"patient_id": str})
    prevalences = []
    for site_dir, size in zip(dirs, (300, 200, 120)):
        data = load_multimodal_site(site_dir, list(SYNTHETIC_GENES), "binary")
        assert len(data.labels) == size
        no_omics = 1 - len(data.omics) / size
        no_notes = 1 - data.notes["patient_id"].nunique() / size
        assert 0.02 <= no_omics <= 0.14 and 0.06 <= no_notes <= 0.25, (no_omics, no_notes)
        assert data.omics.isna().to_numpy().mean() < 0.03
        y = data.labels["label"].to_numpy()
        prevalences.append(y.mean())
        site_truth = truth[truth["site"] == site_dir.name].set_index("patient_id").loc[data.patient_ids]
        assert roc_auc_score(y, site_truth["true_logit"]) > 0.85
        # both modalities carry signal: an informative gene and the risk-finding count, alone
        gene = data.omics["GENE007"].reindex(data.patient_ids)
        has = gene.notna().to_numpy()
        assert roc_auc_score(y[has], np.log1p(gene.to_numpy()[has])) > 0.6
        risk_words = data.notes.assign(
            n=data.notes["text"].str.lower().str.count("metastatic|lymph node involvement|necrosis|poorly differentiated")
        ).groupby("patient_id")["n"].sum().reindex(data.patient_ids)
        has = risk_words.notna().to_numpy()
        assert roc_auc_score(y[has], risk_words.to_numpy()[has]) > 0.6
    assert prevalences[0] < prevalences[1] < prevalences[2]
    b = load_multimodal_site(dirs[1], list(SYNTHETIC_GENES), "binary")
    assert b.dropped["omics_unknown_patient"] == 3 and b.dropped["notes_unknown_patient"] >= 3
    c = load_multimodal_site(dirs[2], list(SYNTHETIC_GENES), "binary")
    assert c.ignored_omics_columns == ["GENE101", "assay_plate"]


def test_synthetic_survival_labels(tmp_path: Path) -> None:
    (site, *_) = synthesize_multimodal_sites(tmp_path, n_sites=1, sizes=[150], seed=1, label="survival")
    data = load_multimodal_site(site, list(SYNTHETIC_GENES), "survival")
    assert list(data.labels.columns) == ["time", "event"] and len(data.labels) == 150
    assert 0.2 < data.labels["event"].mean() < 0.9 and (data.labels["time"] > 0).all()
    with pytest.raises(InputError, match=r"labels\.csv: label: missing required column"):
        load_multimodal_site(site, list(SYNTHETIC_GENES), "binary")
    with pytest.raises(InputError, match="label: must be one of binary, survival"):
        synthesize_multimodal_sites(tmp_path, label="multiclass")
