"""Held pulls: the SuperLink answers a pull that finds nothing once there is something, not at once (issue 23).

Flower 1.41's SuperNodes and ServerApp poll the SuperLink: a SuperNode asks for its next message every beat
(`fedcare.supernode_runner`: 0.1 s while a run's messages flow), the ServerApp's Grid asks for the sites' replies
every beat (`server.prompt_grid`: 0.1 s). Each hop then waited half a beat on average (~50 ms, twice per phase
of a round) and every empty poll cost CPU on both sides. `install()`, called by `fedcare.superlink_guard`, makes
the SuperLink hold such a pull, as HTTP long polling does:

- a SuperNode's pull that finds no message waits up to NODE_HOLD_S for a message to be stored for that node,
  then looks again and answers (fedcare's SuperNode pushes its replies from a thread of their own,
  `fedcare.supernode_runner.ReplyPusher`, and Flower's pulls only when it has no reply to push: a held pull
  delays nothing of its own);
- the ServerApp's pull for replies that finds none waits up to REPLY_HOLD_S for a reply of its run (a pull
  that names no message is answered at once);
- a pull that found messages waits up to COMPLETE_WAIT_S until their objects (the arrays, pushed right after
  the message) are all stored, so the receiver's first object pull finds them instead of backing off.

The answers are Flower's own (its handler runs again after the wait); only their timing changes, so a SuperNode
or ServerApp without fedcare, and a fedcare one against a plain SuperLink, work as before. FastAPI runs these
handlers in a pool of 40 threads: at most MAX_HELD pulls are held at once, any further one is answered at once.
The waits are bounded well inside the clients' 30 s request timeout.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import Any

NODE_HOLD_S = 2.0
REPLY_HOLD_S = 1.0
COMPLETE_WAIT_S = 0.5
MAX_HELD = 16

OBJECTS = ("objects",)  # the key of every stored object (one key: a waiter looks at its own objects itself)


class Arrivals:
    """Counts what was stored, per key, and wakes whoever waits for a key to change."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count: Counter[Hashable] = Counter()

    def stored(self, key: Hashable) -> None:
        with self._changed:
            self._count[key] += 1
            self._changed.notify_all()

    def count(self, key: Hashable) -> int:
        with self._changed:
            return self._count[key]

    def wait_for_change(self, key: Hashable, seen: int, timeout: float) -> bool:
        """True once `key` was stored again after `seen` (a `count` taken before looking), False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count[key] != seen, timeout=max(0.0, timeout))


ARRIVALS = Arrivals()
_HELD = threading.BoundedSemaphore(MAX_HELD)


def hold_until_found(pull: Callable[[], Any], key: Hashable, hold_s: float, found: Callable[[Any], bool],
                     arrivals: Arrivals | None = None, slots: threading.BoundedSemaphore | None = None) -> Any:
    """`pull()`, and while it finds nothing (`found` false) and `hold_s` has not passed, wait for `key` to be
    stored and pull again; the last answer. The count is read before each pull: something stored during it
    ends the next wait at once."""
    arrivals, slots = arrivals or ARRIVALS, slots or _HELD
    deadline = time.monotonic() + hold_s
    held = False
    try:
        while True:
            seen = arrivals.count(key)
            answer = pull()
            if found(answer):
                return answer
            if not held:
                held = slots.acquire(blocking=False)
                if not held:  # MAX_HELD pulls are waiting already: answer as Flower does
                    return answer
            if not arrivals.wait_for_change(key, seen, deadline - time.monotonic()):
                return answer
    finally:
        if held:
            slots.release()


def wait_for_objects(store: Any, trees: Iterable[Any], wait_s: float, arrivals: Arrivals | None = None) -> bool:
    """Until every object of `trees` (Flower ObjectTrees) has its content in `store`, at most `wait_s`; whether
    they all have."""
    arrivals = arrivals or ARRIVALS
    missing = [node.object_id for tree in trees for node in _walk(tree)]
    deadline = time.monotonic() + wait_s
    while True:
        seen = arrivals.count(OBJECTS)
        missing = [object_id for object_id in missing if not store.get(object_id)]
        if not missing:
            return True
        if not arrivals.wait_for_change(OBJECTS, seen, deadline - time.monotonic()):
            return False


def _walk(tree: Any) -> Iterable[Any]:
    yield tree
    for child in tree.children:
        yield from _walk(child)


def _notify_after(cls: type, name: str, key_of: Callable[..., Hashable | None]) -> None:
    """Wrap `cls.name` (a store method): once it returns, the key of what it stored counts one more."""
    original = getattr(cls, name)

    def storing(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        key = key_of(result, *args, **kwargs)
        if key is not None:
            ARRIVALS.stored(key)
        return result

    setattr(cls, name, storing)


def holding_fleet_pull(pull: Callable[..., Any]) -> Callable[..., Any]:
    """Flower's Fleet `pull_messages(request, state, store)` (a SuperNode asks for its next message), held."""

    def held_fleet_pull(request: Any, state: Any, store: Any) -> Any:
        answer = hold_until_found(lambda: pull(request=request, state=state, store=store),
                                  ("node", request.node.node_id), NODE_HOLD_S, _has_messages)
        if _has_messages(answer):
            wait_for_objects(store, answer.message_object_trees, COMPLETE_WAIT_S)
        return answer

    return held_fleet_pull


def holding_runtime_pull(pull: Callable[..., Any]) -> Callable[..., Any]:
    """Flower's Runtime `pull_messages(request, state, task)` (the ServerApp asks for replies), held."""

    def held_runtime_pull(request: Any, state: Any, task: Any) -> Any:
        if not request.message_ids:  # asks for no reply: nothing to wait for
            return pull(request, state, task)
        answer = hold_until_found(lambda: pull(request, state, task), ("run", task.run_id), REPLY_HOLD_S,
                                  _has_messages)
        if _has_messages(answer):
            wait_for_objects(state.object_store, answer.message_object_trees, COMPLETE_WAIT_S)
        return answer

    return held_runtime_pull


def notify_stores(state_classes: Iterable[type], store_classes: Iterable[type]) -> None:
    """Count what link states (`store_message_ins/res` return the stored message's id, None when refused) and
    object stores (`put`) store."""
    for state_class in state_classes:
        _notify_after(state_class, "store_message_ins",
                      lambda stored, message: None if stored is None else ("node", message.metadata.dst_node_id))
        _notify_after(state_class, "store_message_res",
                      lambda stored, message: None if stored is None else ("run", message.metadata.run_id))
    for store_class in store_classes:
        _notify_after(store_class, "put", lambda _stored, *args, **kwargs: OBJECTS)


def install() -> None:
    """Patch the SuperLink's link states, object stores and pull handlers (flwr 1.41, checked by the caller)."""
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
    from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
    from flwr.supercore.object_store.sql_object_store import SqlObjectStore
    from flwr.superlink.servicer.fleet import fleet_handlers
    from flwr.superlink.servicer.runtime import runtime_handlers

    notify_stores((InMemoryLinkState, SqlLinkState), (InMemoryObjectStore, SqlObjectStore))
    fleet_handlers.pull_messages = holding_fleet_pull(fleet_handlers.pull_messages)
    runtime_handlers.pull_messages = holding_runtime_pull(runtime_handlers.pull_messages)


def _has_messages(answer: Any) -> bool:
    return len(answer.messages_list) > 0
