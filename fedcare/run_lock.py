"""One `fedcare server` per run folder: a second one (e.g. `--resume` while the first still runs) is
refused while any process of the first is alive.

Two witnesses, both checked against /proc: the pid file `RUN_DIR/center.pid` (the wrapper's pid and
start time, so a recycled pid is not mistaken for it), and the environment of every Flower process of
the run (SuperLink, SuperExec, ServerApp, `flwr run`), which all carry FLWR_HOME=RUN_DIR/.flower: they
are found even when the wrapper that started them is gone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedcare.flower_processes import is_running
from shared.errors import InputError
from shared.io import write_bytes

PID_FILE = "center.pid"


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [Path(a.decode(errors="replace")).name for a in argv[:4] if a]
    if len(words) > 2 and words[1] == "-m" and words[2] == "fedcare.process_guard":
        return "fedcare process guard"
    if len(words) > 2 and words[1] == "-m" and words[2] == "fedcare.superlink_guard":
        return "flower-superlink"  # Flower's SuperLink, run with its control plane closed (fedcare/superlink_guard.py)
    flower = next((w for w in words if w.startswith(("flower-", "flwr"))), None)
    return flower or " ".join(words[:2])


def flower_home(run_dir: Path) -> Path:
    return Path(run_dir).resolve() / ".flower"


def live_processes(run_dir: Path) -> list[tuple[int, str]]:
    """(pid, command) of every live process of this run folder's deployment, this process excepted."""
    run_dir = Path(run_dir)
    found: dict[int, str] = {}
    pid_file = run_dir / PID_FILE
    if pid_file.is_file():
        try:
            record = json.loads(pid_file.read_text())
            pid, started = int(record["pid"]), int(record["start_time"])
        except (OSError, ValueError, KeyError, TypeError):
            pid, started = 0, 0
        if pid and pid != os.getpid() and is_running(pid) and _start_time(pid) == started:
            found[pid] = "fedcare server"
    marker = f"FLWR_HOME={flower_home(run_dir)}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's process
            continue
        if marker in environ.split(b"\0") and is_running(int(entry.name)):
            found.setdefault(int(entry.name), _command(int(entry.name)))
    return sorted(found.items())


def claim_run_dir(run_dir: Path) -> None:
    """Refuse (one line) while a process of this run is alive; else record this process as the run's center."""
    alive = live_processes(run_dir)
    if alive:
        shown = ", ".join(f"{name} (pid {pid})" for pid, name in alive[:4]) + (" ..." if len(alive) > 4 else "")
        raise InputError(run_dir, None, f"this run is still running: {shown}; stop it before starting it again")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_bytes(Path(run_dir) / PID_FILE,
                     json.dumps({"pid": os.getpid(), "start_time": _start_time(os.getpid())}).encode())


def release_run_dir(run_dir: Path) -> None:
    pid_file = Path(run_dir) / PID_FILE
    try:
        if json.loads(pid_file.read_text()).get("pid") == os.getpid():
            pid_file.unlink()
    except (OSError, ValueError):
        pass
