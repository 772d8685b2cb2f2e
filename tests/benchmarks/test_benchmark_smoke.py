"""The benchmarks' CI runs: gpu_throughput.py --device cpu --quick writes the JSON the docs use,
and dp_overhead.py --quick's DP / non-DP ratios have not worsened by more than 20% against the
committed reference (ratios of CPU times, never absolute times; best of two runs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.check_regression import REFERENCE, ratios, regressions

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, out: Path, *extra: str) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, f"benchmarks/{script}", "--device", "cpu", "--quick", "--out", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(out.read_text())


def test_gpu_throughput_quick_on_cpu_writes_its_json(tmp_path):
    data = _run("gpu_throughput.py", tmp_path / "gpu_throughput.json")
    assert data["device"] == "cpu" and data["quick"] and data["reps"] >= 5 and data["targets"] == []
    rows = {(r["model"], r["mode"]): r for r in data["rows"]}
    assert set(rows) == {(m, mode) for m in ("event_transformer", "set_transformer") for mode in ("non-dp", "bookkeeping")}
    for (model, mode), r in rows.items():
        assert "error" not in r, r
        assert r["batch"] == 8 and r["precision"] == "fp32" and r["reps"] == 5 and r["threads"] == 1
        assert r["step_ms"] > 0 and r["peak_mb"] > 0
        assert r["samples_per_s"] == pytest.approx(8 / r["step_ms"] * 1000, rel=1e-2)  # step_ms is rounded
        if mode == "bookkeeping":
            assert len(r["ratios"]) == 5 and all(x > 0 for x in r["ratios"])
            assert r["ratio_mean"] == pytest.approx(sum(r["ratios"]) / 5, abs=1e-3) and r["ratio_sd"] >= 0
            assert r["ratio_mean"] == pytest.approx(r["step_ms"] / rows[(model, "non-dp")]["step_ms"], rel=0.6)


def test_regression_check_compares_ratios_only():
    def run(ratio, step_ms):
        return {"rows": [{"model": "m", "batch": 16, "precision": "fp32", "mode": "non-dp", "step_ms": step_ms},
                         {"model": "m", "batch": 16, "precision": "fp32", "mode": "bookkeeping",
                          "step_ms": step_ms * ratio, "ratio_median": ratio}]}

    reference = run(1.20, 100.0)
    assert regressions(reference, [run(1.40, 900.0)], 0.2) == []  # 17% worse, 9x slower machine: fine
    assert regressions(reference, [run(1.50, 10.0)], 0.2)  # 25% worse on a fast machine: caught
    assert regressions(reference, [run(1.50, 10.0), run(1.30, 10.0)], 0.2) == []  # best of the runs counts
    assert regressions(reference, [{"rows": []}], 0.2) == ["m/16/fp32/bookkeeping: not measured (reference ratio 1.200)"]


def test_dp_overhead_quick_ratios_have_not_regressed(tmp_path):
    reference = json.loads(REFERENCE.read_text())
    assert reference["quick"] and reference["clock"] == "cpu" and ratios(reference)
    runs = [_run("dp_overhead.py", tmp_path / "first.json")]
    if regressions(reference, runs, 0.2):  # one more run before failing: the CI machine is shared
        runs.append(_run("dp_overhead.py", tmp_path / "second.json"))
    assert all(run["reps"] >= 5 and run["clock"] == "cpu" for run in runs)
    assert regressions(reference, runs, 0.2) == []


def test_round_breakdown_quick_splits_each_round_per_site(tmp_path):
    """benchmarks/round_breakdown.py --quick through the real Flower simulation (event config, 2 rounds)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "round_breakdown_quick.json"
    done = subprocess.run([sys.executable, "benchmarks/round_breakdown.py", "--quick", "--configs", "event", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (result,) = json.loads(out.read_text())["results"]
    assert result["runtime"] == "simulation" and result["complete"]
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for rnd in result["rounds"]:
        assert set(rnd["sites"]) == {"hospital_a", "hospital_b", "hospital_c"}
        for row in rnd["sites"].values():
            assert row["train"] > 0  # every site trained in every round
            # the demo config releases one DP evaluation, of the final model: only then is an evaluation asked for
            assert (row["evaluate"] > 0) == (rnd["round"] == 2)
            assert row["handler"] <= rnd["wall_s"] + 0.5  # a site's handlers fit in the round (checkpoint mtimes)
            assert abs(sum(row[p] for p in ("setup", "deserialise", "train", "evaluate", "accounting", "checkpoint",
                                            "serialise", "other")) - row["handler"]) < 0.01
        assert 0.0 <= rnd["overhead_fraction"] < 1.0
    assert sum(row["setup"] for row in result["rounds"][0]["sites"].values()) > 0  # the data is built in round 1
    assert "overhead" in done.stdout and "hospital_a" in done.stdout


def test_the_critical_path_of_indivisible_site_messages_is_the_best_assignment_to_workers():
    from benchmarks.round_breakdown import _critical

    # 3 sites on 2 workers: the longest alone, the other two together; total / 2 (0.55) is not reachable
    assert _critical([0.45, 0.41, 0.24], 2) == pytest.approx(0.65)
    assert _critical([0.9, 0.1, 0.1], 2) == pytest.approx(0.9)  # the longest site bounds it
    assert _critical([0.45, 0.41, 0.24], 3) == pytest.approx(0.45)  # a worker per site
    assert _critical([0.45, 0.41, 0.24], 1) == pytest.approx(1.10)
    assert _critical([1.0] * 40, 2) == pytest.approx(20.0)  # too many to try: the lower bound
    assert _critical([], 2) == 0.0


def test_a_steady_rounds_time_outside_work_is_the_median_over_rounds_after_the_first():
    from benchmarks.round_breakdown import steady_outside_work_s

    rounds = [{"round": 1, "wall_s": 9.0, "critical_work_s": 1.0},  # round 1 (set-up) does not count
              {"round": 2, "wall_s": 1.0, "critical_work_s": 0.8},
              {"round": 3, "wall_s": 1.3, "critical_work_s": 0.9},
              {"round": 4, "wall_s": 1.2, "critical_work_s": 0.9}]
    assert steady_outside_work_s(rounds) == pytest.approx(0.3)
    assert steady_outside_work_s(rounds[:1]) is None
