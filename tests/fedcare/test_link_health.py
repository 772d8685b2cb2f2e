"""The hospital's view of its SuperLink, against real listeners: a TLS one (the center's certificate from
`fedcare certs`) and a plaintext one. A plaintext site against a TLS center (and the reverse) gets a one-line
hint; the health endpoint answers 200 only while the SuperLink answers."""

import http.client
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from fedcare.certs import DeploymentPaths, write_deployment_keys
from fedcare.link_health import LinkMonitor, probe_superlink
from fedcare.site_keys import init_site_keys
from shared.errors import InputError

REPO = Path(__file__).resolve().parents[2]


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class _Listener:
    def __init__(self, context: ssl.SSLContext | None):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.address = f"localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    write_deployment_keys(root, ["localhost"])
    other = tmp_path_factory.mktemp("other_ca")
    write_deployment_keys(other, ["localhost"])
    return DeploymentPaths(root), DeploymentPaths(other)


@pytest.fixture
def tls(certs):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs[0].server_cert, certs[0].server_key)
    listener = _Listener(context)
    yield listener
    listener.close()


@pytest.fixture
def plain():
    listener = _Listener(None)
    yield listener
    listener.close()


def test_each_misconfiguration_is_named(certs, tls, plain):
    center, other = certs
    assert probe_superlink(tls.address, center.ca_cert) is None
    assert probe_superlink(plain.address, None) is None
    hint = probe_superlink(tls.address, None)
    assert "speaks TLS but this site connects without it" in hint and "root_certificates" in hint
    hint = probe_superlink(plain.address, center.ca_cert)
    assert "does not speak TLS" in hint and "--insecure" in hint
    hint = probe_superlink(tls.address, other.ca_cert)
    assert "certificate" in hint and str(other.ca_cert) in hint
    for problem in (hint, probe_superlink(tls.address, None)):
        assert "\n" not in problem


def test_an_unreachable_superlink_is_named(certs, tls):
    address = tls.address
    tls.close()
    problem = probe_superlink(address, certs[0].ca_cert, timeout=2)
    assert problem.startswith(f"cannot reach the SuperLink at {address}")


def _get(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_health_follows_the_superlink_and_the_supernode(certs, tls):
    said, alive = [], [True]
    monitor = LinkMonitor(tls.address, certs[0].ca_cert, lambda: alive[0], said.append, interval_s=3600)
    port = _free_port()
    monitor.start(port)
    try:
        deadline = time.time() + 10
        while monitor.problem == "not probed yet" and time.time() < deadline:
            time.sleep(0.05)
        assert _get(port) == (200, "ok\n") and said == []
        tls.close()  # the center goes away: the SuperNode would now retry, and Flower's own /health still says 200
        monitor.check()
        status, body = _get(port)
        assert status == 503 and body.startswith("cannot reach the SuperLink")
        assert len(said) == 1 and "cannot reach the SuperLink" in said[0]
        monitor.check()
        assert len(said) == 1  # the same problem is not repeated every probe
        alive[0] = False
        assert _get(port) == (503, "the SuperNode is not running\n")
    finally:
        monitor.stop()


def test_a_health_port_in_use_is_one_line(certs, plain):
    port = plain.server.server_address[1]
    with pytest.raises(InputError, match="--health-port: cannot listen on 127.0.0.1:"):
        LinkMonitor(plain.address, None, lambda: True, print).start(port)


@pytest.mark.slow
def test_plaintext_client_against_a_tls_center_says_so_and_reports_unhealthy(certs, tls, tmp_path):
    keys = init_site_keys("hospital_a", tmp_path / "keys").paths
    (tmp_path / "data").mkdir()
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(yaml.safe_dump({
        "site": "hospital_a", "data_dir": "data", "state_dir": "state", "key": str(keys.identity_key),
        "budget": {"lifetime_epsilon": 10.0, "delta": 1.0e-5}, "superlink": tls.address, "insecure": True,
        "device": "cpu",
    }))
    health = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    proc = subprocess.Popen([sys.executable, "-m", "fedcare", "client", "--site-config", str(site_yaml),
                             "--runtime-port", str(_free_port()), "--health-port", str(health)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.time() + 60
        while not any("speaks TLS" in line for line in lines) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        hint = [line for line in lines if "speaks TLS" in line]
        assert len(hint) == 1, "".join(lines)[-3000:]
        assert "root_certificates" in hint[0]
        status, body = _get(health)
        assert status == 503 and "speaks TLS" in body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
