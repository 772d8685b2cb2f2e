"""Process hygiene without Flower: a wrapper starts a command through FlowerProcess; the command starts
grandchildren and orphans some of them (a double fork, a new session), as Flower's SuperLink and
SuperNode do with their SuperExec and app processes. Killing the wrapper with SIGKILL, which gives it
no chance to clean up, must leave none of them running; so must `FlowerProcess.stop()`."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedcare.flower_processes import FlowerProcess, children_of, is_running

REPO = Path(__file__).resolve().parents[2]
# a child, a grandchild kept as a child, one orphaned by a double fork, one in its own session
FAMILY = "sleep 301 & (sleep 302 &) ; (setsid sleep 303 &) ; sleep 300"


def _wait(condition, timeout_s=20.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def _family(pid):
    return [p for p in children_of(pid) if is_running(p)]


def _sleepers(marker_pids):
    """The live `sleep 30x` processes among the given pids."""
    found = []
    for pid in marker_pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"sleep\x0030") and is_running(pid):
            found.append(pid)
    return found


@pytest.fixture
def wrapper(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from fedcare.flower_processes import FlowerProcess, flower_env
        FlowerProcess("family", ["bash", "-c", {FAMILY!r}], flower_env(Path({str(tmp_path)!r})), None)
        print("started", flush=True)
        time.sleep(600)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        yield proc
    finally:
        for pid in [proc.pid, *children_of(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def test_sigkill_of_the_wrapper_leaves_no_descendant_running(wrapper):
    # all four sleeps are up: the orphans were re-parented to the guard, still below the wrapper
    assert _wait(lambda: len(_sleepers(_family(wrapper.pid))) == 4), _family(wrapper.pid)
    family = _family(wrapper.pid)
    wrapper.kill()  # SIGKILL: the wrapper runs no clean-up code
    wrapper.wait()
    assert _wait(lambda: not [p for p in family if is_running(p)]), [
        (p, Path(f"/proc/{p}/cmdline").read_bytes()) for p in family if is_running(p)]


def test_stop_stops_the_whole_family(tmp_path):
    proc = FlowerProcess("family", ["bash", "-c", FAMILY], dict(os.environ), tmp_path / "family.log")
    try:
        assert _wait(lambda: len(_sleepers(_family(proc.pid))) == 4)
        family = _family(proc.pid)
        proc.stop(grace_s=5.0)
        assert not [p for p in family if is_running(p)]
    finally:
        proc.stop(grace_s=1.0)


def test_the_commands_exit_code_comes_through(tmp_path):
    proc = FlowerProcess("exit", ["bash", "-c", "exit 3"], dict(os.environ), None)
    assert proc.proc.wait(timeout=30) == 3
    killed = FlowerProcess("killed", ["bash", "-c", "kill -9 $$"], dict(os.environ), None)
    assert killed.proc.wait(timeout=30) == 128 + 9
