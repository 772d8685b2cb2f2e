"""A Grid that collects the sites' replies as they arrive, not on Flower's fixed 3 s beat.

Flower 1.41's deployment Grid (`flwr.superlink.grid.http_grid`) pulls replies every 3 s, so each phase of a
round (train, evaluate) waits up to 3 s after the last reply (issue 23: deployment rounds cost seconds of
idle time). This wrapper keeps Flower's `send_and_receive` semantics (push, then pull until every reply is
in or the timeout passes) and pulls every PULL_S; everything else goes to the wrapped Grid. In a local runtime
that shares this process (`fedcare simulate`), `DispatchSignals` replace the beat: the Grid signals each push
and waits for the runtime's signal that a reply was stored (fedcare/simulation_dispatch.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

PULL_S = 0.2


@dataclass
class DispatchSignals:
    """Events between a Grid and a message dispatcher in the same process: `pushed` after the Grid stored
    requests, `replied` after the dispatcher stored a reply."""

    pushed: threading.Event = field(default_factory=threading.Event)
    replied: threading.Event = field(default_factory=threading.Event)


class PromptGrid(Grid):
    def __init__(self, grid: Grid, pull_interval: float = PULL_S, signals: DispatchSignals | None = None) -> None:
        self._grid, self._pull_interval, self._signals = grid, pull_interval, signals

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self):  # noqa: ANN201 (Flower's NodeInfo iterable)
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self.sending(messages)
        pending = set(self.push_messages(messages))
        if self._signals is not None:
            self._signals.pushed.set()
        total = len(pending)
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while timeout is None or time.time() < end:
            if self._signals is not None:
                self._signals.replied.clear()  # before the pull: a reply stored during or after it wakes the wait
            arrived = list(self.pull_messages(pending))
            replies.extend(arrived)
            pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if arrived:
                self.received(len(replies), total)
            if not pending:
                break
            if self._signals is not None:
                self._signals.replied.wait(self._pull_interval)
            else:
                time.sleep(self._pull_interval)
        return replies

    def sending(self, messages: list[Message]) -> None:
        """Called with each batch of requests before it is pushed (a hook for subclasses)."""

    def received(self, done: int, total: int) -> None:
        """Called each time replies arrive: `done` of `total` are in (a hook for subclasses)."""

    def __getattr__(self, name: str):  # noqa: ANN204 (anything else a concrete Grid offers)
        return getattr(self._grid, name)
