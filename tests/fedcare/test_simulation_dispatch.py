"""The simulation's dispatcher moves a request as soon as the Grid signals its push, and signals each stored
reply (fedcare/simulation_dispatch.py); Flower's functions are back in place after a run. The fallback beat is
set to 30 s here, so an answer within the 10 s the test waits can only come from the signal."""

import threading
from queue import Empty, Queue
from types import SimpleNamespace

import pytest

from fedcare import simulation_dispatch
from fedcare.simulation_dispatch import make_dispatch, signalled_dispatch
from server.prompt_grid import DispatchSignals, PromptGrid


def msg(message_id, reply_to=""):
    return SimpleNamespace(metadata=SimpleNamespace(message_id=message_id, reply_to_message_id=reply_to))


class LinkState:
    def __init__(self):
        self.ins: dict[int, list] = {1: [], 2: []}
        self.res: list = []
        self.scans = 0

    def get_message_ins(self, node_id, limit):
        self.scans += 1
        out, self.ins[node_id] = self.ins[node_id][:limit], self.ins[node_id][limit:]
        return out

    def store_message_res(self, message):
        self.res.append(message)


@pytest.fixture
def no_beat(monkeypatch):
    monkeypatch.setattr(simulation_dispatch, "FLOWER_DISPATCH_S", 30.0)


def test_a_pushed_request_is_dispatched_on_the_signal_not_the_beat(no_beat):
    signals, state, queue, stop = DispatchSignals(), LinkState(), Queue(), threading.Event()
    add, _ = make_dispatch(signals)
    thread = threading.Thread(target=add, args=(state, queue, {1: 0, 2: 1}, stop), daemon=True)
    thread.start()
    try:
        for node, request in ((2, msg("train for node 2")), (1, msg("evaluate for node 1"))):
            state.ins[node].append(request)
            signals.pushed.set()
            assert queue.get(timeout=10) is request
    finally:
        stop.set()
        signals.pushed.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert state.scans <= 3 * 2  # one scan of both nodes per wake-up: no busy loop


def test_a_stored_reply_wakes_the_grid(no_beat):
    signals, state, queue, stop = DispatchSignals(), LinkState(), Queue(), threading.Event()
    _, put = make_dispatch(signals)
    thread = threading.Thread(target=put, args=(state, queue, stop), daemon=True)
    thread.start()
    try:
        reply = msg("reply", reply_to="request")
        queue.put(reply)
        assert signals.replied.wait(timeout=10) and state.res == [reply]
    finally:
        stop.set()
        thread.join(timeout=10)


def test_a_site_gets_its_next_request_only_after_its_reply_to_the_last_is_stored(no_beat):
    """The center sends round r's evaluation and round r+1's training together (server/strategy.py): the site must
    answer them one after the other, in that order, as a deployed site does."""
    signals, state, requests, replies, stop = DispatchSignals(), LinkState(), Queue(), Queue(), threading.Event()
    add, put = make_dispatch(signals)
    threads = [threading.Thread(target=add, args=(state, requests, {1: 0, 2: 1}, stop), daemon=True),
               threading.Thread(target=put, args=(state, replies, stop), daemon=True)]
    for thread in threads:
        thread.start()
    try:
        state.ins[1] += [msg("evaluate r"), msg("train r+1")]
        state.ins[2] += [msg("evaluate r for node 2")]
        signals.pushed.set()
        first = [requests.get(timeout=10), requests.get(timeout=10)]
        assert sorted(m.metadata.message_id for m in first) == ["evaluate r", "evaluate r for node 2"]
        with pytest.raises(Empty):
            requests.get(timeout=0.5)  # node 1's training waits for its evaluation's reply
        replies.put(msg("reply 2", reply_to="evaluate r for node 2"))  # another node's reply frees nothing of node 1
        with pytest.raises(Empty):
            requests.get(timeout=0.5)
        replies.put(msg("reply 1", reply_to="evaluate r"))
        assert requests.get(timeout=10).metadata.message_id == "train r+1"  # at once: the beat is 30 s here
    finally:
        stop.set()
        signals.pushed.set()
        for thread in threads:
            thread.join(timeout=10)


class Inner:
    """An in-memory grid whose reply exists only after the dispatcher thread stored it."""

    def __init__(self, signals):
        self.signals, self.stored, self.pulls = signals, [], 0

    def push_messages(self, messages):
        def answer():
            self.stored.append(Reply("id-a"))
            self.signals.replied.set()

        threading.Timer(0.05, answer).start()
        return ["id-a"]

    def pull_messages(self, ids):
        self.pulls += 1
        out, self.stored = self.stored, []
        return out


class Reply:
    def __init__(self, reply_to):
        self.metadata = type("M", (), {"reply_to_message_id": reply_to})()


def test_the_grid_signals_its_push_and_waits_for_the_reply_signal():
    signals = DispatchSignals()
    inner = Inner(signals)
    grid = PromptGrid(inner, pull_interval=30.0, signals=signals)  # the beat alone would wait 30 s
    replies = list(grid.send_and_receive(["request"], timeout=20))
    assert [r.metadata.reply_to_message_id for r in replies] == ["id-a"]
    assert signals.pushed.is_set() and inner.pulls in (1, 2)  # (an empty pull,) one after the signal


def test_flowers_functions_are_put_back_after_the_run():
    from flwr.server.superlink.fleet.vce import vce_api

    before = vce_api.add_messages_to_queue, vce_api.put_message_into_state
    with signalled_dispatch():
        assert vce_api.add_messages_to_queue is not before[0] and vce_api.put_message_into_state is not before[1]
    assert (vce_api.add_messages_to_queue, vce_api.put_message_into_state) == before
