"""`python -m fedcare.supernode_runner <flower-supernode arguments>`: Flower's SuperNode with a shorter
idle beat; what `fedcare client` runs instead of the bare `flower-supernode`.

Flower 1.41's SuperNode sleeps 3 s whenever a pull from the SuperLink finds no message, and polls the
local reply store every 0.5 s (`flwr/supernode/start_client_internal.py`, neither configurable). A
round has two messages per site (train, evaluate), and the next one is never there on the pull right
after a reply: each waited out a full 3 s beat, so a deployment round of a small config took 9 s of
which under 1 s was work (benchmarks/round_breakdown.py). This runner starts the very same SuperNode
with that module's `time.sleep` replaced: the idle beat becomes `BUSY_PULL_S` for `BUSY_WINDOW_S` after the
node last handled a message (a run's next message comes seconds after a reply: the center aggregates), else
`IDLE_PULL_S`, and the reply poll `REPLY_POLL_S` (a local check). Cost: one Fleet API pull per site every
`BUSY_PULL_S` while a run's messages flow, every `IDLE_PULL_S` when idle. fedcare's SuperLink holds an empty
pull until a message comes or its hold runs out (fedcare/held_pulls.py); after such a held pull the beat is
`AFTER_HELD_PULL_S`: the pull itself was the wait. Given `FEDCARE_TASK_SIGNAL`
(by `fedcare client`), it also tells the site's app launcher over a local datagram as soon as it has stored
a message (`announcing`), and it announces a 15 s heartbeat interval instead of Flower's 30 s
(`NODE_HEARTBEAT_S`). It checks the installed flwr version, since it patches module attributes.

Flower's node loop pulls one message, then waits until its app has replied and pushes the reply, and only then
pulls the next: a request the center had already sent (the next round's training goes out with this round's
evaluation, server/strategy.py) waited at the SuperLink for the reply's trip out. Here a `ReplyPusher` thread
pushes each reply as soon as the app stores it, with Flower's own `_push_messages`, while the loop pulls the
next message (the app launcher still answers one message at a time, in the order they came). Its local Runtime
API skips Flower's tracing middleware unless tracing is on (fedcare/flower_middleware.py).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from fedcare.clientapp_process import TASK_SIGNAL_ENV
from fedcare.flower_middleware import scope_flower_middleware
from fedcare.flower_processes import require_flower_version
from shared.flower_object_pulls import prompt_object_pulls

FLOWER_IDLE_S, FLOWER_REPLY_POLL_S = 3, 0.5  # the values in flwr 1.41's start_client_internal
IDLE_PULL_S, REPLY_POLL_S = 0.5, 0.02  # the reply poll is an in-process look at the node state
BUSY_PULL_S, BUSY_WINDOW_S = 0.1, 30.0
# an empty pull that took this long was held by the SuperLink until its hold ran out: pull again almost at once
HELD_PULL_S, AFTER_HELD_PULL_S = 0.5, 0.01
# Flower's node heartbeat interval is 30 s, and the SuperLink takes a node for gone only after twice that
# without a heartbeat: a crashed hospital held every other site's round for up to a minute, and its restarted
# client could not connect until then (Flower refuses to activate a node it still sees online). 15 s: gone after
# 30 s without a heartbeat, one heartbeat every ~8 s.
NODE_HEARTBEAT_S = 15
_last_busy = float("-inf")  # time.monotonic() when a message last arrived or a reply last left
_pull_started = float("inf")  # time.monotonic() when the loop's last pull from the SuperLink began


def shortened_sleep(seconds: float) -> None:
    """Flower's idle beat and reply poll, shortened; any other sleep unchanged."""
    now = time.monotonic()
    if seconds == FLOWER_IDLE_S:
        seconds = BUSY_PULL_S if now - _last_busy < BUSY_WINDOW_S else IDLE_PULL_S
        if now - _pull_started >= HELD_PULL_S:  # the SuperLink held the empty pull (fedcare/held_pulls.py): it waited
            seconds = AFTER_HELD_PULL_S
    elif seconds == FLOWER_REPLY_POLL_S:
        mark_busy()
        seconds = REPLY_POLL_S
    time.sleep(seconds)


def mark_busy() -> None:
    """A message arrived or a reply is being sent: the short beat of BUSY_WINDOW_S applies."""
    global _last_busy
    _last_busy = time.monotonic()


def timing_pulls(pull_and_store: Callable[..., int | None]) -> Callable[..., int | None]:
    """Flower's `_pull_and_store_message`, noting when each pull began and marking the node busy when it stored a
    message."""

    def pull_and_store_timed(*args: object, **kwargs: object) -> int | None:
        global _pull_started
        _pull_started = time.monotonic()
        run_id = pull_and_store(*args, **kwargs)
        if run_id is not None:
            mark_busy()
        return run_id

    return pull_and_store_timed


class ReplyPusher:
    """Stands in for Flower's `_push_messages` in the node loop: returns at once, and a thread of its own runs the
    real one (`push`) each time a reply is stored in the node state (`reply_stored`, set by `signalling_replies`),
    with the arguments of the loop's latest call (a reconnected loop brings a new connection's functions)."""

    def __init__(self, push: Callable[..., None], reply_stored: threading.Event) -> None:
        self.push, self.reply_stored = push, reply_stored
        self.kwargs: dict[str, object] = {}
        self.thread: threading.Thread | None = None

    def __call__(self, **kwargs: object) -> None:  # Flower calls it with keywords only
        self.kwargs = kwargs
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="fedcare-reply-pusher", daemon=True)
            self.thread.start()

    def run(self) -> None:
        while True:
            self.reply_stored.wait()
            self.reply_stored.clear()  # before the push: a reply stored during it sets the event again
            try:
                self.push(**self.kwargs)  # Flower's: takes every stored reply (waiting for one if none), pushes each
            except Exception as err:  # noqa: BLE001 (Flower logs and drops a reply it cannot send; so does this)
                print(f"fedcare: pushing a reply failed: {err!r}", file=sys.stderr, flush=True)
            mark_busy()


def signalling_replies(state_class: type, reply_stored: threading.Event) -> None:
    """Wrap `state_class.store_message` (once): storing a reply (the app's, or an error reply the node makes) sets
    `reply_stored`."""
    original = state_class.store_message
    if getattr(original, "signals_replies", False):
        return

    def store_message(self: object, message: object) -> str | None:
        stored = original(self, message)
        if stored is not None and message.metadata.reply_to_message_id:  # type: ignore[attr-defined]
            reply_stored.set()
        return stored

    store_message.signals_replies = True  # type: ignore[attr-defined]
    state_class.store_message = store_message


def announcing(pull_and_store: Callable[..., int | None], address: str) -> Callable[..., int | None]:
    """Flower's `_pull_and_store_message`, then, when it stored a message, one datagram to the app launcher at
    `address` (host:port). When it returns, the message and its objects are in the SuperNode's store and
    confirmed to the SuperLink: the app process pulls them at once, and its requests no longer compete
    with the SuperNode's own confirmation (the reply cannot leave before it: announcing right after the
    objects arrived made an evaluate reply wait ~0.2 s for it on a loaded machine)."""
    host, port = address.rsplit(":", 1)
    target = (host, int(port))
    signal = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def pull_store_then_announce(*args: object, **kwargs: object) -> int | None:
        run_id = pull_and_store(*args, **kwargs)
        if run_id is not None:
            try:
                signal.sendto(b"task", target)
            except OSError:  # the launcher is gone or restarting: its fallback poll finds the task
                pass
        return run_id

    return pull_store_then_announce


def scoped_runtime_api(create_app: Callable[..., Any]) -> Callable[..., Any]:
    """The SuperNode's Runtime API app with Flower's tracing layer skipped unless tracing is on."""
    if getattr(create_app, "fedcare_scoped", False):
        return create_app

    def create_scoped_app(*args: object, **kwargs: object) -> Any:
        app = create_app(*args, **kwargs)
        scope_flower_middleware(app)
        return app

    create_scoped_app.fedcare_scoped = True  # type: ignore[attr-defined]
    return create_scoped_app


def patch_supernode() -> None:
    import flwr.supernode.main as supernode_main
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection, start_client_internal
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    require_flower_version("fedcare.supernode_runner")
    # the interval the node announces (the SuperLink's patience is twice it) and the one its sender keeps
    fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL = NODE_HEARTBEAT_S
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = NODE_HEARTBEAT_S
    supernode_main.create_app = scoped_runtime_api(supernode_main.create_app)  # imported by name when it starts
    # the module's own `time` only: other modules' sleeps (retries, heartbeats) keep their timing
    names = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    start_client_internal.time = SimpleNamespace(**{**names, "sleep": shortened_sleep})
    prompt_object_pulls(start_client_internal, "pull_objects")  # a request's arrays arrive just after it
    pull_and_store = start_client_internal._pull_and_store_message
    if not isinstance(start_client_internal._push_messages, ReplyPusher):  # patched once per process
        pull_and_store = timing_pulls(pull_and_store)
        if address := os.environ.get(TASK_SIGNAL_ENV):
            pull_and_store = announcing(pull_and_store, address)
        start_client_internal._pull_and_store_message = pull_and_store
        reply_stored = threading.Event()
        signalling_replies(InMemoryNodeState, reply_stored)
        start_client_internal._push_messages = ReplyPusher(start_client_internal._push_messages, reply_stored)


def main() -> None:
    patch_supernode()
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
