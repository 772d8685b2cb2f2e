"""Real public cohorts written as tabular sites (UCI heart disease, GSE7390) load through the tabular tasks
with their fixed splits; skipped when ../shared/data lacks them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.config import config_from_dict
from shared.data.heart_disease import ROWS_AFTER_PREPROCESSING, find_heart_disease_dir
from shared.data.heart_disease_tabular import HEART_DATA_CONFIG, write_heart_disease_sites
from shared.tasks.registry import build_task

REPO = Path(__file__).resolve().parents[3]


def _gse7390() -> Path | None:
    for folder in (REPO, *REPO.parents):
        path = folder / "shared" / "data" / "breast-cancer-gse7390" / "breast_cancer_GSE7390-metastasis.arff"
        if path.is_file():
            return path
    return None


def test_heart_disease_sites_through_tabular_binary(tmp_path: Path) -> None:
    uci = find_heart_disease_dir()
    if uci is None:
        pytest.skip("shared/data/uci-heart-disease not found")
    sites = write_heart_disease_sites(uci, tmp_path)
    cfg = config_from_dict({"task": "tabular_binary", "data": {"root": str(tmp_path), "sites": sites, **HEART_DATA_CONFIG},
                            "model": {"name": "linear"}}, "<heart>")
    task = build_task(cfg)
    assert task.input_dims() == {"n_features": 5 + 1 + 3 + 1 + 2 + 1}
    for site in sites:
        data = task.prepare_site(tmp_path / site, site, tmp_path / "state" / site)
        assert data.n_train + data.n_val + len(data.test) == ROWS_AFTER_PREPROCESSING[site]
        assert len(data.test) == pytest.approx(0.25 * ROWS_AFTER_PREPROCESSING[site], abs=1)
    switzerland = task.prepare_site(tmp_path / "switzerland", "switzerland", tmp_path / "state" / "switzerland")
    assert set(np.unique(switzerland.test.tensors[1].numpy())) == {1.0}  # one class: its test AUROC is n/a


def test_flamby_split_has_flambys_test_sizes(tmp_path: Path) -> None:
    """FLamby's Fed-Heart-Disease README: train/test 199/104, 172/89, 30/16, 85/45 (Cleveland, Hungary,
    Switzerland, VA): the split FLamby's published accuracies are measured on."""
    uci = find_heart_disease_dir()
    if uci is None:
        pytest.skip("shared/data/uci-heart-disease not found")
    sites = write_heart_disease_sites(uci, tmp_path, split="flamby")
    sizes = {}
    for site in sites:
        split = pd.read_csv(tmp_path / site / "table.csv")["split"]
        sizes[site] = (int((split == "train").sum()), int((split == "test").sum()))
    assert sizes == {"cleveland": (199, 104), "hungarian": (172, 89), "switzerland": (30, 16), "va": (85, 45)}
    with pytest.raises(ValueError, match="split must be"):
        write_heart_disease_sites(uci, tmp_path, split="random")


def test_gse7390_sites_through_tabular_survival(tmp_path: Path) -> None:
    from shared.data.gse7390_tabular import write_gse7390_sites

    arff = _gse7390()
    if arff is None:
        pytest.skip("shared/data/breast-cancer-gse7390 not found")
    sites, data_config = write_gse7390_sites(arff, tmp_path)
    cfg = config_from_dict({"task": "tabular_survival", "data": {"root": str(tmp_path), "sites": sites, **data_config},
                            "model": {"name": "linear"}, "train": {"loss": "coxph"}}, "<gse>")
    task = build_task(cfg)
    assert task.input_dims() == {"n_features": 78 + 3 + 1}
    total = 0
    for site in sites:
        data = task.prepare_site(tmp_path / site, site, tmp_path / "state" / site)
        total += data.n_train + data.n_val + len(data.test)
        assert data.test.tensors[1][:, 1].sum() > 0  # events in every test split (stratified)
    assert total == 198
