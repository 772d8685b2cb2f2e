"""The hospital's app launcher keeps one ClientApp process per run (issue 23: no process start, import and site
set-up per message) and never lets a process serve two runs; `serve` answers token after token and reports
each on its own channel, whatever the app prints."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from fedcare import clientapp_process
from fedcare.clientapp_process import DONE, AppLauncher


class FakeProcess:
    """A started app process: records the tokens it is given and answers each with the done line."""

    def __init__(self, name: str) -> None:
        self.name, self.tokens, self.stopped = name, [], False
        self.stdin = self
        read_fd, self._write_fd = os.pipe()
        self.stdout = os.fdopen(read_fd, "rb")

    def write(self, data: bytes) -> None:
        self.tokens.append(data.decode().strip())
        os.write(self._write_fd, DONE)

    def flush(self) -> None:
        pass

    def poll(self) -> int | None:
        return 0 if self.stopped else None


def _launcher(monkeypatch):
    spawned = []

    def spawn(self):
        spawned.append(FakeProcess(f"p{len(spawned)}"))
        return spawned[-1]

    def stop(proc):
        proc.stopped = True

    monkeypatch.setattr(AppLauncher, "_spawn", spawn)
    monkeypatch.setattr(clientapp_process, "_stop", stop)
    launcher = AppLauncher("127.0.0.1:1", None, {})
    return launcher, spawned


def test_the_messages_of_one_run_go_to_one_process_and_another_run_gets_a_fresh_one(monkeypatch):
    launcher, spawned = _launcher(monkeypatch)

    def deliver(run_id, token):
        if launcher.ready is None:
            launcher.ready = launcher._spawn()  # what run() keeps: one spare started
        proc = launcher._process_for(run_id)
        launcher._hand_over(proc, token)
        return proc

    first = [deliver(7, t) for t in ("train-1", "evaluate-1", "train-2", "evaluate-2")]
    assert len({p.name for p in first}) == 1 and first[0].tokens == ["train-1", "evaluate-1", "train-2", "evaluate-2"]
    assert not first[0].stopped
    other = deliver(8, "train-1")
    assert other is not first[0] and other.tokens == ["train-1"]
    assert first[0].stopped  # no process serves two runs
    assert deliver(7, "train-3") not in (first[0], other) and other.stopped  # run 7 again: fresh, not the old one


def test_a_task_announced_before_an_ask_costs_no_second_ask(monkeypatch):
    """The real `run` loop against a SuperNode stand-in that stores a request and announces it while the app is
    still answering the one before (the overlap: round r's evaluation, round r+1's training): each task is asked
    for once, and one empty ask follows the last (no ask for an announcement already answered)."""
    from flwr.proto.runtime_pb2 import AcquireTaskResponse

    launcher, spawned = _launcher(monkeypatch)
    queued, asks = [], []

    class SuperNode:  # the Runtime API's AcquireTask: the oldest stored task, else nothing
        def AcquireTask(self, request):  # noqa: N802 (Flower's name)
            asks.append([t for t, _ in queued])
            if not queued:
                return AcquireTaskResponse()
            token, run_id = queued.pop(0)
            return AcquireTaskResponse(task={"run_id": run_id}, token=token)

    def store(token):  # what the SuperNode does: store the task, then announce it
        queued.append((token, 5))
        launcher._task_signal.sendto(b"1", launcher._task_signal.getsockname())

    answered = []

    def hand_over(proc, token):
        answered.append(token)
        if token == "evaluate-1":
            store("train-2")  # arrives while evaluate-1 is answered
        time.sleep(0.05)

    monkeypatch.setattr(clientapp_process, "_runtime_client", lambda address, token=None: SuperNode())
    monkeypatch.setattr(launcher, "_hand_over", hand_over)
    monkeypatch.setattr(clientapp_process, "POLL_S", 30.0)  # only announcements wake the loop in this test
    store("evaluate-1")
    launcher.start()
    deadline = time.monotonic() + 30
    while len(asks) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # time for a stale announcement to cause another ask
    launcher.stopping.set()
    launcher._task_signal.sendto(b"stop", launcher._task_signal.getsockname())
    launcher.join(timeout=30)
    assert answered == ["evaluate-1", "train-2"]
    assert asks == [["evaluate-1"], ["train-2"], []]  # one empty ask: the wait after it found no stale announcement


def test_a_process_that_dies_mid_message_is_forgotten(monkeypatch):
    launcher, _ = _launcher(monkeypatch)
    launcher.ready = launcher._spawn()
    proc = launcher._process_for(3)
    os.close(proc._write_fd)  # exits without a done line
    proc.write = lambda data: None
    launcher._hand_over(proc, "train-1")
    assert proc.stopped and launcher.serving is None


def test_serve_answers_each_token_and_its_prints_never_reach_the_done_channel(tmp_path):
    """The real `serve` loop in a subprocess, with `answer_message` replaced by one that prints to stdout."""
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from fedcare import clientapp_process as cp
        cp._warm_up = lambda: None  # no Opacus import
        def answer(address, token, site_yaml, installed):
            print("app output for", token)  # what a library printing to stdout would do
            return 1
        cp.answer_message = answer
        sys.exit(cp.serve("127.0.0.1:1", Path("site.yaml")))
    """)
    proc = subprocess.run([sys.executable, "-c", script], input=b"tok-a\ntok-b\n\n", capture_output=True, timeout=120,
                          cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout == DONE * 2
    assert b"app output for tok-a" in proc.stderr and b"app output for tok-b" in proc.stderr


def test_the_supernode_runner_shortens_only_flowers_idle_beat_and_reply_poll(monkeypatch):
    from flwr.supernode import start_client_internal

    from fedcare import supernode_runner

    slept, now = [], [1000.0]
    monkeypatch.setattr(supernode_runner.time, "sleep", slept.append)
    monkeypatch.setattr(supernode_runner.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(supernode_runner, "_last_busy", float("-inf"))
    monkeypatch.setattr(supernode_runner, "_pull_started", now[0])
    for seconds in (3, 0.5, 3, 2.0):  # idle, then a reply awaited, then the wait for the run's next message
        supernode_runner.shortened_sleep(seconds)
    now[0] += supernode_runner.HELD_PULL_S  # the SuperLink held this empty pull (fedcare/held_pulls.py)
    supernode_runner.shortened_sleep(3)  # the pull was the wait: the next one almost at once
    now[0] += supernode_runner.BUSY_WINDOW_S
    monkeypatch.setattr(supernode_runner, "_pull_started", now[0])  # quick empty pulls (a SuperLink that does not hold)
    supernode_runner.shortened_sleep(3)  # no message for the whole window: back to the idle beat
    assert slept == [supernode_runner.IDLE_PULL_S, supernode_runner.REPLY_POLL_S, supernode_runner.BUSY_PULL_S,
                     2.0, supernode_runner.AFTER_HELD_PULL_S, supernode_runner.IDLE_PULL_S]
    assert supernode_runner.BUSY_PULL_S < supernode_runner.IDLE_PULL_S < supernode_runner.FLOWER_IDLE_S
    _undo_supernode_patches(monkeypatch)
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    for module in (heartbeat, fleet_http_connection):
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", module.HEARTBEAT_DEFAULT_INTERVAL)
    supernode_runner.patch_supernode()
    # a crashed hospital is taken for gone after 2 x 15 s without a heartbeat, not 2 x 30 s
    assert fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == heartbeat.HEARTBEAT_DEFAULT_INTERVAL == 15
    assert start_client_internal.pull_objects.keywords["initial_backoff"] < 1  # Flower's first back-off: 1 s
    assert start_client_internal.time.sleep is supernode_runner.shortened_sleep
    assert start_client_internal.time.time is supernode_runner.time.time  # the rest of `time` unchanged
    assert supernode_runner.time.sleep is not supernode_runner.shortened_sleep  # the real module untouched


def test_the_next_spare_waits_until_the_site_is_quiet(monkeypatch):
    """A spare's start-up (torch, fedcare, Opacus imports) must not run beside the run's next rounds."""
    launcher, spawned = _launcher(monkeypatch)
    assert launcher.spare_due(0.0)  # start-up: nothing serves, a spare at once
    launcher.ready = launcher._spawn()
    launcher._hand_over(launcher._process_for(7), "train-1")
    launcher.last_message = 100.0
    assert launcher.ready is None and launcher.serving is not None
    idle = clientapp_process.SPARE_AFTER_IDLE_S
    assert not launcher.spare_due(100.0 + idle / 2)  # between rounds: no new process
    assert launcher.spare_due(100.0 + idle)  # quiet for long enough
    # a new run's first message while no spare exists yet: a process is started for it at once
    proc = launcher._process_for(8)
    assert proc is spawned[-1] and len(spawned) == 2 and launcher.serving == (8, proc)
    launcher.serving[1].stopped = True
    launcher._forget(proc)
    assert launcher.spare_due(100.0)  # the serving process is gone: a spare at once


def test_the_supernode_announces_each_stored_message_and_the_launcher_wakes_at_once(monkeypatch):
    """The SuperNode's `_pull_and_store_message` (its loop's pull from the SuperLink) is followed by one datagram to
    the launcher when it stored a message, none when there was nothing; the launcher's wait ends on it, long
    before its fallback poll, and `stop()` ends it too."""
    import select
    import time

    from fedcare.supernode_runner import announcing

    launcher, _ = _launcher(monkeypatch)
    calls, results = [], [42, None]

    def pull_and_store(**kwargs):
        calls.append(kwargs)
        return results.pop(0)

    announced = announcing(pull_and_store, launcher.task_signal_address)
    assert announced(state="s", receive="r") == 42 and calls == [{"state": "s", "receive": "r"}]
    start = time.monotonic()
    launcher._wait_for_task(60.0)
    assert time.monotonic() - start < 30.0  # woken by the datagram, not the timeout
    assert announced(state="s", receive="r") is None  # no message: no datagram
    assert select.select([launcher._task_signal], [], [], 0.2)[0] == []
    assert announcing(lambda: 7, "127.0.0.1:9")() == 7  # nobody listening: the SuperNode goes on
    launcher.stopping.set()
    launcher._task_signal.sendto(b"stop", launcher._task_signal.getsockname())
    start = time.monotonic()
    launcher._wait_for_task(60.0)
    assert time.monotonic() - start < 30.0


def _undo_supernode_patches(monkeypatch):
    """What `patch_supernode` replaces, put back after the test."""
    from flwr.supernode import start_client_internal
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    for name in ("time", "pull_objects", "_pull_and_store_message", "_push_messages"):
        monkeypatch.setattr(start_client_internal, name, getattr(start_client_internal, name))
    monkeypatch.setattr(InMemoryNodeState, "store_message", InMemoryNodeState.store_message)


@pytest.mark.parametrize("launcher", [False, True])
def test_the_runner_wraps_flowers_node_loop_once(monkeypatch, launcher):
    from flwr.supernode import start_client_internal
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    from fedcare import supernode_runner

    _undo_supernode_patches(monkeypatch)
    monkeypatch.delenv(clientapp_process.TASK_SIGNAL_ENV, raising=False)
    if launcher:
        monkeypatch.setenv(clientapp_process.TASK_SIGNAL_ENV, "127.0.0.1:9")
    for _ in range(2):  # a second call wraps nothing twice
        supernode_runner.patch_supernode()
        pull = start_client_internal._pull_and_store_message
        assert pull.__name__ == ("pull_store_then_announce" if launcher else "pull_and_store_timed")
        assert isinstance(start_client_internal._push_messages, supernode_runner.ReplyPusher)
        assert not isinstance(start_client_internal._push_messages.push, supernode_runner.ReplyPusher)
        assert InMemoryNodeState.store_message.signals_replies


def test_replies_leave_from_their_own_thread_while_the_node_loop_pulls_the_next_message(monkeypatch):
    """Flower's loop calls `_push_messages` after each stored message and blocks there until the app has replied;
    the ReplyPusher returns at once, and pushes each reply as soon as the node state stores it."""
    import threading
    from types import SimpleNamespace

    from fedcare import supernode_runner

    class State:
        def __init__(self):
            self.replies = []

        def store_message(self, message):
            if message.metadata.reply_to_message_id:
                self.replies.append(message)
            return "id"

    stored, pushed = threading.Event(), []
    monkeypatch.setattr(State, "store_message", State.store_message)
    supernode_runner.signalling_replies(State, stored)
    supernode_runner.signalling_replies(State, stored)  # once only
    done = threading.Event()

    def flowers_push(state, object_store, send, push_object):
        while not state.replies:  # Flower's `_push_messages` waits for a reply, then sends every one
            time.sleep(0.01)
        pushed.extend((r.metadata.reply_to_message_id, send) for r in state.replies)
        state.replies.clear()
        done.set()

    state, message = State(), lambda reply_to: SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=reply_to))
    pusher = supernode_runner.ReplyPusher(flowers_push, stored)
    started = time.monotonic()
    pusher(state=state, object_store=None, send="send-1", push_object=None)  # the loop, after storing a request
    assert time.monotonic() - started < 0.5 and pushed == []  # returned at once: the loop pulls the next message
    state.store_message(message(""))  # a request stored: nothing to push
    assert not stored.is_set()
    pusher(state=state, object_store=None, send="send-2", push_object=None)  # a reconnected loop's functions
    state.store_message(message("m1"))  # the app's reply
    assert done.wait(10) and pushed == [("m1", "send-2")]
    assert pusher.thread.name == "fedcare-reply-pusher" and pusher.thread.is_alive()


def test_the_hospital_gives_its_supernode_the_launchers_signal_address(monkeypatch, tmp_path):
    from fedcare import hospital

    started = {}

    def keep_running(argv, env, site, max_restarts, console, current=None):
        started["env"] = env
        return 0

    class Settings:
        device, source, state_dir, site, data_dir, policy = None, "site.yaml", tmp_path / "state", "site_a", tmp_path, {}

    class Site:
        settings, superlink, insecure = Settings, "127.0.0.1:9092", True

    monkeypatch.setattr(hospital, "load_site_deployment", lambda path: Site)
    monkeypatch.setattr(hospital, "_keep_supernode_running", keep_running)
    monkeypatch.setattr(hospital.LinkMonitor, "start", lambda self, port: None)
    monkeypatch.setattr(hospital.LinkMonitor, "stop", lambda self: None)
    monkeypatch.setattr(hospital.AppLauncher, "start", lambda self: None)
    monkeypatch.setattr(hospital.AppLauncher, "join", lambda self, timeout=None: None)
    from rich.console import Console

    assert hospital.run_hospital(tmp_path / "site.yaml", 9094, None, Console(quiet=True)) == 0
    host, port = started["env"][clientapp_process.TASK_SIGNAL_ENV].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
