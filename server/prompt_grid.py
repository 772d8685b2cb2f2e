"""A Grid that collects the sites' replies as they arrive, not on Flower's fixed 3 s beat.

Flower 1.41's deployment Grid (`flwr.superlink.grid.http_grid`) pulls replies every 3 s, so each phase of a
round (train, evaluate) waits up to 3 s after the last reply (issue 23: deployment rounds cost seconds of
idle time). This wrapper keeps Flower's `send_and_receive` semantics (push, then pull until every reply is
in or the timeout passes) and pulls again at once after a pull that brought replies, else PULL_S after the last
pull began (fedcare's SuperLink holds a pull that finds nothing until a reply comes, fedcare/held_pulls.py, so
there the pull itself is the wait); everything else goes to the wrapped Grid. In a local runtime
that shares this process (`fedcare simulate`), `DispatchSignals` replace the beat: the Grid signals each push
and waits for the runtime's signal that a reply was stored (fedcare/simulation_dispatch.py). In a deployment,
`NodeSnapshotGrid` answers a round's several node-list questions with one SuperLink call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid

from server.grid_wrapper import GridWrapper

PULL_S = 0.1  # a pull is one cheap call to the SuperLink on the same machine
NODES_TTL_S = 0.5


@dataclass
class DispatchSignals:
    """Events between a Grid and a message dispatcher in the same process: `pushed` after the Grid stored
    requests, `replied` after the dispatcher stored a reply."""

    pushed: threading.Event = field(default_factory=threading.Event)
    replied: threading.Event = field(default_factory=threading.Event)


class PromptGrid(GridWrapper):
    def __init__(self, grid: Grid, pull_interval: float = PULL_S, signals: DispatchSignals | None = None,
                 sites_answer_in_order: bool = False) -> None:
        """`sites_answer_in_order`: each site answers its requests one at a time, in the order they were sent (a
        deployment's SuperNodes; the simulation's signalled dispatch, fedcare/simulation_dispatch.py); the strategy
        then sends a round's evaluation and the next round's training together (server/strategy.py)."""
        super().__init__(grid)
        self._pull_interval, self._signals = pull_interval, signals
        self.sites_answer_in_order = sites_answer_in_order

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.receive(self.send(messages), timeout=timeout)

    def send(self, messages: Iterable[Message]) -> list[str]:
        """Push `messages`; their ids, for `receive` (the strategy's overlapped rounds send one phase's requests
        before the replies of the other are in: server/strategy.py)."""
        messages = list(messages)
        self.sending(messages)
        ids = list(self.push_messages(messages))
        if self._signals is not None:
            self._signals.pushed.set()
        return ids

    def receive(self, message_ids: Iterable[str], *, timeout: float | None = None) -> list[Message]:
        """The replies to `message_ids`, pulled until all are in or `timeout` seconds have passed."""
        pending = set(message_ids)
        total = len(pending)
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while pending and (timeout is None or time.time() < end):  # nothing sent (a skipped phase): no pull
            if self._signals is not None:
                self._signals.replied.clear()  # before the pull: a reply stored during or after it wakes the wait
            pulled_at = time.monotonic()
            arrived = list(self.pull_messages(pending))
            replies.extend(arrived)
            pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if arrived:
                self.received(replies, total)
            if not pending:
                break
            if self._signals is not None:
                self._signals.replied.wait(self._pull_interval)
            elif not arrived:  # a SuperLink that holds pulls (fedcare/held_pulls.py) has waited already
                time.sleep(max(0.0, self._pull_interval - (time.monotonic() - pulled_at)))
        return replies

    def sending(self, messages: list[Message]) -> None:
        """Called with each batch of requests before it is pushed (a hook for subclasses)."""

    def received(self, replies: list[Message], total: int) -> None:
        """Called each time replies arrive: `replies` of `total` are in (a hook for subclasses)."""


class NodeSnapshotGrid(GridWrapper):
    """The deployment Grid's node list from one SuperLink call per NODES_TTL_S. A round's configure asked four
    times within milliseconds (the strategy's name lookup and node count, Flower's sampling), ~13 ms each on a
    loaded machine; Flower's HttpGrid answers `get_node_ids` from `get_nodes` anyway, so one call serves both."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self._nodes: tuple[float, list] | None = None  # (time.monotonic() of the call, its NodeInfos)

    def get_nodes(self) -> list:
        now = time.monotonic()
        if self._nodes is None or now - self._nodes[0] > NODES_TTL_S:
            self._nodes = (now, list(self._grid.get_nodes()))
        return list(self._nodes[1])

    def get_node_ids(self) -> list[int]:
        return [node.node_id for node in self.get_nodes()]
