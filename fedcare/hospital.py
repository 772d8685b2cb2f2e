"""`fedcare client`: one hospital's SuperNode, kept running, and the site's own ClientApp process.

Validates the site.yaml first (paths, keys, policy, address: one-line errors), then runs
`flower-supernode --isolation process` (through fedcare.supernode_runner: a 0.5 s idle beat) with the
site's TLS root certificate, SuperNode authentication key and node config `site-config=<site.yaml>`.
With process isolation the SuperNode runs no app code: this wrapper's `AppLauncher` answers each message
with `fedcare.clientapp_process` (one process per run), which loads the ClientApp from the site's
installed packages and refuses a run whose app bundle differs from them (fedcare/clientapp_process.py).
The SuperNode's Runtime API listens on 127.0.0.1 only. The wrapper starts the SuperNode again whenever
it exits: the SuperLink restarted (the node's old id is unknown to it), the network dropped, or the
SuperLink still counts a crashed earlier instance of this node as online (activation is refused until
its heartbeat expires, about a minute). Meanwhile `fedcare.link_health` probes the SuperLink itself: the
health check (--health-port) fails while it is unreachable, and a plaintext site against a TLS center
(or the reverse) gets a one-line hint instead of silent retries.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console

from client.site_config import SiteDeployment, load_site_deployment
from fedcare.clientapp_process import TASK_SIGNAL_ENV, AppLauncher
from fedcare.flower_processes import FlowerProcess, flower_env
from fedcare.link_health import LinkMonitor
from shared.training.devices import resolve_device

FIRST_RETRY_S, MAX_RETRY_S = 2.0, 30.0


def supernode_argv(site: SiteDeployment, site_yaml: Path, runtime_port: int) -> list[str]:
    # Flower's SuperNode with a 0.5 s idle beat instead of 3 s (fedcare/supernode_runner.py)
    argv = [sys.executable, "-m", "fedcare.supernode_runner", "--superlink", site.superlink,
            "--node-config", f'site-config="{site_yaml.resolve()}"', "--host", "127.0.0.1", "--port", str(runtime_port),
            "--isolation", "process"]
    if site.insecure:
        return argv + ["--insecure"]
    return argv + ["--root-certificates", str(site.root_certificates), "--auth-supernode-private-key", str(site.auth_key)]


def run_hospital(site_yaml: Path, runtime_port: int, max_restarts: int | None, console: Console,
                 health_port: int | None = None) -> int:
    """Blocks until stopped (Ctrl-C / SIGTERM: returns 0) or, with `max_restarts`, until the
    SuperNode has exited that many times more (returns 1)."""
    site = load_site_deployment(site_yaml)
    settings = site.settings
    if settings.device is not None:
        resolve_device(settings.device, settings.source, "device")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    env = flower_env(settings.state_dir / "flower")  # FAB cache of this site
    argv = supernode_argv(site, site_yaml, runtime_port)
    mode = "[red]INSECURE (no TLS)[/red]" if site.insecure else "TLS, SuperNode key " + site.auth_key.name  # type: ignore[union-attr]
    console.print(f"[bold]fedcare client[/bold] site={settings.site} superlink={site.superlink} {mode} "
                  f"data={settings.data_dir} state={settings.state_dir}")
    if settings.policy is None:
        console.print("[yellow]! no policy in site.yaml: this site refuses every run (reason no_policy)[/yellow]")
    launcher = AppLauncher(f"127.0.0.1:{runtime_port}", site_yaml.resolve(), env)
    current: dict[str, FlowerProcess] = {}  # the SuperNode running now (it is restarted)
    monitor = LinkMonitor(site.superlink, None if site.insecure else site.root_certificates,
                          lambda: "node" in current and current["node"].alive(), console.print)
    monitor.start(health_port)  # first: a health port in use is a one-line error before anything runs
    try:
        launcher.start()
        try:
            node_env = {**env, TASK_SIGNAL_ENV: launcher.task_signal_address}  # it announces each task
            return _keep_supernode_running(argv, node_env, settings.site, max_restarts, console, current)
        finally:
            launcher.stop()
    finally:
        monitor.stop()


def _keep_supernode_running(argv: list[str], env: dict[str, str], site: str, max_restarts: int | None,
                            console: Console, current: dict[str, FlowerProcess] | None = None) -> int:
    restarts, delay = 0, FIRST_RETRY_S
    while True:
        started = time.time()
        node = FlowerProcess("supernode", argv, env, None)  # output goes to this console / the container log
        if current is not None:
            current["node"] = node
        try:
            code = node.proc.wait()
        finally:
            node.stop()
        if time.time() - started > 30:
            delay = FIRST_RETRY_S  # it had been connected: a fresh failure, not a refusal repeating
        restarts += 1
        if max_restarts is not None and restarts > max_restarts:
            console.print(f"[red]SuperNode of {site} exited (code {code}); not restarting "
                          f"(--max-restarts {max_restarts})[/red]")
            return 1
        console.print(f"[yellow]SuperNode of {site} exited (code {code}); connecting again in {delay:.0f} s[/yellow]")
        time.sleep(delay)
        delay = min(2 * delay, MAX_RETRY_S)
