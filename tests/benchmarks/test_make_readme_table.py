import json
import math
from pathlib import Path

import torch

from benchmarks.federated_training import fedavg, score
from benchmarks.make_readme_table import build_markdown, result_files


def _write(folder: Path, name: str, payload: dict) -> None:
    (folder / name).write_text(json.dumps(payload))


def test_markdown_tables_prefer_full_runs_over_quick(tmp_path: Path) -> None:
    row = {"workload": "heart-disease", "data": "real", "metric": "auroc", "pooled": 0.87, "federated": 0.85, "ratio": 0.977}
    _write(tmp_path, "fed_vs_pooled_quick.json", {"quick": True, "seeds": [0], "rows": [row | {"epsilon": 1.0}]})
    _write(tmp_path, "fed_vs_pooled.json", {"quick": False, "seeds": [0, 1, 2], "rows": [
        row | {"epsilon": 1.0}, row | {"epsilon": math.inf, "federated": 0.866, "ratio": 0.995}]})
    _write(tmp_path, "unrelated.json", {"x": 1})
    assert [p.name for p in result_files(tmp_path)["fed_vs_pooled"]] == ["fed_vs_pooled.json", "fed_vs_pooled_quick.json"]
    text = build_markdown(tmp_path)
    assert "From `benchmarks/results/fed_vs_pooled.json`" in text and "_quick" not in text
    assert "| workload | data | metric | pooled, non-DP | federated ε=1 (ratio) | federated ε=∞ (ratio) |" in text
    assert "| heart-disease | real | auroc | 0.870 | 0.850 (0.98) | 0.866 (0.99) |" in text
    assert "mean over 3 seed(s)" in text
    assert build_markdown(tmp_path / "empty") == "No benchmark results found.\n"


def test_fedavg_weights_by_examples_and_keeps_dtypes() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(4)}
    b = {"w": torch.tensor([3.0, 6.0]), "steps": torch.tensor(8)}
    avg = fedavg([a, b], [300, 100])
    torch.testing.assert_close(avg["w"], torch.tensor([1.5, 3.0]))
    assert avg["steps"].dtype == torch.int64 and int(avg["steps"]) == 5


def test_score_picks_the_metric_of_the_outputs() -> None:
    import numpy as np

    assert score("auroc", np.array([0, 1, 1]), np.array([-1.0, 2.0, 0.5])) == 1.0
    assert score("kappa", np.array([0, 1, 2]), np.eye(3)) == 1.0
    assert score("c_index", np.array([[1.0, 1], [2.0, 1], [3.0, 0]]), np.array([3.0, 2.0, 1.0])) == 1.0
