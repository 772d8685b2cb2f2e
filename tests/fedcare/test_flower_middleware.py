"""Flower's path-specific HTTP middleware runs only where it acts: the SuperLink and the SuperNode answer every
request as before (authentication included), with fewer layers on the requests a round makes."""

import asyncio

import httpx
import pytest
from starlette.middleware.base import BaseHTTPMiddleware

from fedcare import flower_middleware
from fedcare.flower_middleware import ACTS_ON, ScopedMiddleware, scope_flower_middleware
from fedcare.supernode_runner import scoped_runtime_api

PROTOBUF = {"content-type": "application/protobuf"}
# requests of every API: a Node without its signature, a Control call without an account, a ServerApp call
# without a task token, a body that is not protobuf, the health check, an unknown path
REQUESTS = [("POST", "/v1/fleet/pull-messages", PROTOBUF, b""),
            ("POST", "/v1/fleet/push-object", PROTOBUF, b"\x0a\x01x"),
            ("POST", "/v1/fleet/pull-messages", {"content-type": "text/plain"}, b"hi"),
            ("POST", "/v1/control/list-runs", PROTOBUF, b""),
            ("POST", "/v1/control/get-login-details", PROTOBUF, b""),
            ("POST", "/v1/runtime/pull-messages", PROTOBUF, b""),
            ("GET", "/health", {}, b""),
            ("POST", "/v1/nowhere", PROTOBUF, b"")]


def _superlink_app():
    import flwr.superlink.main as superlink_main

    return superlink_main.create_app()


def _answers(app) -> list[tuple[int, str | None, bytes]]:
    """Status, Cache-Control header and body of each request (a run list's body is a timestamp: left out)."""
    async def run():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://link") as client:
            return [(r.status_code, r.headers.get("cache-control"), b"" if path.endswith("list-runs") else r.content)
                    for (_, path, _, _), r in zip(REQUESTS, [await client.request(m, path, headers=headers, content=body)
                                                             for m, path, headers, body in REQUESTS], strict=True)]
    return asyncio.run(run())


def test_the_superlinks_path_specific_layers_are_scoped_and_every_other_layer_kept():
    app = _superlink_app()
    before = [entry.cls for entry in app.user_middleware]
    scoped = scope_flower_middleware(app)
    assert sorted(scoped) == sorted(ACTS_ON)  # all seven: Control x4, Fleet x2, Runtime tracing
    kept = [entry for entry in app.user_middleware if entry.cls is not ScopedMiddleware]
    # what acts on every request stays as Flower built it: the error translation and the protobuf translation
    assert [getattr(e.kwargs.get("dispatch"), "__name__", e.cls.__name__) for e in kept] == [
        "http_error_translator", "ProtobufTranslationMiddleware"]
    # the order of the layers is Flower's: each scoped entry wraps the class that stood in its place
    assert [e.args[0] if e.cls is ScopedMiddleware else e.cls for e in app.user_middleware] == before
    # a flwr upgrade that adds a Starlette layer shows up here: it is either scoped or acts on every request
    assert all(not issubclass(cls, BaseHTTPMiddleware) or cls.__name__ in ACTS_ON or cls is BaseHTTPMiddleware
               or cls.__name__ == "ProtobufTranslationMiddleware" for cls in before)


def test_the_scoped_superlink_answers_every_request_as_flowers_own():
    plain, scoped = _superlink_app(), _superlink_app()
    scope_flower_middleware(scoped)
    expected = _answers(plain)
    assert _answers(scoped) == expected
    statuses = [status for status, _, _ in expected]
    assert statuses[0] == 401  # the Fleet API's node authentication still runs (a body that parses)
    assert statuses[1] == 400 and statuses[2] == 415  # the protobuf translation answers for a bad body or type
    assert expected[4][1] == "no-store"  # the Control API's no-cache layer still marks its login details
    assert statuses[5] == 401 and statuses[6] == 200 and statuses[7] == 404  # task-token check; health; unknown


class RecordingLayer:
    """Stands in for a Flower layer: notes the requests it sees, then passes them on."""

    def __init__(self, app) -> None:
        self.app, self.seen = app, []

    async def __call__(self, scope, receive, send) -> None:
        self.seen.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.mark.parametrize(("acts_on", "path", "runs"), [
    (flower_middleware._fleet, "/v1/fleet/pull-messages", True),
    (flower_middleware._fleet, "/v1/runtime/pull-messages", False),
    (flower_middleware._control, "/v1/control/start-run", True),
    (flower_middleware._control, "/v1/fleet/pull-object", False),
])
def test_a_scoped_layer_runs_exactly_on_the_requests_it_acts_on(acts_on, path, runs):
    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    middleware = ScopedMiddleware(app, RecordingLayer, acts_on)
    asyncio.run(middleware({"type": "http", "path": path, "method": "POST"}, receive, send))
    assert reached == [path]  # the request reaches the application either way
    assert middleware.layer.seen == ([path] if runs else [])


def test_event_logs_and_tracing_run_when_they_are_switched_on(monkeypatch):
    class State:
        fleet_event_log_plugin = None

    class App:
        state = State()

    fleet = {"type": "http", "path": "/v1/fleet/pull-messages", "app": App()}
    assert not flower_middleware._fleet_event_log(fleet)
    App.state.fleet_event_log_plugin = object()
    assert flower_middleware._fleet_event_log(fleet)
    assert not flower_middleware._fleet_event_log({**fleet, "path": "/v1/runtime/pull-messages"})
    assert flower_middleware._fleet_event_log({"type": "http", "path": "/v1/fleet/x"})  # no app known: run it

    monkeypatch.delenv("FLWR_TRACING_ENABLED", raising=False)
    assert not flower_middleware._tracing(fleet)
    monkeypatch.setenv("FLWR_TRACING_ENABLED", "1")
    assert flower_middleware._tracing(fleet)


def test_the_supernodes_runtime_api_skips_tracing_only():
    import flwr.supernode.main as supernode_main

    create = scoped_runtime_api(supernode_main.create_app)
    assert scoped_runtime_api(create) is create  # patching twice wraps once
    app = create()
    layers = [(e.cls.__name__, e.args[0].__name__ if e.cls is ScopedMiddleware else None) for e in app.user_middleware]
    assert ("ScopedMiddleware", "RuntimeTracingMiddleware") in layers
    assert ("ProtobufTranslationMiddleware", None) in layers and ("BaseHTTPMiddleware", None) in layers
    assert len(layers) == 3
