"""Held pulls (fedcare/held_pulls.py): the SuperLink answers an empty pull once there is something (issue 23)."""

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore

from fedcare import held_pulls
from fedcare.held_pulls import Arrivals, hold_until_found, wait_for_objects


def _answer(*messages):
    return SimpleNamespace(messages_list=list(messages), message_object_trees=[])


def _later(seconds, action):
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def test_an_empty_pull_is_answered_once_its_key_is_stored():
    arrivals, inbox, pulls = Arrivals(), [], []

    def pull():
        pulls.append(time.monotonic())
        return _answer(*inbox)

    def deliver():
        inbox.append("train message")
        arrivals.stored(("node", 7))

    started = time.monotonic()
    _later(0.2, lambda: arrivals.stored(("node", 8)))  # another site's message: this pull keeps waiting
    _later(0.4, deliver)
    answer = hold_until_found(pull, ("node", 7), 30.0, held_pulls._has_messages, arrivals, threading.BoundedSemaphore(4))
    assert answer.messages_list == ["train message"]
    assert len(pulls) == 2  # once at once, once after the node's message was stored: no polling in between
    assert 0.35 < time.monotonic() - started < 10  # well before the 30 s hold ran out


def test_a_hold_that_runs_out_answers_the_empty_pull_without_pulling_again():
    pulls = []
    started = time.monotonic()
    answer = hold_until_found(lambda: pulls.append(1) or _answer(), ("run", 1), 0.3, held_pulls._has_messages,
                              Arrivals(), threading.BoundedSemaphore(4))
    assert answer.messages_list == [] and len(pulls) == 1
    assert time.monotonic() - started >= 0.3


def test_something_stored_during_the_pull_ends_the_wait_at_once():
    """The count is read before the pull: a message stored while Flower's handler looks is not missed."""
    arrivals, pulls = Arrivals(), []

    def pull():
        pulls.append(1)
        if len(pulls) == 1:
            arrivals.stored(("run", 3))  # stored after the handler looked, before the wait began
            return _answer()
        return _answer("reply")

    started = time.monotonic()
    answer = hold_until_found(pull, ("run", 3), 30.0, held_pulls._has_messages, arrivals, threading.BoundedSemaphore(4))
    assert answer.messages_list == ["reply"] and len(pulls) == 2
    assert time.monotonic() - started < 10


def test_beyond_max_held_pulls_a_pull_is_answered_at_once():
    """Each held pull holds one of the SuperLink's handler threads: a flood of pulls cannot hold them all."""
    slots = threading.BoundedSemaphore(1)
    assert slots.acquire(blocking=False)  # the one slot is taken by another held pull
    started = time.monotonic()
    answer = hold_until_found(_answer, ("node", 1), 30.0, held_pulls._has_messages, Arrivals(), slots)
    assert answer.messages_list == [] and time.monotonic() - started < 10
    slots.release()
    # a held pull gives its slot back when it ends
    hold_until_found(_answer, ("node", 1), 0.05, held_pulls._has_messages, Arrivals(), slots)
    assert slots.acquire(blocking=False)


def _stored_message_tree(store):
    """A request as the ServerApp pushes it: the message first (its objects preregistered, empty), its arrays after."""
    content = RecordDict({"arrays": ArrayRecord([np.arange(6, dtype=np.float32)]),
                          "config": ConfigRecord({"server-round": 1})})
    message = Message(content, dst_node_id=5, message_type="train")
    tree = get_object_tree(message)
    store.preregister(1, tree)
    return tree, {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(message).items()}


@pytest.mark.usefixtures("serverapp_identity")  # a Message is made by a ServerApp
def test_a_pulled_message_waits_until_its_objects_are_stored(monkeypatch):
    class NotifyingStore(InMemoryObjectStore):  # a subclass: Flower's own class stays as it is
        pass

    arrivals = Arrivals()
    monkeypatch.setattr(held_pulls, "ARRIVALS", arrivals)
    held_pulls.notify_stores([], [NotifyingStore])
    store = NotifyingStore()
    tree, objects = _stored_message_tree(store)
    assert len(objects) >= 3 and not any(store.get(i) for i in objects)

    def push_objects():
        for object_id, content in objects.items():
            store.put(object_id, content)
            time.sleep(0.05)

    started = time.monotonic()
    _later(0.2, push_objects)
    assert wait_for_objects(store, [tree], 30.0, arrivals)
    assert all(store.get(i) for i in objects)
    assert time.monotonic() - started < 10
    assert arrivals.count(held_pulls.OBJECTS) == len(objects)  # each real put was counted

    other = NotifyingStore()
    missing_tree, _ = _stored_message_tree(other)
    started = time.monotonic()
    assert not wait_for_objects(other, [missing_tree], 0.2, arrivals)  # never pushed: the wait is bounded
    assert time.monotonic() - started >= 0.2


def test_the_held_handlers_wake_on_their_own_node_and_run(monkeypatch):
    """The wrapped Flower handlers: a SuperNode's pull wakes on a message stored for its node, the ServerApp's on a
    reply of its run; what is stored is counted by the link state's own store methods."""
    arrivals = Arrivals()
    monkeypatch.setattr(held_pulls, "ARRIVALS", arrivals)
    monkeypatch.setattr(held_pulls, "NODE_HOLD_S", 30.0)
    monkeypatch.setattr(held_pulls, "REPLY_HOLD_S", 30.0)

    class State:
        object_store = SimpleNamespace(get=lambda object_id: b"content")

        def __init__(self):
            self.ins, self.res = {}, {}

        def store_message_ins(self, message):
            self.ins.setdefault(message.metadata.dst_node_id, []).append(message)
            return "id"

        def store_message_res(self, message):
            if message.metadata.run_id == 0:
                return None  # refused by the state: nothing to count
            self.res.setdefault(message.metadata.run_id, []).append(message)
            return "id"

    held_pulls.notify_stores([State], [])
    state = State()
    fleet = held_pulls.holding_fleet_pull(lambda request, state, store: _answer(*state.ins.pop(request.node.node_id, [])))
    runtime = held_pulls.holding_runtime_pull(lambda request, state, task: _answer(*state.res.pop(task.run_id, [])))

    def msg(dst=0, run=0):
        return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=dst, run_id=run))

    _later(0.2, lambda: state.store_message_ins(msg(dst=9)))
    _later(0.4, lambda: state.store_message_ins(msg(dst=4)))
    started = time.monotonic()
    answer = fleet(SimpleNamespace(node=SimpleNamespace(node_id=4)), state, state.object_store)
    assert len(answer.messages_list) == 1 and answer.messages_list[0].metadata.dst_node_id == 4
    assert 0.35 < time.monotonic() - started < 10 and arrivals.count(("node", 9)) == 1

    _later(0.2, lambda: state.store_message_res(msg(run=0)))  # refused: wakes nobody
    _later(0.4, lambda: state.store_message_res(msg(run=11)))
    started = time.monotonic()
    answer = runtime(SimpleNamespace(message_ids=["x"]), state, SimpleNamespace(run_id=11))
    assert len(answer.messages_list) == 1 and 0.35 < time.monotonic() - started < 10
    assert arrivals.count(("run", 0)) == 0

    started = time.monotonic()
    answer = runtime(SimpleNamespace(message_ids=[]), state, SimpleNamespace(run_id=12))  # names no reply
    assert answer.messages_list == [] and time.monotonic() - started < held_pulls.REPLY_HOLD_S / 2

