"""`python -m fedcare.superlink_guard <flower-superlink arguments>`: Flower's SuperLink with a closed
control plane; what `fedcare server` runs instead of the bare `flower-superlink`.

Flower 1.41 serves the Fleet API (SuperNodes), the Control API (register nodes, start runs; no
account authentication in open-source Flower) and the Runtime API (ServerApp) on one HTTP(S) port.
This wrapper starts the very same SuperLink with two additions:

- `ControlPlaneGuard`, the outermost ASGI layer: a request from a client address other than
  127.0.0.1 / ::1 reaches only `/v1/fleet/...` and `/health`; anything else gets 403 before Flower
  sees it. Only the Fleet API faces the network, whatever address the SuperLink is bound to. (Bound
  to one interface address, the center's own tools reach it from that address: a connection whose
  source is the very address it arrived at comes from this machine and counts as local.)
- one site name per node key: a RegisterNode without a valid site name, or with a name that is
  already registered, is refused (Flower itself only refuses a key registered twice).
- held pulls (fedcare/held_pulls.py): a pull that finds nothing is answered once there is something, so
  messages and replies move without waiting for the next poll.
- Flower's path-specific HTTP middleware runs only on its own API's requests (fedcare/flower_middleware.py).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fedcare import held_pulls
from fedcare.flower_middleware import scope_flower_middleware
from fedcare.flower_processes import require_flower_version

LOCAL_CLIENTS = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
PUBLIC_PATHS = ("/v1/fleet/", "/health")
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def is_public_path(path: str) -> bool:
    return path == "/health" or path.startswith("/v1/fleet/")


class ControlPlaneGuard:
    """ASGI middleware: non-local clients reach the Fleet API and the health check only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] in ("http", "websocket"):
            client = (scope.get("client") or ("", 0))[0]
            local = client in LOCAL_CLIENTS or client == (scope.get("server") or ("", 0))[0]
            if not local and not is_public_path(str(scope.get("path", ""))):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = b'{"detail":"the Control and Runtime APIs of this SuperLink are local only"}'
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _one_name_per_node(state_class: type) -> None:
    """Wrap `state_class.create_node`: a registration needs a valid site name not registered yet."""
    from flwr.supercore.constant import NodeStatus
    from flwr.supercore.error import ApiErrorCode, FlowerError

    original = state_class.create_node

    def create_node(self: Any, *args: Any, name: str | None = None, **kwargs: Any) -> int:
        def refuse(problem: str) -> FlowerError:
            return FlowerError(ApiErrorCode.PUBLIC_KEY_ALREADY_IN_USE, problem, public_details=problem)

        if not name or not SITE_NAME.match(name):
            raise refuse("a SuperNode is registered with its site name (--name <site>)")
        taken = [n for n in self.get_node_info() if n.name == name and n.status != NodeStatus.UNREGISTERED]
        if taken:
            raise refuse(f"site name {name!r} is already registered with another key")
        return original(self, *args, name=name, **kwargs)

    state_class.create_node = create_node


def install() -> None:
    """Patch Flower's SuperLink app factory and link states (checked against the pinned version)."""
    import flwr.superlink.main as superlink_main
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState

    require_flower_version("fedcare.superlink_guard")
    create_app = superlink_main.create_app

    def guarded_create_app(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)
        scope_flower_middleware(app)
        app.add_middleware(ControlPlaneGuard)  # outermost: runs before Flower's own middleware
        return app

    superlink_main.create_app = guarded_create_app
    for state_class in (InMemoryLinkState, SqlLinkState):
        _one_name_per_node(state_class)
    held_pulls.install()


def main() -> None:
    from flwr.superlink.cli.flower_superlink import flower_superlink

    install()
    sys.argv[0] = "flower-superlink"
    flower_superlink()


if __name__ == "__main__":
    main()
