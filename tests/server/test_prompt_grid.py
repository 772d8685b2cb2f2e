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


def test_the_deployment_node_list_is_one_superlink_call_per_snapshot(monkeypatch):
    calls = []

    class NodesGrid:
        def get_nodes(self):
            calls.append(1)
            return [SimpleNamespace(node_id=7, name="site_a"), SimpleNamespace(node_id=9, name="site_b")]

    now = [100.0]
    monkeypatch.setattr(prompt_grid.time, "monotonic", lambda: now[0])
    grid = PromptGrid(prompt_grid.NodeSnapshotGrid(NodesGrid()))
    assert list(grid.get_node_ids()) == [7, 9] and [n.name for n in grid.get_nodes()] == ["site_a", "site_b"]
    assert list(grid.get_node_ids()) == [7, 9] and len(calls) == 1  # a round's configure: one call
    now[0] += prompt_grid.NODES_TTL_S + 0.01
    assert list(grid.get_node_ids()) == [7, 9] and len(calls) == 2  # later (a wait for sites): asked again


def test_a_phase_that_sends_nothing_pulls_nothing():
    """A skipped evaluation sends no message: asking the SuperLink for replies anyway made fedcare's SuperLink hold
    that pull for its whole hold (1 s of every DP round without an evaluation)."""
    fake = FakeGrid([])
    assert list(PromptGrid(fake).send_and_receive([], timeout=10)) == [] and fake.pulls == 0
