"""A real deployment on loopback: `fedcare server` (SuperLink with TLS and SuperNode authentication)
and three `fedcare client` hospitals run 2 rounds of a tiny task; meanwhile a hospital whose key
the center never registered and an impostor with a wrong key for site_a are refused."""

import json
import re
import signal

import pytest
import torch

from fedcare.audit_run import audit_path
from fedcare.flower_processes import is_running
from server.checkpoints import load_checkpoint
from shared.privacy.keys import load_public_key, public_key_fingerprint
from shared.tasks.registry import build_task
from tests.e2e.deployment_harness import Deployment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("deploy"), rounds=2, round_timeout_s=90.0, extra_sites=("site_d",))
    try:
        server = dep.start_server()
        dep.wait_until_registered()
        for site in dep.sites:
            dep.start_client(site)
        healthy: list[tuple[int, str]] = []  # a running hospital's health check, while the center is up
        dep.wait_for("site_a's health check to pass", lambda: healthy.append(dep.health(dep.sites[0])) or
                     healthy[-1][0] == 200, timeout_s=120)
        unregistered = dep.start_client("site_d", None, None, "--max-restarts", "0")
        impostor = dep.start_client("site_a", dep.site_yaml("site_a", dep.impostor_key(), name="impostor"), "impostor",
                                    "--max-restarts", "0")
        refusals = {"site_d": unregistered.wait(timeout=240), "impostor": impostor.wait(timeout=240)}
        code = server.wait(timeout=330)
        center_left = [pid for pid in dep.ours() if _is_center_process(pid, dep.port)]
        dep.wait_for("site_a's health check to fail without the center", lambda: healthy.append(dep.health(dep.sites[0]))
                     or healthy[-1][0] == 503, timeout_s=120)
        yield dep, code, refusals, center_left, healthy
    finally:
        dep.stop_all()


def _is_center_process(pid: int, port: int) -> bool:
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return False
    center = ("fedcare.superlink_guard", "flwr-serverapp", "fedcare.flwr_cli run", "fedcare server")
    return any(name in cmd for name in center) or (
        "flower-superexec" in cmd and f"--runtime-api-address 127.0.0.1:{port}" in cmd
    )


def test_run_completes_with_every_site_in_every_round(clean_run):
    dep, code, _, _, _ = clean_run
    assert code == 0, dep.diagnostics()
    summary = json.loads((dep.run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["rounds_planned"] == 2 and summary["run_id"] == dep.run_id()
    for site in dep.sites:
        assert summary["sites"][site]["rounds_trained"] == [1, 2]
        assert summary["sites"][site]["rounds_missed"] == {}
    assert "TLS + SuperNode authentication" in dep.log("server")
    assert re.search(r"round 2/2", dep.log("server"))  # progress streamed from metrics.json


def test_a_hospitals_health_check_follows_its_superlink(clean_run):
    dep, _, _, _, healthy = clean_run
    assert (200, "ok\n") in healthy  # TLS probe of the real SuperLink, through the control-plane guard
    status, body = healthy[-1]  # the center has stopped: Flower's own SuperNode /health would still say 200
    assert status == 503 and body.startswith(f"cannot reach the SuperLink at 127.0.0.1:{dep.port}"), healthy[-3:]
    assert "cannot reach the SuperLink" in dep.log(dep.sites[0])


def test_global_checkpoints_are_complete_and_change(clean_run):
    dep, _, _, _, _ = clean_run
    model_keys = set(build_task(dep.cfg).build_model().state_dict())
    ckpts = [load_checkpoint(dep.run_dir / "checkpoints" / f"round_{r:03d}.pt") for r in range(3)]
    assert sorted(p.name for p in (dep.run_dir / "checkpoints").iterdir()) == [f"round_{r:03d}.pt" for r in range(3)]
    for r, ckpt in enumerate(ckpts):
        assert ckpt["round"] == r and ckpt["run_id"] == dep.run_id() and set(ckpt["state_dict"]) == model_keys
    for before, after in zip(ckpts, ckpts[1:]):
        assert any(not torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in model_keys)


def test_each_hospital_keeps_a_signed_ledger_with_one_entry_per_round(clean_run):
    dep, _, _, _, _ = clean_run
    for site in dep.sites:
        entries = dep.ledger(site)
        assert [(e["run_id"], e["round"], e["status"]) for e in entries] == [(dep.run_id(), 1, "trained"),
                                                                              (dep.run_id(), 2, "trained")]
        releases = dep.ledger(site, evaluations=True)  # each round's validation statistics, released under DP
        assert [(e["round"], e["mechanism"]["sample_rate"], e["mechanism"]["steps"]) for e in releases] == [(1, 1.0, 1),
                                                                                                           (2, 1.0, 1)]
        fingerprint = public_key_fingerprint(load_public_key(dep.certs.identity_key(site)))
        assert {e["key_fingerprint"] for e in entries} == {fingerprint}  # signed with the key the hospital created
        assert 0 < entries[0]["cumulative_epsilon"] < entries[1]["cumulative_epsilon"] <= 4.0 + 1e-6
    audits = audit_path(dep.root / "state", {s: dep.certs.identity_key(s) for s in dep.sites})
    assert {a.site: a.status for a in audits} == {s: "ok" for s in dep.sites}


def test_unregistered_and_wrong_key_supernodes_are_refused(clean_run):
    dep, _, refusals, _, _ = clean_run
    assert refusals == {"site_d": 1, "impostor": 1}
    for name in ("site_d", "impostor"):
        log = dep.log(name)
        assert "[code: 2004] Failed to activate SuperNode" in log, log[-2000:]
        assert "SuperNode ID:" not in log  # never got a node id, never received a message
    assert dep.ledger("impostor") == [] and dep.ledger("site_d") == []
    registered = re.findall(r"registered SuperNode key of (\w+)", dep.log("server"))
    assert registered == dep.sites


def test_server_stops_its_own_processes(clean_run):
    _, _, _, center_left, _ = clean_run
    assert center_left == []


def test_sigterm_stops_the_server_and_everything_it_started(tmp_path):
    dep = Deployment(tmp_path, rounds=1, round_timeout_s=30.0)
    try:
        server = dep.start_server()
        dep.wait_for("the run to be submitted", lambda: "run submitted" in dep.log("server"), timeout_s=120)
        started = [pid for pid in dep.ours() if _is_center_process(pid, dep.port)]
        assert len(started) >= 3  # fedcare server, the SuperLink (fedcare.superlink_guard), its superexec, flwr run
        server.send_signal(signal.SIGTERM)  # what `docker stop` sends; Ctrl-C takes the same path
        assert server.wait(timeout=60) == 130
        assert [pid for pid in started if is_running(pid)] == []
        assert "interrupted" in dep.log("server")
    finally:
        dep.stop_all()
