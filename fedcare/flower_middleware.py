"""Flower's HTTP middleware, run only on the requests it acts on (issue 23).

Flower 1.41's SuperLink passes every request through nine Starlette `BaseHTTPMiddleware` layers, and its
SuperNode's local Runtime API through three. A `BaseHTTPMiddleware` costs a task group, memory streams and a
response wrapper per request even when its `dispatch` only calls `call_next`; on the 2-core machine the
SuperLink spent ~4 ms of CPU per request, most of it in that machinery (py-spy), and a deployment round makes
~120 requests. Most layers act on one API's paths only: the Control API's authentication, licence, event log
and no-cache headers, the Fleet API's node authentication and event log, and the Runtime API's tracing (only
with FLWR_TRACING_ENABLED=1). `scope_flower_middleware` puts each of those behind a pure ASGI check of that
condition, taken from the layer's own `dispatch`: requests it acts on go through the very same layer, any
other request skips it. The error translation and the protobuf translation act on every request and stay.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTROL_PREFIX = "/v1/control/"
FLEET_PREFIX = "/v1/fleet/"


def _control(scope: Scope) -> bool:
    return str(scope.get("path", "")).startswith(CONTROL_PREFIX)


def _fleet(scope: Scope) -> bool:
    return str(scope.get("path", "")).startswith(FLEET_PREFIX)


def _fleet_event_log(scope: Scope) -> bool:
    app = scope.get("app")  # Starlette puts the application into the scope before its middleware runs
    plugin = getattr(getattr(app, "state", None), "fleet_event_log_plugin", None) if app is not None else None
    return _fleet(scope) and (app is None or plugin is not None)


def _tracing(_scope: Scope) -> bool:
    return os.getenv("FLWR_TRACING_ENABLED") == "1"  # read per request, as the layer's dispatch does


# class name -> when its dispatch does anything but `return await call_next(request)` (flwr 1.41, read from
# each dispatch; a wider condition than the layer's own only costs speed, never a check)
ACTS_ON: dict[str, Callable[[Scope], bool]] = {
    "ControlSensitiveResponseMiddleware": _control,
    "ControlAuthenticationMiddleware": _control,
    "ControlLicenseMiddleware": _control,
    "ControlEventLogMiddleware": _control,
    "NodeAuthMiddleware": _fleet,
    "FleetEventLogMiddleware": _fleet_event_log,
    "RuntimeTracingMiddleware": _tracing,
}


class ScopedMiddleware:
    """Pure ASGI: `layer` (built on the same inner app) handles the requests `acts_on` selects."""

    def __init__(self, app: ASGIApp, layer_class: type, acts_on: Callable[[Scope], bool], *args: Any,
                 **kwargs: Any) -> None:
        self.app = app
        self.layer = layer_class(app, *args, **kwargs)
        self.acts_on = acts_on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.acts_on(scope):
            await self.app(scope, receive, send)
        else:
            await self.layer(scope, receive, send)


def scope_flower_middleware(app: Any) -> list[str]:
    """Rewrite `app.user_middleware` (before its first request) in place; the names of the layers scoped."""
    from starlette.middleware import Middleware

    scoped = []
    for i, entry in enumerate(app.user_middleware):
        name = getattr(entry.cls, "__name__", "")
        acts_on = ACTS_ON.get(name)
        if acts_on is not None:
            app.user_middleware[i] = Middleware(ScopedMiddleware, entry.cls, acts_on, *entry.args, **entry.kwargs)
            scoped.append(name)
    return scoped
