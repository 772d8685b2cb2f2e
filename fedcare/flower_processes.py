"""Starting and stopping the Flower processes of a deployment (SuperLink, SuperNode, `flwr`).

Every process is started by us with a known PID and stopped by that PID: SIGTERM, a grace
period, then SIGKILL, and the same for whatever it started (Flower's SuperExec and app
processes), found by walking /proc. Each command runs under `fedcare.process_guard`, so it and
all it started also die when the wrapper itself is killed (SIGKILL included). Each deployment gets
its own FLWR_HOME, never ~/.flwr and never Flower's managed local SuperLink.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

PINNED_FLOWER = "1.41.0"  # fedcare patches module attributes of this release (superlink_guard, supernode_runner)


def require_flower_version(what: str) -> None:
    """Stop with one line when the installed flwr is not the release `what` patches."""
    import flwr

    if flwr.__version__ != PINNED_FLOWER:
        raise SystemExit(f"{what} is written for flwr {PINNED_FLOWER}, found {flwr.__version__}")


def flower_executable(name: str) -> str:
    """A Flower command from the interpreter's own environment (a venv need not be on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH (pip install flwr==1.41.0)")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: a private FLWR_HOME, the interpreter's bin first on PATH
    (the SuperLink and SuperNode start `flower-superexec` by name), no runtime `uv sync`."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def children_of(pid: int) -> list[int]:
    """All live descendants of `pid` (Linux /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def stop_pids(pids: Sequence[int], grace_s: float = 10.0) -> None:
    """SIGTERM each pid, wait up to `grace_s`, SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if is_running(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.time() + (grace_s if sig == signal.SIGTERM else 5.0)
        while any(is_running(p) for p in pids) and time.time() < deadline:
            time.sleep(0.1)
        if not any(is_running(p) for p in pids):
            return


class FlowerProcess:
    """One started command, its output appended to a log file (or passed through)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path | None) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self._log: IO[bytes] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        guarded = [sys.executable, "-m", "fedcare.process_guard", str(os.getpid()), "--", *argv]
        self.proc = subprocess.Popen(guarded, env=env, stdout=self._log, stderr=subprocess.STDOUT if self._log else None,
                                     stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Stop it and everything it started; returns its exit code."""
        if self.alive():
            family = children_of(self.pid)
            stop_pids([self.pid], grace_s)
            stop_pids([p for p in family if is_running(p)], grace_s=3.0)
        self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
