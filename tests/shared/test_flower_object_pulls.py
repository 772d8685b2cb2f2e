"""Flower's object pulls, rebound with a short back-off: the same function, two keywords more, once."""

import inspect
from types import SimpleNamespace

from flwr.superlink.grid import http_grid
from flwr.supernode import start_client_internal
from flwr.supernode.runtime import run_clientapp

from shared.flower_object_pulls import (
    LOCAL_OBJECT_PULL_BACKOFF_S,
    OBJECT_PULL_BACKOFF_CAP_S,
    OBJECT_PULL_BACKOFF_S,
    prompt_object_pulls,
)


def test_the_pull_gets_the_short_backoff_once():
    calls = []
    module = SimpleNamespace(pull_objects=lambda ids, **kw: calls.append((ids, kw)))
    prompt_object_pulls(module, "pull_objects")
    prompt_object_pulls(module, "pull_objects")  # idempotent: not wrapped twice
    module.pull_objects(["a"], pull_object_fn=None)
    assert calls == [(["a"], {"pull_object_fn": None, "initial_backoff": OBJECT_PULL_BACKOFF_S,
                              "backoff_cap": OBJECT_PULL_BACKOFF_CAP_S})]
    assert module.pull_objects.func.__name__ == "<lambda>"
    prompt_object_pulls(module, "pull_objects", LOCAL_OBJECT_PULL_BACKOFF_S)  # another back-off: rebound, not nested
    assert module.pull_objects.func.__name__ == "<lambda>"
    assert module.pull_objects.keywords["initial_backoff"] == LOCAL_OBJECT_PULL_BACKOFF_S < OBJECT_PULL_BACKOFF_S


def test_the_flower_functions_we_rebind_take_these_keywords(monkeypatch):
    for module, name in ((http_grid, "pull_objects"), (start_client_internal, "pull_objects"),
                         (run_clientapp, "pull_and_inflate_object_from_tree")):
        original = getattr(module, name)
        assert {"initial_backoff", "backoff_cap"} <= set(inspect.signature(original).parameters), (module, name)
        monkeypatch.setattr(module, name, original)  # undone after the test
        prompt_object_pulls(module, name)
        assert getattr(module, name).func is original
        assert getattr(module, name).keywords["initial_backoff"] == OBJECT_PULL_BACKOFF_S
