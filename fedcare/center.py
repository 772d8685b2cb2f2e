"""`fedcare server`: the coordinating center of a real deployment.

Starts its own `flower-superlink` (TLS + SuperNode authentication unless --insecure; a private
FLWR_HOME in runs/<run-id>/.flower; in-memory state), registers the hospitals' SuperNode public
keys, submits the run with `flwr run <project> --run-config <file>` (the resolved config travels
as the run config's `config` key, JSON), prints each round as the ServerApp writes runs/<run-id>/metrics.json,
and stops its own processes by PID on exit, error or Ctrl-C. `--resume RUN_DIR` submits the same
run id again with `resume = true`: the ServerApp continues from the last global checkpoint.

The SuperLink serves its Fleet, Control and Runtime APIs on one port. It runs under
fedcare.superlink_guard: only /v1/fleet/ and /health answer a client that is not 127.0.0.1, and
every node key is registered under one site name that no other key may take. The center registers
the nodes and submits the run itself, over 127.0.0.1; the ServerApp maps each node to the name it
was registered with and never takes a site's name from a reply.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from rich.console import Console

from fedcare.certs import DeploymentPaths
from fedcare.flower_processes import FlowerProcess, flower_env, flower_executable
from fedcare.simulation import write_resolved_config
from server.history import RunHistory
from shared.config import RunConfig
from shared.errors import InputError
from shared.io import load_json, write_json, write_text
from shared.run_config import run_config_keys

CONNECTION = "fedcare"  # the SuperLink connection name in the private FLWR_HOME
RUN_FILE = "run.json"  # run id and resume history, next to config.yaml in the run folder


@dataclass
class CenterOptions:
    cfg: RunConfig
    run_dir: Path
    run_id: str
    resume: bool
    certs: Path | None  # the `fedcare certs` output folder; None with insecure
    insecure: bool
    host: str
    port: int


def parse_address(text: str, source: str = "<command line>", field: str = "--address") -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(source, field, f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def project_dir() -> Path:
    """The Flower app directory: the project root holding pyproject.toml with [tool.flwr.app]
    (the package is installed editable, so it is the parent of the installed `server` package)."""
    import server

    root = Path(server.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise InputError(root, "pyproject.toml", "the fedcare source tree is needed to build the Flower app; "
                                                 "install it editable (pip install -e .)")
    return root


def supernode_keys(certs: Path, sites: list[str]) -> dict[str, Path]:
    """site -> SuperNode public key for every configured site (center/supernode_keys/<site>_auth.pub, written by
    `fedcare roster` from the public keys the hospitals created themselves)."""
    paths = DeploymentPaths(certs)
    for required in (paths.ca_cert, paths.server_cert, paths.server_key):
        if not required.is_file():
            raise InputError(required, None, "missing; create the center's key material with `fedcare certs`")
    keys = {}
    for site in sites:
        path = paths.supernode_keys / f"{site}_auth.pub"
        if not path.is_file():
            continue
        try:
            key = load_ssh_public_key(path.read_bytes())
        except (ValueError, UnsupportedAlgorithm) as err:
            raise InputError(path, None, f"not an OpenSSH public key ({err})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InputError(path, None, f"expected an EC public key, got {type(key).__name__}")
        keys[site] = path
    if not keys:
        raise InputError(paths.supernode_keys, None, f"no SuperNode key for any of {', '.join(sites)} "
                                                     "(run `fedcare roster` with the hospitals' public keys)")
    return keys


class Center:
    """The running center: SuperLink + registered hospitals + one submitted run."""

    def __init__(self, opts: CenterOptions, console: Console) -> None:
        self.opts, self.console = opts, console
        # Flower's own state for this deployment only (config, app bundles); removed on exit and
        # replaced on resume, so a crash leaves it inside the run folder and nowhere else
        self.flwr_home = opts.run_dir / ".flower"
        shutil.rmtree(self.flwr_home, ignore_errors=True)
        self.flwr_home.mkdir(parents=True)
        self.env = flower_env(self.flwr_home)
        self.logs = opts.run_dir / "logs"
        self.processes: list[FlowerProcess] = []
        self.local_address = f"127.0.0.1:{opts.port}" if opts.host in ("0.0.0.0", "127.0.0.1", "localhost", "::") \
            else f"{opts.host}:{opts.port}"
        self.ca = None if opts.insecure or opts.certs is None else DeploymentPaths(opts.certs).ca_cert

    # -- set-up ------------------------------------------------------------------------------
    def _write_flower_config(self) -> None:
        conn: dict[str, Any] = {"address": self.local_address}
        if self.ca is None:
            conn["insecure"] = True
        else:
            conn["root-certificates"] = str(self.ca.resolve())
        text = tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}})
        write_text(self.flwr_home / "config.toml", text)

    def start_superlink(self) -> None:
        # Flower's SuperLink with the control plane closed to non-local clients (fedcare/superlink_guard.py)
        argv = [sys.executable, "-m", "fedcare.superlink_guard", "--host", self.opts.host, "--port", str(self.opts.port),
                "--disable-runtime-dependency-installation"]
        if self.opts.insecure:
            argv.append("--insecure")
        else:
            paths = DeploymentPaths(self.opts.certs)  # type: ignore[arg-type]
            argv += ["--ssl-ca-certfile", str(paths.ca_cert), "--ssl-certfile", str(paths.server_cert),
                     "--ssl-keyfile", str(paths.server_key), "--enable-supernode-auth"]
        self._write_flower_config()
        superlink = FlowerProcess("superlink", argv, self.env, self.logs / "superlink.log")
        self.processes.append(superlink)
        self._wait_healthy(superlink)

    def _wait_healthy(self, superlink: FlowerProcess, timeout_s: float = 90.0) -> None:
        scheme = "http" if self.ca is None else "https"
        context = None if self.ca is None else ssl.create_default_context(cafile=str(self.ca))
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if not superlink.alive():
                raise RuntimeError(f"flower-superlink exited ({superlink.proc.returncode}):\n{superlink.log_tail()}")
            try:
                with urllib.request.urlopen(f"{scheme}://{self.local_address}/health", timeout=2, context=context):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
                time.sleep(0.5)
        raise RuntimeError(f"flower-superlink did not answer on {self.local_address} within {timeout_s:.0f} s")

    def register_sites(self, keys: dict[str, Path]) -> None:
        """`flwr supernode register` per hospital (in parallel: each is a CLI start-up), over 127.0.0.1.
        The guard refuses a second key for a registered name; Flower refuses a second name for a key."""
        flwr = flower_executable("flwr")
        started = {
            site: subprocess.Popen([flwr, "supernode", "register", str(key), CONNECTION, "--name", site], env=self.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
            for site, key in keys.items()
        }
        try:
            for site, proc in started.items():
                output, _ = proc.communicate(timeout=120)
                if proc.returncode != 0:
                    raise RuntimeError(f"registering {site}'s SuperNode key failed:\n{output.strip()}")
                self.console.print(f"registered SuperNode key of [bold]{site}[/bold] ({keys[site].name})")
        finally:
            for proc in started.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def submit_run(self) -> FlowerProcess:
        rc = run_config_keys(self.opts.cfg, self.opts.run_id, self.opts.run_dir, self.opts.resume)
        rc_file = self.flwr_home / "run_config.toml"
        write_text(rc_file, tomli_w.dumps(rc))
        # Flower's `flwr run`, its app bundle deflated (fedcare/flwr_cli.py)
        argv = [sys.executable, "-m", "fedcare.flwr_cli", "run", str(project_dir()), CONNECTION, "--run-config", str(rc_file),
                "--stream"]
        run = FlowerProcess("flwr run", argv, self.env, self.logs / "flower-run.log")
        self.processes.append(run)
        return run

    # -- during the run ------------------------------------------------------------------------
    def follow(self, run: FlowerProcess) -> None:
        """Print each finished round (and each note) as the ServerApp saves metrics.json."""
        cfg, metrics = self.opts.cfg, self.opts.run_dir / "metrics.json"
        history = RunHistory(self.opts.run_dir, list(cfg.data.sites), console=self.console)
        before = _saved_history(metrics)  # a resumed run: rounds and notes already shown last time
        printed, noted = {int(r) for r in before.get("rounds", {})}, set(before.get("events", []))
        seen_mtime = metrics.stat().st_mtime if metrics.is_file() else 0.0
        superlink = self.processes[0]
        while run.alive():
            time.sleep(1.0)
            if not superlink.alive():
                raise RuntimeError(f"flower-superlink stopped during the run:\n{superlink.log_tail()}")
            if not metrics.is_file() or metrics.stat().st_mtime == seen_mtime:
                continue
            seen_mtime = metrics.stat().st_mtime
            saved = _saved_history(metrics)
            history.rounds = {int(r): v for r, v in saved.get("rounds", {}).items()}
            for text in saved.get("events", []):
                if text not in noted:
                    self.console.print(f"[yellow]! {text}[/yellow]")
                    noted.add(text)
            for r in sorted(set(history.rounds) - printed):
                history.print_round(r, cfg.train.rounds)
                printed.add(r)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        shutil.rmtree(self.flwr_home, ignore_errors=True)


def _saved_history(metrics: Path) -> dict[str, Any]:
    try:
        return json.loads(metrics.read_text()) if metrics.is_file() else {}
    except (json.JSONDecodeError, OSError):
        return {}  # caught between writes: the next poll reads it


def prepare_run_dir(opts: CenterOptions) -> None:
    opts.run_dir.mkdir(parents=True, exist_ok=True)
    record_path = opts.run_dir / RUN_FILE
    record = load_json(record_path) if record_path.is_file() else {"run_id": opts.run_id, "starts": []}
    record["starts"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resume": opts.resume})
    write_json(record_path, record)
    if not opts.resume:
        write_resolved_config(opts.cfg, opts.run_dir)


def run_center(opts: CenterOptions, console: Console) -> dict[str, Any]:
    """Run (or resume) one federated run; returns its summary. Raises RuntimeError on failure."""
    keys = {} if opts.insecure else supernode_keys(opts.certs, list(opts.cfg.data.sites))  # type: ignore[arg-type]
    missing = sorted(set(opts.cfg.data.sites) - set(keys)) if not opts.insecure else []
    prepare_run_dir(opts)
    center = Center(opts, console)
    try:
        mode = "[red]INSECURE (no TLS, no node authentication)[/red]" if opts.insecure else "TLS + SuperNode authentication"
        console.print(f"[bold]fedcare server[/bold] run {opts.run_id} ({'resume' if opts.resume else 'new'}) "
                      f"task={opts.cfg.task} sites={', '.join(opts.cfg.data.sites)} rounds={opts.cfg.train.rounds}")
        center.start_superlink()
        console.print(f"SuperLink on {opts.host}:{opts.port}, {mode}; logs in {center.logs}")
        if opts.host not in ("127.0.0.1", "localhost", "::1"):
            console.print(f"Control and Runtime APIs: 127.0.0.1:{opts.port} only; {opts.host}:{opts.port} serves "
                          "the Fleet API (/v1/fleet/) and /health to other addresses")
        run = center.submit_run()  # the ServerApp waits for the hospitals: register them meanwhile
        center.register_sites(keys)
        for site in missing:
            console.print(f"[yellow]! no SuperNode key for {site}: it cannot join[/yellow]")
        console.print(f"run submitted; waiting for {len(opts.cfg.data.sites)} hospitals "
                      f"(up to {opts.cfg.federation.wait_for_sites_s:.0f} s)")
        center.follow(run)
        code = run.proc.wait()
    finally:
        center.stop()
    summary_path = opts.run_dir / "summary.json"
    if not summary_path.is_file():
        log = (opts.run_dir / "logs" / "flower-run.log")
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.is_file() else ""
        raise RuntimeError(f"the run ended without a summary (flwr run exit {code}); see {center.logs}\n{tail}")
    return load_json(summary_path)
