"""Process hygiene in a real deployment (TLS on loopback): while `fedcare server` waits for hospitals
with its SuperLink, SuperExec and ServerApp up and site_a's SuperNode connected,

1. `fedcare server --resume` on the same run folder is refused with one line and changes nothing;
2. `kill -9` of the `fedcare client` wrapper leaves none of its processes running (SuperNode, the site's
   own ClientApp process);
3. `kill -9` of the `fedcare server` wrapper leaves none of its processes running (SuperLink, SuperExec,
   ServerApp, `flwr run`), and the run folder is free again.
SIGKILL gives a wrapper no chance to clean up: its children must die with it by themselves.
"""

import signal
import time
from pathlib import Path

import pytest

from fedcare.flower_processes import children_of, is_running
from fedcare.run_lock import live_processes
from tests.e2e.deployment_harness import Deployment

pytestmark = pytest.mark.slow


def _commands(pids):
    out = {}
    for pid in pids:
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return out


def _family(proc):
    return _commands(p for p in children_of(proc.pid) if is_running(p))


def _has(proc, name):
    return any(name in cmd for cmd in _family(proc).values())


def _survivors(pids, timeout_s=40.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(is_running(p) for p in pids):
        time.sleep(0.2)
    return _commands(p for p in pids if is_running(p))


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("hygiene"), rounds=1, round_timeout_s=30.0)
    facts = {}
    try:
        server = dep.start_server()
        dep.wait_until_registered()
        client = dep.start_client("site_a")
        dep.wait_for("the ServerApp to start", lambda: _has(server, "flwr-serverapp"), timeout_s=180)
        dep.wait_for("site_a's SuperNode and its ClientApp process",
                     lambda: _has(client, "fedcare.supernode_runner") and _has(client, "fedcare.clientapp_process"),
                     timeout_s=180)

        before = sorted(p.name for p in dep.run_dir.iterdir())
        resume = dep._start("resume", "server", "--resume", str(dep.run_dir), "--certs", str(dep.certs.root),
                            "--address", f"127.0.0.1:{dep.port}")
        facts["resume_code"] = resume.wait(timeout=120)
        facts["resume_log"] = dep.log("resume")
        facts["after_resume"] = (sorted(p.name for p in dep.run_dir.iterdir()) == before
                                 and (dep.run_dir / ".flower").is_dir() and server.poll() is None)

        facts["client_family"] = _family(client)
        client.send_signal(signal.SIGKILL)
        facts["client_survivors"] = _survivors(list(facts["client_family"]))

        facts["server_family"] = _family(server)
        server.send_signal(signal.SIGKILL)
        facts["server_survivors"] = _survivors(list(facts["server_family"]))
        facts["run_still_held_by"] = live_processes(dep.run_dir)
        yield facts
    finally:
        dep.stop_all()


def test_resume_while_the_run_is_alive_is_refused_with_one_line(facts):
    assert facts["resume_code"] == 2, facts["resume_log"]
    lines = facts["resume_log"].strip().splitlines()
    assert len(lines) == 1 and "this run is still running" in lines[0] and "flower-superlink" in lines[0], lines
    assert facts["after_resume"]  # the running run lost nothing: same files, its FLWR_HOME, its wrapper alive


def test_kill_9_of_the_client_wrapper_leaves_no_orphan(facts):
    family = facts["client_family"]
    assert any("fedcare.supernode_runner" in c for c in family.values())
    assert any("fedcare.clientapp_process" in c for c in family.values())
    assert facts["client_survivors"] == {}


def test_kill_9_of_the_server_wrapper_leaves_no_orphan(facts):
    family = facts["server_family"].values()
    # the guard is the SuperLink; `fedcare.flwr_cli run` is `flwr run`
    for name in ("fedcare.superlink_guard", "flower-superexec", "flwr-serverapp", "fedcare.flwr_cli run"):
        assert any(name in c for c in family), (name, family)
    assert facts["server_survivors"] == {}
    assert facts["run_still_held_by"] == []
