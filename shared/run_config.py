"""The Flower run config of a fedcare run: flat keys (pyproject `[tool.flwr.app.config]`), parsed once.

    config         a config file (path), a shipped config's name (fedcare/configs/<name>.yaml), or the resolved config
                   itself as JSON: what `fedcare server` and `fedcare simulate` send, so a site reads
                   nothing from the center's disk
    rounds         > 0: overrides train.rounds
    seed           >= 0: overrides seed
    out            not empty: overrides output_dir (the run folder is <out>/<run-id>)
    data-root      not empty: overrides data.root
    run-id         empty: "flwr-<Flower's run id>" (the ServerApp and every ClientApp see the same one)
    run-dir        empty: <output_dir>/<run-id>
    cpus-per-site  > 0: overrides federation.cpus_per_site (torch threads per site)
    resume         continue run-id in run-dir from its last global checkpoint

`flwr run . --run-config "rounds=1 seed=3"` sets them from the command line. Relative paths are
resolved against the working directory of the process that runs the apps (for `flwr run`, the one
the local SuperLink was started from).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import RunConfig, config_from_json, load_config
from shared.errors import InputError

SOURCE = "run config"


@dataclass(frozen=True)
class RunSpec:
    """What a ServerApp or ClientApp needs from the run config."""

    cfg: RunConfig
    run_id: str
    run_dir: Path
    resume: bool


def run_config_keys(cfg: RunConfig, run_id: str, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """The run config a fedcare command sends: the resolved config (overrides already applied) and the run's place."""
    return {"config": cfg.to_json(), "run-id": run_id, "run-dir": str(run_dir.resolve()), "resume": resume}


def parse_run_config(rc: Mapping[str, Any], flower_run_id: int | str | None = None) -> RunSpec:
    """The run config as the apps see it (pyproject defaults fused with the run's overrides) -> RunSpec."""
    cfg = _load(str(rc.get("config", "")).strip())
    rounds, seed = _int(rc, "rounds", 0), _int(rc, "seed", -1)
    if rounds < 0:
        raise InputError(SOURCE, "rounds", f"must be >= 1 (or 0: the config's), got {rounds}")
    if rounds:
        cfg.train.rounds = rounds
    if seed >= 0:
        cfg.seed = seed
    if str(rc.get("out", "")):
        cfg.output_dir = str(rc["out"])
    if str(rc.get("data-root", "")):
        cfg.data.root = str(rc["data-root"])
    cpus = _number(rc, "cpus-per-site", 0)
    if cpus < 0:
        raise InputError(SOURCE, "cpus-per-site", f"must be > 0 (or 0: the config's), got {cpus}")
    if cpus:
        cfg.federation.cpus_per_site = cpus
    run_id = str(rc.get("run-id", "")) or f"flwr-{flower_run_id}"
    if flower_run_id is None and not str(rc.get("run-id", "")):
        raise InputError(SOURCE, "run-id", "empty, and no Flower run id to name the run after")
    if not run_id.replace("-", "").replace("_", "").replace(".", "").isalnum() or run_id.startswith("."):
        raise InputError(SOURCE, "run-id", f"letters, digits, '-', '_' and '.' only, got {run_id!r}")
    run_dir = Path(str(rc.get("run-dir", "")) or Path(cfg.output_dir) / run_id)
    return RunSpec(cfg=cfg, run_id=run_id, run_dir=run_dir, resume=_truthy(rc.get("resume", False)))


def find_config(name: str) -> Path:
    """A config path, or a shipped config's name: fedcare/configs/<name>.yaml of the installed fedcare package
    (located without importing it: shared/ never imports the applications), else ./configs/<name>.yaml."""
    path = Path(name)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    spec = importlib.util.find_spec("fedcare")
    roots = [Path(spec.origin).parent / "configs"] if spec and spec.origin else []
    for root in (*roots, Path.cwd() / "fedcare" / "configs", Path.cwd() / "configs"):
        candidate = root / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return path  # load_config names it as not found


def _load(value: str) -> RunConfig:
    if not value:
        raise InputError(SOURCE, "config", "empty: give a config name or path, e.g. --run-config \"config='event_mortality'\"")
    if value.startswith("{"):
        try:
            return config_from_json(value)
        except json.JSONDecodeError as err:
            raise InputError(SOURCE, "config", f"not valid JSON ({err.msg} at {err.pos})") from None
    return load_config(find_config(value))


def _number(rc: Mapping[str, Any], key: str, default: float) -> float:
    value = rc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(SOURCE, key, f"expected a number, got {value!r}")
    return value


def _int(rc: Mapping[str, Any], key: str, default: int) -> int:
    value = _number(rc, key, default)
    if value != int(value):
        raise InputError(SOURCE, key, f"expected a whole number, got {value!r}")
    return int(value)


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")
