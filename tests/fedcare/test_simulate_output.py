"""What a user sees from `fedcare simulate`: the round table and the progress bar, and none of Flower's or
Ray's deprecation notices, FutureWarnings or actor shutdown lines; `--verbose` (third_party_output) lets them
through. The subprocess's real stderr is checked: pytest's own warning filters do not apply there."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from fedcare.cli import main
from fedcare.simulation import third_party_output

REPO = Path(__file__).resolve().parents[2]
RAY_TIP = "Tip: In future versions of Ray, Ray will no longer override accelerator visible devices env var"
NOISE = ("DeprecationWarning", "FutureWarning", "deprecated", "Manually terminating")


@pytest.mark.slow
def test_a_simulation_prints_no_third_party_warnings(tmp_path: Path) -> None:
    assert main(["synth", "--task", "tabular_binary", "--sites", "2", "--sizes", "60,60", "--out", str(tmp_path / "data")]) == 0
    raw = yaml.safe_load((REPO / "fedcare" / "configs" / "tabular_binary.yaml").read_text())
    raw["data"] |= {"root": str(tmp_path / "data"), "sites": ["hospital_a", "hospital_b"]}
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "FLWR_LOG_LEVEL")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "fedcare", "simulate", "--config", str(tmp_path / "small.yaml"), "--rounds", "1",
                          "--output", str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for text in NOISE:
        assert text.lower() not in out.stderr.lower(), out.stderr
        assert text.lower() not in out.stdout.lower(), out.stdout
    assert "round 1/1" in out.stdout and "privacy-budget audit" in out.stdout  # the round table still prints
    assert "round 1/1: evaluation 2/2 sites" in out.stdout  # the bar's last state (no terminal: drawn once)


def test_verbose_lets_the_third_party_notices_through():
    flwr_logger = logging.getLogger("flwr")
    level_before, env_before = flwr_logger.level, os.environ.get("FLWR_LOG_LEVEL")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with third_party_output(verbose=False):
            warnings.warn(RAY_TIP, FutureWarning, stacklevel=1)
            assert os.environ["FLWR_LOG_LEVEL"] == "ERROR"  # what the Ray workers inherit
            assert not flwr_logger.isEnabledFor(logging.WARNING)
            warnings.warn("another library's FutureWarning stays visible", FutureWarning, stacklevel=1)
        with third_party_output(verbose=True):
            warnings.warn(RAY_TIP, FutureWarning, stacklevel=1)
            assert os.environ.get("FLWR_LOG_LEVEL") == env_before
    assert [str(w.message) for w in seen] == ["another library's FutureWarning stays visible", RAY_TIP]
    assert flwr_logger.level == level_before and os.environ.get("FLWR_LOG_LEVEL") == env_before
