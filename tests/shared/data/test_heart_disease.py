from pathlib import Path

import numpy as np
import pytest

from shared.data.heart_disease import (
    FEATURES,
    ROWS_AFTER_PREPROCESSING,
    SITES,
    find_heart_disease_dir,
    load_heart_disease,
    preprocess,
    read_site_file,
    site_splits,
)
from shared.errors import InputError

DATA = find_heart_disease_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="shared/data/uci-heart-disease not found beside the repository")


@needs_data
def test_flamby_preprocessing_row_counts_and_labels() -> None:
    frames = load_heart_disease(DATA)
    assert {s: len(f) for s, f in frames.items()} == ROWS_AFTER_PREPROCESSING == {
        "cleveland": 303, "hungarian": 261, "switzerland": 46, "va": 130,
    }
    for site, frame in frames.items():
        assert list(frame.columns) == [*FEATURES, "num", "label"] and len(FEATURES) == 10
        assert not frame.isna().any().any(), site
        assert set(frame["num"]) <= {0, 1, 2, 3, 4}
        np.testing.assert_array_equal(frame["label"], frame["num"] > 0)
    assert frames["cleveland"]["label"].sum() == 139  # 164 healthy, 139 with disease
    assert (frames["switzerland"]["chol"] == 0).all()  # 0 = not measured there
    assert len(read_site_file(DATA / "processed.hungarian.data")) == 294


@needs_data
def test_site_splits_standardise_on_the_site_training_part() -> None:
    splits = site_splits(load_heart_disease(DATA), val_fraction=0.25, seed=0)
    assert list(splits) == list(SITES)
    cle = splits["cleveland"]
    assert cle.x_train.shape == (227, 10) and cle.x_val.shape == (76, 10) and cle.x_train.dtype == np.float32
    np.testing.assert_allclose(cle.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(cle.x_train.std(axis=0), 1, atol=1e-4)
    chol = FEATURES.index("chol")
    assert np.all(splits["switzerland"].x_train[:, chol] == 0)  # constant column: centred, not divided by 0
    assert abs(cle.y_train.mean() - cle.y_val.mean()) < 0.03  # stratified
    severity = site_splits(load_heart_disease(DATA), target="num")
    assert set(severity["cleveland"].y_train) == {0, 1, 2, 3, 4}


def test_bad_files_name_file_and_field(tmp_path: Path) -> None:
    good = "63,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n67,1,4,160,?,0,2,108,1,1.5,2,?,3,2\n"
    path = tmp_path / "processed.cleveland.data"
    path.write_text(good)
    frame = preprocess(read_site_file(path))
    assert len(frame) == 1 and frame["label"].tolist() == [0]  # the row with a missing chol is dropped
    path.write_text(good + "1,2,3\n")
    with pytest.raises(InputError, match=r"processed\.cleveland\.data: line 3: expected 14"):
        read_site_file(path)
    path.write_text(good.replace("233", "high"))
    with pytest.raises(InputError, match=r"chol: line 1: 'high' is not a number"):
        read_site_file(path)
    path.write_text(good.replace(",0\n", ",7\n", 1))
    with pytest.raises(InputError, match=r"num: line 1: diagnosis must be 0-4"):
        read_site_file(path)
    path.write_text(good)
    with pytest.raises(InputError, match=r"processed\.hungarian\.data: file not found"):
        load_heart_disease(tmp_path)
    assert find_heart_disease_dir(tmp_path) is None or find_heart_disease_dir(tmp_path) == DATA
