"""Flower's Simulation Runtime without its polling beat: messages move between the ServerApp and the sites as
soon as they exist (issue 23).

In `fedcare simulate` the ServerApp, Flower's message dispatcher and the sites' Ray workers live in one
process. Flower 1.41 moves a round's requests from the link state to the workers in a thread that looks every
0.1 s (`flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue`), and the Grid pulls the replies on
its own beat: each phase of a round (train, evaluate) waited ~0.1-0.2 s with nothing to do, 30-37 % of a steady
round of the default configs. Here the Grid signals each push and the dispatcher signals each stored reply
(`server.prompt_grid.DispatchSignals`), and each side waits on the other's signal; the old beat remains as a
timeout, so a missed signal costs what it cost before. The two functions below are Flower's, with the wait
changed and one request per site in flight (`make_dispatch`); `signalled_dispatch` checks the installed flwr
version, since it replaces module attributes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty, Queue
from threading import Event, Lock
from typing import Any

from fedcare.flower_processes import require_flower_version
from server.prompt_grid import DispatchSignals

FLOWER_DISPATCH_S = 0.1  # Flower's beat, kept as the fallback


def make_dispatch(signals: DispatchSignals) -> tuple[Any, Any]:
    """Flower's `add_messages_to_queue` and `put_message_into_state`, signalled instead of polled, and one message
    per site at a time: a site's next request is dispatched once its reply to the previous one is stored, so each
    site answers its requests in the order the center sent them, as a deployed site does (the center sends round
    r+1's training with round r's evaluation, server/strategy.py; Flower would run both at once)."""
    answering: dict[str, int] = {}  # id of a dispatched request -> its node, until the reply is stored
    lock = Lock()

    def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: Any, f_stop: Event) -> None:
        while not f_stop.is_set():
            signals.pushed.clear()  # before the scan: a push (or a freed site) during or after it wakes the wait below
            for node_id in nodes_mapping.keys():
                with lock:
                    if node_id in answering.values():
                        continue
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    with lock:
                        answering[msg.metadata.message_id] = node_id
                    queue.put(msg)
            signals.pushed.wait(FLOWER_DISPATCH_S)

    def put_message_into_state(state: Any, queue: Queue, f_stop: Event) -> None:
        while not f_stop.is_set():
            try:
                message_reply = queue.get(timeout=1.0)
            except Empty:
                continue
            state.store_message_res(message_reply)
            with lock:
                freed = answering.pop(message_reply.metadata.reply_to_message_id, None)
            if freed is not None:
                signals.pushed.set()  # that site's next request may go now
            signals.replied.set()

    return add_messages_to_queue, put_message_into_state


@contextmanager
def signalled_dispatch() -> Iterator[DispatchSignals]:
    """Within the block, this process's Simulation Runtime is woken by the signals it yields (give them to the
    run's Grid) and signals each reply; Flower's functions are put back after it."""
    from flwr.server.superlink.fleet.vce import vce_api

    require_flower_version("fedcare simulate")
    signals = DispatchSignals()
    original = vce_api.add_messages_to_queue, vce_api.put_message_into_state
    vce_api.add_messages_to_queue, vce_api.put_message_into_state = make_dispatch(signals)
    try:
        yield signals
    finally:
        vce_api.add_messages_to_queue, vce_api.put_message_into_state = original
