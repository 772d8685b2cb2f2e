"""Can this hospital reach its SuperLink? The answer behind `fedcare client`'s health check and its hints.

Flower's SuperNode answers its own /health with 200 while it retries the SuperLink forever, and a
plaintext SuperNode against a TLS center only logs "Connection attempt failed". So the wrapper asks
the SuperLink's /health itself, over the same address with the same TLS settings as the SuperNode,
and tells the two classic misconfigurations apart: plaintext against TLS, TLS against plaintext.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from shared.errors import InputError

TIMEOUT_S = 5.0


def probe_superlink(address: str, root_certificates: Path | None, timeout: float = TIMEOUT_S) -> str | None:
    """None when the SuperLink's /health answers 200 as the SuperNode would connect; else the problem in one line."""
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    if root_certificates is None:  # the site runs insecure (plaintext)
        try:
            return _health(http.client.HTTPConnection(host, int(port), timeout=timeout), address)
        except OSError as err:
            if _speaks_tls(host, int(port), timeout):
                return (f"the SuperLink at {address} speaks TLS but this site connects without it (insecure: true): "
                        "set root_certificates in site.yaml to the center's CA and remove insecure")
            return f"cannot reach the SuperLink at {address}: {_reason(err)}"
    context = ssl.create_default_context(cafile=str(root_certificates))
    try:
        return _health(http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context), address)
    except ssl.SSLCertVerificationError as err:
        return (f"the SuperLink's certificate at {address} is not accepted with root_certificates "
                f"{root_certificates}: {err.verify_message}")
    except OSError as err:
        if isinstance(err, ssl.SSLError) or isinstance(err, ConnectionResetError):
            try:
                if _health(http.client.HTTPConnection(host, int(port), timeout=timeout), address) is None:
                    return (f"the SuperLink at {address} does not speak TLS (the center runs --insecure?) "
                            "but this site connects with TLS (root_certificates)")
            except OSError:
                pass
        return f"cannot reach the SuperLink at {address}: {_reason(err)}"


def _health(conn: http.client.HTTPConnection, address: str) -> str | None:
    try:
        conn.request("GET", "/health")
        status = conn.getresponse().status
    except http.client.HTTPException as err:  # e.g. a TLS server's bytes read as HTTP
        raise ConnectionResetError(f"not an HTTP answer ({type(err).__name__})") from None
    finally:
        conn.close()
    return None if status == 200 else f"the SuperLink at {address} answers /health with HTTP {status}"


def _speaks_tls(host: str, port: int, timeout: float) -> bool:
    """Does a TLS handshake (no verification: only the protocol matters here) complete?"""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, context.wrap_socket(raw):
            return True
    except OSError:
        return False


def _reason(err: BaseException) -> str:
    return " ".join((getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err) or type(err).__name__)
                    .split())


class LinkMonitor:
    """Probes the SuperLink every `interval_s`; prints a hint when the problem changes; serves /health.

    /health answers 200 only while the SuperNode process is alive and the last probe reached the
    SuperLink; otherwise 503 with the problem as the body (the container's health check prints it)."""

    def __init__(self, address: str, root_certificates: Path | None, supernode_alive: Callable[[], bool],
                 say: Callable[[str], None], interval_s: float = 15.0) -> None:
        self.address, self.root_certificates = address, root_certificates
        self.supernode_alive, self.say, self.interval_s = supernode_alive, say, interval_s
        self.problem: str | None = "not probed yet"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="superlink-probe", daemon=True)
        self._server: ThreadingHTTPServer | None = None

    def check(self) -> str | None:
        problem = probe_superlink(self.address, self.root_certificates)
        if problem != self.problem:
            if problem is not None:
                self.say(f"[yellow]! {problem}[/yellow]")
            elif self.problem != "not probed yet":
                self.say(f"[green]the SuperLink at {self.address} is reachable again[/green]")
        self.problem = problem
        return problem

    def status(self) -> tuple[int, str]:
        if not self.supernode_alive():
            return 503, "the SuperNode is not running"
        return (200, "ok") if self.problem is None else (503, self.problem)

    def start(self, health_port: int | None) -> None:
        if health_port is not None:
            try:
                self._server = ThreadingHTTPServer(("127.0.0.1", health_port), _handler(self))
            except OSError as err:
                problem = f"cannot listen on 127.0.0.1:{health_port} ({_reason(err)}); give a free port, or 0 for none"
                raise InputError("<command line>", "--health-port", problem) from None
            threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.interval_s)


def _handler(monitor: LinkMonitor) -> type[BaseHTTPRequestHandler]:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            code, text = monitor.status() if self.path == "/health" else (404, "not found")
            body = (text + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # the container polls every 30 s: keep the log quiet
            pass

    return Health
