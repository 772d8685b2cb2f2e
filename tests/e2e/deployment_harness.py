"""A real deployment on 127.0.0.1 for the e2e tests: the center's key material from `fedcare certs`,
each hospital's keys from its own `fedcare client init`, the roster from `fedcare roster`, tiny
synthetic hospitals, `fedcare server` and `fedcare client` processes (each in its own session,
output to a log file). Every process is stopped by PID when the test ends, pass or fail."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fedcare.certs import DeploymentPaths, assemble_roster, write_deployment_keys
from fedcare.flower_processes import children_of, is_running
from fedcare.site_keys import SiteKeyPaths, generate_auth_key, init_site_keys
from shared.config import config_from_dict
from shared.tasks.registry import build_task

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "task": "event_mortality",
    "data": {"sites": ["site_a", "site_b", "site_c"], "synth_sizes": [160, 120, 80], "max_events": 32, "text_dim": 16},
    "model": {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2,
              "mlp_hidden": 16},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 32, "lr": 0.003},
    "privacy": {"target_epsilon": 4.0},
    "strategy": {"name": "fedavg", "min_sites": 2},
    "federation": {"mode": "deployment", "round_timeout_s": 60.0, "wait_for_sites_s": 120.0},
}


def _die_with_pytest() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL (Linux PR_SET_PDEATHSIG),
    so a killed test run leaves no deployment behind (`fedcare server/client` stop theirs on SIGTERM)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Deployment:
    def __init__(self, root: Path, rounds: int, round_timeout_s: float, extra_sites: tuple[str, ...] = (),
                 sites: dict[str, int] | None = None, min_sites: int | None = None) -> None:
        """`sites`: site name -> synthetic stays (default TINY's three sites); `min_sites`: sites each round
        waits for (default TINY's 2)."""
        self.root = root
        raw = json.loads(json.dumps(TINY))
        if sites:
            raw["data"]["sites"], raw["data"]["synth_sizes"] = list(sites), list(sites.values())
        if min_sites is not None:
            raw["strategy"]["min_sites"] = min_sites
        raw["train"]["rounds"] = rounds
        raw["federation"]["round_timeout_s"] = round_timeout_s
        raw["data"]["root"] = str(root / "data")
        raw["output_dir"] = str(root / "runs")
        self.cfg = config_from_dict(raw, "tiny.yaml")
        self.sites = list(self.cfg.data.sites)
        self.config_path = root / "center.yaml"
        self.config_path.write_text(yaml.safe_dump(raw))
        build_task(self.cfg).synthesize(root / "data", self.sites, 0)
        self.certs = DeploymentPaths(root / "certs")
        write_deployment_keys(self.certs.root, ["localhost"])
        # keys born at each hospital; only the configured sites' public folders reach the center
        self.site_keys = {s: init_site_keys(s, root / "hospitals" / s).paths for s in self.sites + list(extra_sites)}
        assemble_roster(self.certs.root, [self.site_keys[s].public for s in self.sites])
        self.port = free_port()
        self.run_dir = root / "runs" / "run"
        self.ports: list[int] = [self.port]
        self.health_ports: dict[str, int] = {}
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs = root / "logs"
        self.logs.mkdir()

    # -- files -----------------------------------------------------------------------------
    def state_dir(self, site: str) -> Path:
        return self.root / "state" / site

    def keys(self, site: str) -> SiteKeyPaths:
        return self.site_keys[site]

    def approve(self, site: str, config: Path | None = None, roster: Path | None = None) -> Path:
        """`fedcare client approve --yes` at `site` (in this process: the same installed code as the sites);
        returns the site's policy file."""
        from fedcare.cli import main

        policy = self.root / "policies" / f"{site}.yaml"
        policy.parent.mkdir(exist_ok=True)
        args = ["client", "approve", "--policy", str(policy), "--config", str(config or self.config_path), "--site", site,
                "--yes", *(["--roster", str(roster)] if roster else [])]
        assert main(args) == 0
        return policy

    def site_yaml(self, site: str, auth_key: Path | None = None, name: str | None = None, policy: Path | bool = True,
                  roster: Path | None = None, claims: str | None = None) -> Path:
        """A hospital's site.yaml. `policy`: True approves the deployment's run config (`fedcare client
        approve`), False leaves the site without a policy, a path is used as is. `claims`: the site name
        the file states (default `site`); keys, data and state are `site`'s."""
        data_site = site if (self.root / "data" / site).is_dir() else self.sites[0]
        path = self.root / f"{name or site}.yaml"
        policy_path = self.approve(site, roster=roster) if policy is True else policy or None
        extra = {"policy": str(policy_path)} if policy_path else {}
        extra.update({"roster": str(roster)} if roster else {})
        path.write_text(yaml.safe_dump({
            **extra,
            "site": claims or site,
            "data_dir": str(self.root / "data" / data_site),
            "state_dir": str(self.state_dir(name or site)),
            "budget": {"lifetime_epsilon": 10.0, "delta": 1.0e-5},
            "key": str(self.keys(site).identity_key),
            "auth_key": str(auth_key or self.keys(site).auth_key),
            "superlink": f"127.0.0.1:{self.port}",
            "root_certificates": str(self.certs.ca_cert),
        }))
        return path

    def impostor_key(self) -> Path:
        key = self.root / "impostor" / "auth.key"
        generate_auth_key(key, key.with_suffix(".pub"))
        return key

    def ledger(self, site: str, evaluations: bool = False) -> list[dict[str, Any]]:
        """The site's ledger lines: its training rounds, or (`evaluations`) its DP evaluation releases (the noisy
        training count, a release of its own, is in neither: `count_release`)."""
        lines = self._ledger_lines(site)
        return [e for e in lines if (e.get("extra") or {}).get("phase") != "count"
                and ((e.get("extra") or {}).get("phase") == "evaluate") == evaluations]

    def count_release(self, site: str) -> dict[str, Any] | None:
        """The ledger line of the site's noisy training count (the FedAvg weight it sends)."""
        return next((e for e in self._ledger_lines(site) if (e.get("extra") or {}).get("phase") == "count"), None)

    def _ledger_lines(self, site: str) -> list[dict[str, Any]]:
        path = self.state_dir(site) / "privacy_ledger.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def run_id(self) -> str:
        return str(json.loads((self.run_dir / "run.json").read_text())["run_id"])

    # -- processes -------------------------------------------------------------------------
    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   COLUMNS="120")
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([sys.executable, "-m", "fedcare", *args], cwd=self.root, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_pytest)
        log.close()
        self.procs.append((name, proc))
        return proc

    def start_server(self, *extra: str) -> subprocess.Popen[bytes]:
        if "--resume" in extra:
            args = list(extra)
        else:
            args = ["--config", str(self.config_path), "--run-dir", str(self.run_dir), *extra]
        return self._start("server", "server", *args, "--certs", str(self.certs.root), "--address", f"127.0.0.1:{self.port}")

    def wait_until_registered(self, timeout_s: float = 180) -> None:
        """The center's order: SuperLink up, hospitals' keys registered, run submitted."""
        self.wait_for("the center to register the hospitals", lambda: "run submitted" in self.log("server"), timeout_s)

    def start_client(self, site: str, site_yaml: Path | None = None, name: str | None = None,
                     *extra: str) -> subprocess.Popen[bytes]:
        port, health = free_port(), free_port()
        self.ports.append(port)
        self.health_ports[name or site] = health
        return self._start(name or site, "client", "--site-config", str(site_yaml or self.site_yaml(site)),
                           "--runtime-port", str(port), "--health-port", str(health), *extra)

    def health(self, name: str) -> tuple[int, str]:
        """A hospital's `fedcare client` health check: (HTTP status, body); (0, reason) when it does not answer."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_ports[name]}/health", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError as err:
            return 0, str(err)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> list[int]:
        """Kill a process and every process it started (a crash of that machine)."""
        pids = [proc.pid, *children_of(proc.pid)]
        for pid in pids:
            if is_running(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        proc.wait(timeout=30)
        return pids

    def ours(self) -> list[int]:
        """Live processes of this deployment: ours by PID, plus Flower's own helpers that name one of
        our ports or folders on their command line (they outlive a killed parent)."""
        mine = {p.pid for _, p in self.procs if p.poll() is None}
        for _, proc in self.procs:
            if proc.poll() is None:
                mine.update(children_of(proc.pid))
        markers = [str(self.root)] + [f"127.0.0.1:{port}" for port in self.ports]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(m in cmdline for m in markers) and is_running(int(entry.name)):
                mine.add(int(entry.name))
        return sorted(p for p in mine if is_running(p))

    def stop_all(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.ours():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 10
            while self.ours() and time.time() < deadline:
                time.sleep(0.2)
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.wait(timeout=10)

    def wait_for(self, what: str, condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.5) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if condition():
                return
            time.sleep(interval_s)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        parts = []
        for name, _ in self.procs:
            tail = "\n".join(self.log(name).splitlines()[-25:])
            parts.append(f"--- {name} ---\n{tail}")
        return "\n".join(parts)
