"""`fedcare simulate`: a whole federation on one machine with Flower's simulation runtime
(one virtual SuperNode per hospital, each loading only its own site's folder)."""

from __future__ import annotations

import logging
import os
import secrets
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from fedcare.progress import RunProgress
from fedcare.progress_grid import ProgressGrid
from shared.config import RunConfig
from shared.errors import InputError
from shared.io import load_json, write_text
from shared.run_config import run_config_keys


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def ensure_site_data(cfg: RunConfig, console: Console) -> None:
    """Synthesise the configured sites when the data root holds none of them."""
    from shared.tasks.registry import build_task

    root = Path(cfg.data.root)
    present = [s for s in cfg.data.sites if (root / s).is_dir()]
    if present and len(present) < len(cfg.data.sites):
        missing = sorted(set(cfg.data.sites) - set(present))
        raise InputError(cfg.source, "data.sites", f"no folder for {', '.join(missing)} under {root}")
    if not present:
        console.print(f"[cyan]no site data under {root}: writing synthetic data for {len(cfg.data.sites)} sites[/cyan]")
        build_task(cfg).synthesize(root, list(cfg.data.sites), cfg.seed)
    task = build_task(cfg)
    for site in cfg.data.sites:  # bad data stops here, with one line, before any run folder exists
        task.check_site(root / site, site)


def write_resolved_config(cfg: RunConfig, run_dir: Path) -> None:
    write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def simulate(cfg: RunConfig, run_dir: Path | None = None, console: Console | None = None,
             verbose: bool = False) -> tuple[Path, dict[str, Any]]:
    console = console or Console(highlight=False)
    ensure_site_data(cfg, console)
    run_id = new_run_id()
    run_dir = run_dir or Path(cfg.output_dir) / run_id
    write_resolved_config(cfg, run_dir)
    console.print(
        f"[bold]fedcare simulate[/bold] task={cfg.task} sites={', '.join(cfg.data.sites)} rounds={cfg.train.rounds} "
        f"target epsilon={cfg.privacy.target_epsilon} run={run_dir}"
    )
    with RunProgress(cfg.total_rounds, len(cfg.data.sites), console) as progress:
        run_flower_simulation(cfg, run_config_keys(cfg, run_id, run_dir), progress, verbose)
        progress.finished()
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise RuntimeError(f"the federation ended without a summary (see the log above); run folder: {run_dir}")
    summary = load_json(summary_path)
    if not summary.get("complete"):
        secure = summary.get("secure_aggregation") or {}
        if secure.get("failure") or secure.get("rounds_failed"):
            why = secure.get("failure") or f"secure aggregation failed in rounds {secure['rounds_failed']} (see events)"
            raise RuntimeError(f"{why}; run folder: {run_dir}")
        raise RuntimeError(f"no site trained in any round; run folder: {run_dir}")
    return run_dir, summary


def run_flower_simulation(cfg: RunConfig, rc: dict[str, Any], progress: RunProgress | None = None,
                          verbose: bool = False) -> None:
    """One run on Flower's Simulation Runtime, in this process: the function `flwr run` reaches through the
    SuperLink's `flwr-simulation` process (flwr.simulation.run_simulation._run_simulation), given the apps
    and their run config directly. (`flwr.simulation.run_simulation` is its deprecated public wrapper.)"""
    from flwr.serverapp import Grid
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from client.app import build_client_app
    from fedcare.simulation_dispatch import signalled_dispatch
    from server.app import build_server_app
    from server.prompt_grid import PromptGrid

    backend_config = {
        "client_resources": {"num_cpus": cfg.federation.cpus_per_site, "num_gpus": cfg.federation.gpus_per_site},
        "init_args": {"logging_level": "ERROR", "log_to_driver": True, "include_dashboard": False},
    }
    with third_party_output(verbose), signalled_dispatch() as signals:

        def wrap(grid: Grid) -> Grid:  # replies and requests move on signals, not on a 0.1 s beat
            # the signalled dispatch gives each site one request at a time, in the order sent
            if progress is None:
                return PromptGrid(grid, signals=signals, sites_answer_in_order=True)
            return ProgressGrid(grid, progress, signals=signals, sites_answer_in_order=True)

        _run_simulation(
            num_supernodes=len(cfg.data.sites),
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            server_app=build_server_app(rc, wrap),
            client_app=build_client_app(rc),
            backend_config=backend_config,  # type: ignore[arg-type]
            verbose_logging=verbose,
        )


@contextmanager
def third_party_output(verbose: bool) -> Iterator[None]:
    """Flower's and Ray's notices that say nothing about the run, silenced where they arise (unless --verbose):
    Ray's FutureWarning on accelerator variables, Flower's INFO/WARNING chatter (e.g. "Manually terminating
    ClientAppActor" as Ray actors stop). Errors still show. The Ray workers inherit FLWR_LOG_LEVEL."""
    if verbose:
        yield
        return
    saved_env = os.environ.get("FLWR_LOG_LEVEL")
    flwr_logger = logging.getLogger("flwr")
    saved_level = flwr_logger.level
    os.environ["FLWR_LOG_LEVEL"] = "ERROR"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    flwr_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
            yield
    finally:
        flwr_logger.setLevel(saved_level)
        if saved_env is None:
            os.environ.pop("FLWR_LOG_LEVEL", None)
        else:
            os.environ["FLWR_LOG_LEVEL"] = saved_env
