"""The SuperLink's control-plane guard: only the Fleet API and /health answer non-local clients, and
one site name belongs to one node key."""

import asyncio

import pytest
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.error import FlowerError

from fedcare import superlink_guard
from fedcare.superlink_guard import ControlPlaneGuard


def _call(path: str, client: str, server: str = "0.0.0.0") -> int:
    sent, reached = [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": path, "client": (client, 40000), "server": (server, 9092)}
    asyncio.run(ControlPlaneGuard(app)(scope, receive, send))
    status = sent[0]["status"]
    assert (status == 200) == bool(reached)  # a refused request never reaches Flower
    return status


@pytest.mark.parametrize("path", ["/v1/control/start-run", "/v1/control/register-node", "/v1/control/list-nodes",
                                  "/v1/runtime/pull-task-input", "/docs", "/openapi.json", "/v1/fleetx", "/"])
def test_control_and_runtime_apis_are_local_only(path):
    assert _call(path, "10.1.2.3") == 403
    assert _call(path, "127.0.0.2") == 403  # loopback range, but not the center's own address
    assert _call(path, "127.0.0.1") == 200
    assert _call(path, "::1") == 200
    assert _call(path, "10.1.2.3", server="10.1.2.3") == 200  # bound to one address: this machine calling itself
    assert _call(path, "10.1.2.4", server="10.1.2.3") == 403


@pytest.mark.parametrize("path", ["/v1/fleet/pull-messages", "/v1/fleet/activate-node", "/health"])
def test_the_fleet_api_and_health_face_the_network(path):
    assert _call(path, "10.1.2.3") == 200


def test_one_site_name_per_node_key(monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.superlink.config_loader import get_federation_manager, get_objectstore_linkstate_factories

    monkeypatch.setattr(InMemoryLinkState, "create_node", InMemoryLinkState.create_node)  # restored after the test
    superlink_guard._one_name_per_node(InMemoryLinkState)
    state = get_objectstore_linkstate_factories(":flwr-in-memory:", get_federation_manager())[1].state()
    k1, k2 = (ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) for _ in range(2))
    assert state.create_node("aid", "center", k1, 30.0, name="site_a")
    with pytest.raises(FlowerError, match="'site_a' is already registered"):
        state.create_node("aid", "center", k2, 30.0, name="site_a")
    with pytest.raises(FlowerError, match="registered with its site name"):
        state.create_node("aid", "center", k2, 30.0)
    with pytest.raises(ValueError, match="Public key already in use"):  # Flower's own check stays
        state.create_node("aid", "center", k1, 30.0, name="site_b")
    assert [n.name for n in state.get_node_info()] == ["site_a"]
