import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.federated_training import fedavg, score
from benchmarks.make_readme_table import REPO, build_markdown, generated_block, result_files, update_page


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
    assert "fed_vs_pooled.json`" in text and "_quick" not in text
    assert "| workload | data | metric | pooled, non-DP | federated ε=1 (ratio) | federated ε=∞ (ratio) |" in text
    assert "| heart-disease | real | auroc | 0.870 | 0.850 (0.98) | 0.866 (0.99) |" in text
    assert "mean ± sd over 3 seeds" in text
    assert build_markdown(tmp_path / "empty") == "No benchmark results found.\n"


def test_round_breakdown_shows_the_full_run_and_the_quick_floor_as_a_summary(tmp_path: Path) -> None:
    site = dict.fromkeys(("setup", "deserialise", "train", "evaluate", "accounting", "checkpoint", "serialise", "other",
                          "idle_framework"), 0.01)
    def result(wall: float) -> dict:
        return {"config": "event", "runtime": "deployment", "overhead_round_1": 0.9, "round_wall_steady_median_s": wall,
                "overhead_steady_median": 0.5, "site_cpu_overhead_steady_median": 0.1,
                "first_round_start_after_last_connected_s": 6.0, "outside_work_steady_median_s": 0.25,
                "rounds": [{"round": 1, "wall_s": 3.0, "sites": {"site_a": site}}]}
    _write(tmp_path, "round_breakdown.json", {"quick": False, "command": "full", "results": [result(1.01)]})
    _write(tmp_path, "round_breakdown_quick.json", {"quick": True, "command": "quick", "results": [result(0.24)]})
    text = build_markdown(tmp_path)
    full, quick = text.split("### Where a round's time goes (`--quick`)")
    assert "round_breakdown.json`" in full and "| event | deployment | 3.00 | 90.0% | 1.01 | 50.0% | 0.250 |" in full
    assert "| event | deployment | 1 | 3.00 | site_a |" in full  # the per-site detail of the full run
    assert "| event | deployment | 0.24 |" not in full
    assert "round_breakdown_quick.json`" in quick and "| event | deployment | 3.00 | 90.0% | 0.24 | 50.0% |" in quick
    assert "| site_a |" not in quick and "almost no training" in quick and "Command: `quick`" in quick


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


def test_the_published_tables_are_the_committed_json() -> None:
    """docs/performance.md's generated block is exactly what the committed benchmarks/reference/*.json give;
    after a new run: python benchmarks/make_readme_table.py --results benchmarks/reference --update docs/performance.md"""
    page = (REPO / "docs" / "performance.md").read_text()
    block = generated_block(page)
    assert block is not None, "docs/performance.md lost its generated block"
    assert block == build_markdown(REPO / "benchmarks" / "reference")
    assert "fed_vs_pooled" in block and "± 0.000" not in block


def test_one_seed_says_n1_and_several_give_mean_and_sd(tmp_path: Path) -> None:
    row = {"workload": "heart-disease", "data": "real", "metric": "auroc", "epsilon": 8.0, "pooled": 0.87, "pooled_sd": 0.0,
           "federated": 0.85, "federated_sd": 0.0, "ratio": 0.977}
    _write(tmp_path, "fed_vs_pooled.json", {"seeds": [0], "rows": [row]})
    text = build_markdown(tmp_path)
    assert "| 0.870 (n=1) | 0.850 (n=1) (0.98) |" in text and "± 0.000" not in text and "one seed (n=1" in text
    _write(tmp_path, "fed_vs_pooled.json", {"seeds": [0, 1, 2], "rows": [row | {"pooled_sd": 0.012, "federated_sd": 0.031}]})
    assert "| 0.870 ± 0.012 | 0.850 ± 0.031 (0.98) |" in build_markdown(tmp_path)


def test_update_replaces_only_the_generated_block(tmp_path: Path) -> None:
    _write(tmp_path, "scaling.json", {"total_stays": 10, "rows": [
        {"sites": 2, "stays_per_site": 5, "round_1_wall_s": 3.0, "round_wall_s": 1.0, "round_cpu_s": 1.0,
         "train_cpu_s": 0.5, "evaluate_cpu_s": 0.5, "accounting_cpu_s": 0.0, "peak_rss_mb_per_site_max": 100}]})
    page = tmp_path / "page.md"
    from benchmarks.make_readme_table import BEGIN, END

    page.write_text(f"# Title\n\nbefore\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    update_page(page, build_markdown(tmp_path))
    text = page.read_text()
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith(f"{END}\n\nafter\n") and "old table" not in text
    assert generated_block(text) == build_markdown(tmp_path)
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no generated block"):
        update_page(tmp_path / "plain.md", "x\n")


def test_fed_vs_pooled_refuses_missing_real_data_unless_told(tmp_path: Path, capsys) -> None:
    from benchmarks.fed_vs_pooled import main

    with pytest.raises(SystemExit) as exit_:
        main(["--workloads", "heart-disease,gse7390-survival", "--data", str(tmp_path), "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"UCI files not found in {tmp_path / 'uci-heart-disease'}" in err
    assert "--skip-missing" in err
    with pytest.raises(SystemExit) as exit_:  # skipping everything leaves nothing to report: still not a result
        main(["--workloads", "heart-disease", "--data", str(tmp_path), "--skip-missing", "--out", str(tmp_path / "o.json")])
    assert exit_.value.code == 2 and "no workload ran" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_fed_vs_pooled_table_never_prints_a_fake_zero_spread() -> None:
    from benchmarks.fed_vs_pooled import table

    row = {"workload": "w", "data": "real", "metric": "auroc", "epsilon": 8.0, "federated": 0.8, "federated_sd": 0.0,
           "pooled": 0.9, "pooled_sd": 0.0, "ratio": 0.889, "per_seed": {"federated": [0.8], "pooled": [0.9]}}
    assert "0.800 (n=1)" in table([row]) and "±" not in table([row])
    several = row | {"federated_sd": 0.02, "per_seed": {"federated": [0.78, 0.82], "pooled": [0.9, 0.9]}}
    assert "0.800 ± 0.020" in table([several])


def test_communication_refuses_missing_real_data_before_measuring(tmp_path: Path, capsys) -> None:
    from benchmarks.communication import main

    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--data", str(tmp_path), "--out", str(tmp_path / "c.json")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"{tmp_path}/uci-heart-disease" in err and "--skip-missing" in err
    assert not (tmp_path / "c.json").exists()
