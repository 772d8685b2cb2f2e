"""GSE7390 ARFF -> multimodal survival sites: exact values on a hand-written ARFF, then the real cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.data.gse7390 import convert_gse7390, read_gse7390
from shared.data.omics import load_multimodal_site
from shared.errors import InputError
from tests.shared.data.test_omics import shared_data_dir

MINI_ARFF = """% a hand-written slice in the layout of scikit-survival's GSE7390 file
@relation tdm.data
@attribute age numeric
@attribute size numeric
@attribute grade {well differentiated,intermediate,poorly differentiated,unkown}
@attribute er {negative,positive}
@attribute t.tdm numeric
@attribute e.tdm {0,1}
@attribute X219340_s_at numeric
@attribute X217771_at numeric
@data
57,3,poorly differentiated,negative,723,1,7.01410950575358,9.93870469621458
48,2.5,unkown,positive,4000,0,6.5,8.25
61,1.2,well differentiated,positive,5100.5,0,7.25,10.0
"""


def test_conversion_of_a_hand_written_arff(tmp_path: Path) -> None:
    sites, features = convert_gse7390(_write_mini(tmp_path), tmp_path / "sites", n_sites=1)
    assert features == ["219340_s_at", "217771_at", "age_years", "tumour_size_cm"]
    data = load_multimodal_site(sites[0], features, "survival")
    assert list(data.patient_ids) == ["GSE7390-001", "GSE7390-002", "GSE7390-003"]
    assert data.labels.to_dict("list") == {"time": [723.0, 4000.0, 5100.5], "event": [1, 0, 0]}
    np.testing.assert_allclose(
        data.omics.to_numpy(), [[7.01410950575358, 9.93870469621458, 57, 3], [6.5, 8.25, 48, 2.5], [7.25, 10.0, 61, 1.2]]
    )
    assert data.notes["text"].tolist() == [
        "Histological grade: poorly differentiated. Oestrogen receptor negative.",
        "Histological grade not recorded. Oestrogen receptor positive.",
        "Histological grade: well differentiated. Oestrogen receptor positive.",
    ]


def test_unreadable_or_foreign_arff_is_an_input_error(tmp_path: Path) -> None:
    arff = tmp_path / "other.arff"
    arff.write_text(MINI_ARFF.replace("@attribute t.tdm numeric", "@attribute followup numeric"))
    with pytest.raises(InputError, match=r"other\.arff: t\.tdm: missing attribute"):
        read_gse7390(arff)
    arff.write_text("not an arff")
    with pytest.raises(InputError, match="not a readable ARFF file"):
        read_gse7390(arff)
    with pytest.raises(InputError, match="n_sites: must be 1-3"):
        convert_gse7390(_write_mini(tmp_path), tmp_path / "x", n_sites=4)


def _write_mini(tmp_path: Path) -> Path:
    path = tmp_path / "mini.arff"
    path.write_text(MINI_ARFF)
    return path


def test_real_cohort_becomes_three_sites(tmp_path: Path) -> None:
    folder = shared_data_dir("breast-cancer-gse7390")
    if folder is None:
        pytest.skip("shared GSE7390 data not present")
    arff = folder / "breast_cancer_GSE7390-metastasis.arff"
    sites, features = convert_gse7390(arff, tmp_path, n_sites=3, seed=0)
    assert len(features) == 78 and features[-2:] == ["age_years", "tumour_size_cm"]
    source = read_gse7390(arff)
    loaded = [load_multimodal_site(s, features, "survival") for s in sites]
    assert [len(d.labels) for d in loaded] == [66, 66, 66]
    ids = np.concatenate([d.patient_ids for d in loaded])
    assert len(set(ids)) == 198
    rows = np.array([int(i.split("-")[1]) - 1 for i in ids])
    times = np.concatenate([d.labels["time"].to_numpy() for d in loaded])
    np.testing.assert_array_equal(times, source["t.tdm"].to_numpy()[rows])
    assert sum(int(d.labels["event"].sum()) for d in loaded) == 51
    omics = np.concatenate([d.omics.to_numpy() for d in loaded])
    np.testing.assert_allclose(omics[:, 0], source["X219340_s_at"].to_numpy()[rows], rtol=1e-9)
    np.testing.assert_allclose(omics[:, -2], source["age"].to_numpy()[rows])
    assert all(d.dropped == dict.fromkeys(d.dropped, 0) for d in loaded)
