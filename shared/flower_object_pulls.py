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
# The app process pulls a request from its own SuperNode (127.0.0.1) while the SuperNode is still fetching
# the request's few objects from the SuperLink (~0.1 s): a retry is a cheap local call, so retry sooner.
LOCAL_OBJECT_PULL_BACKOFF_S = 0.01


def prompt_object_pulls(module: ModuleType, name: str, initial_backoff: float = OBJECT_PULL_BACKOFF_S) -> None:
    """Rebind `module.name` (Flower's `pull_objects` or `pull_and_inflate_object_from_tree`, as that module
    imported it) to the short back-off; idempotent."""
    pull = getattr(module, name)
    if isinstance(pull, functools.partial) and "initial_backoff" in pull.keywords:
        pull = pull.func
    setattr(module, name, functools.partial(pull, initial_backoff=initial_backoff,
                                            backoff_cap=OBJECT_PULL_BACKOFF_CAP_S))
