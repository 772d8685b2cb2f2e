"""`flwr run .` works as Flower documents it: the project's flat run-config keys, overridden on the command
line (`--run-config "rounds=1 ..."`), drive a whole simulation on Flower's local SuperLink, and the run
folder gets what `fedcare simulate` writes (synthetic sites where there are none, checkpoint, metrics, a complete
summary, the sites' ledgers)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from fedcare.cli import main
from fedcare.flower_processes import FlowerProcess, flower_env, flower_executable

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_flwr_run_with_a_run_config_override_completes_a_simulation(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "fedcare" / "configs" / "tabular_binary.yaml").read_text())
    # no data yet: the ServerApp writes synthetic sites first, as `fedcare simulate` does
    raw["data"] |= {"root": str(tmp_path / "data"), "sites": ["hospital_a", "hospital_b"], "synth_sizes": [60, 60]}
    raw["train"]["rounds"] = 4  # the override below makes it 1
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(raw))

    # Flower's default connection `local` (address ":local:") uses the SuperLink on these ports, starting
    # one itself when none answers; the test starts it the same way (and stops it by its PID)
    http_port, control_port = _free_port(), _free_port()
    env = flower_env(tmp_path / "flwr") | {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
                                           "FLWR_LOCAL_CONTROL_API_PORT": str(control_port), "OMP_NUM_THREADS": "1",
                                           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    superlink = FlowerProcess("superlink", [flower_executable("flower-superlink"), "--insecure", "--simulation",
                                            "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(http_port),
                                            "--disable-runtime-dependency-installation"],
                              env, tmp_path / "superlink.log")
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=2).close()
                break
            except OSError:
                assert time.time() < deadline and superlink.alive(), superlink.log_tail()
                time.sleep(0.5)
        out = subprocess.run(
            [flower_executable("flwr"), "run", ".", "--run-config",
             f'rounds=1 config="{tmp_path / "small.yaml"}" out="{tmp_path / "runs"}"',
             "--federation-config", "num-supernodes=2 client-resources-num-cpus=1", "--stream"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
    finally:
        superlink.stop()
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    run_dirs = list((tmp_path / "runs").glob("flwr-*"))
    assert len(run_dirs) == 1, log[-3000:]
    run_dir = run_dirs[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["rounds_planned"] == 1 and summary["run_id"] == run_dir.name
    assert summary["sites"]["hospital_a"]["rounds_trained"] == [1] and summary["sites"]["hospital_b"]["rounds_trained"] == [1]
    # released through the DP evaluation: 15 validation rows per site under noise 4 per count can leave the
    # noisy class counts too small for an AUROC, which is then reported as undefined, never made up
    auroc = summary["final_weighted"]["auroc"]
    assert auroc is None or 0.0 <= auroc <= 1.0
    assert f"start: no site data under {tmp_path / 'data'}; wrote synthetic data for 2 sites" in summary["events"]
    assert (run_dir / "checkpoints" / "round_001.pt").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["rounds"] == 1  # the resolved config
    assert main(["audit", str(run_dir)]) == 0  # the run folder is as auditable as a `fedcare simulate` one
    assert set(json.loads((run_dir / "metrics.json").read_text())["rounds"]) == {"1"}
    for site in ("hospital_a", "hospital_b"):  # each site accounted its own privacy spend in the run
        ledger = [json.loads(line) for line in (run_dir / "sites" / site / "privacy_ledger.jsonl").read_text().splitlines()]
        assert ledger and all(entry["run_id"] == run_dir.name for entry in ledger)
