"""Flower's object pulls with a short back-off (issue 23).

In Flower 1.41 a message becomes visible before its contents: the sender pushes the message, then its objects
(the arrays). A receiver that pulls in between gets `ObjectUnavailableError` and retries after 1 s, doubling up to
10 s (`flwr.supercore.inflatable.inflatable_utils`, PULL_INITIAL_BACKOFF). In a local deployment that happened on
most hops: the ServerApp pulling a site's reply, the site's app process pulling the request from its SuperNode
(which was still fetching it from the SuperLink), the SuperNode pulling from the SuperLink: ~1 s each, 2-3 s of
a steady round that trains for 1 s. `prompt_object_pulls` rebinds a module's imported pull function to the same
function with a 50 ms first back-off, capped at 0.5 s; the retries are cheap local or already-open HTTPS calls.
"""

from __future__ import annotations

import functools
from types import ModuleType

OBJECT_PULL_BACKOFF_S = 0.05
OBJECT_PULL_BACKOFF_CAP_S = 0.5


def prompt_object_pulls(module: ModuleType, name: str) -> None:
    """Rebind `module.name` (Flower's `pull_objects` or `pull_and_inflate_object_from_tree`, as that module
    imported it) to the short back-off; idempotent."""
    pull = getattr(module, name)
    if isinstance(pull, functools.partial) and pull.keywords.get("initial_backoff") == OBJECT_PULL_BACKOFF_S:
        return
    setattr(module, name, functools.partial(pull, initial_backoff=OBJECT_PULL_BACKOFF_S,
                                            backoff_cap=OBJECT_PULL_BACKOFF_CAP_S))
