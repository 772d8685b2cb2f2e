"""PromptGrid: Flower's send_and_receive semantics, replies collected as they arrive (issue 23)."""

import time
from types import SimpleNamespace

from server import prompt_grid
from server.prompt_grid import PromptGrid


class FakeGrid:
    """Replies to message i arrive at `ready[i]` seconds after the push."""

    def __init__(self, ready):
        self.ready, self.pulls, self.nodes = ready, 0, [1, 2]

    def push_messages(self, messages):
        self.t0 = time.time()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        now = time.time() - self.t0
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ids
                if now >= self.ready[int(i[1:])]]

    def get_node_ids(self):
        return self.nodes


def test_returns_as_soon_as_the_last_reply_is_in(monkeypatch):
    monkeypatch.setattr(prompt_grid, "PULL_S", 0.05)
    fake = FakeGrid([0.0, 0.3])
    started = time.time()
    replies = list(PromptGrid(fake).send_and_receive(["a", "b"], timeout=10))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert time.time() - started < 2.5  # Flower's Grid would pull again only after 3 s
    assert list(PromptGrid(fake).get_node_ids()) == [1, 2]


def test_timeout_returns_what_arrived(monkeypatch):
    monkeypatch.setattr(prompt_grid, "PULL_S", 0.05)
    replies = list(PromptGrid(FakeGrid([0.0, 99.0])).send_and_receive(["a", "b"], timeout=0.3))
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
