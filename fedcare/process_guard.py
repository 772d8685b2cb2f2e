"""`python -m fedcare.process_guard PARENT_PID -- COMMAND...`: runs one Flower command so that it and
everything it starts die with the fedcare wrapper that started it, even when the wrapper is killed
with SIGKILL and cannot clean up.

Flower's own processes start more processes (the SuperLink its SuperExec, which starts the ServerApp;
the SuperNode its SuperExec and ClientApps), and those keep running when their parent dies. This guard
sits between the wrapper and the command:
- PR_SET_PDEATHSIG: the kernel sends it SIGTERM when the wrapper dies;
- PR_SET_CHILD_SUBREAPER: every process below it whose parent dies is re-parented to it, not to init,
  so the whole family stays findable under its pid;
- on SIGTERM (the wrapper died, or `FlowerProcess.stop`) it stops the command, then every remaining
  descendant (SIGTERM, a grace period, SIGKILL); when the command exits by itself it stops the
  command's leftovers the same way; then it exits with the command's exit code.
Standard library only: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

from fedcare.flower_processes import children_of, stop_pids

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
GRACE_S = 10.0


class _Stop(Exception):
    pass


def _prctl(option: int, value: int) -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


def run(parent_pid: int, argv: list[str]) -> int:
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    if os.getppid() != parent_pid:  # the wrapper died before the death signal was armed
        return 1
    code = 1
    try:
        child = subprocess.Popen(argv)  # inherits stdin/stdout/stderr and the environment
        while True:
            pid, status = os.waitpid(-1, 0)  # reaps the command and any orphan re-parented to us
            if pid == child.pid:
                child.returncode = code = _exit_code(status)
                break
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        code = 128 + signal.SIGTERM
    except ChildProcessError:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_family()
    return code


def _stop_family() -> None:
    """Stop every process below this one: first the direct children (they may stop their own), then the rest."""
    me = os.getpid()
    stop_pids([p for p in children_of(me) if _parent(p) == me], GRACE_S)
    deadline = time.time() + GRACE_S
    while (left := children_of(me)) and time.time() < deadline:
        stop_pids(left, grace_s=3.0)
        _reap()
    _reap()


def _parent(pid: int) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.stderr.write("usage: python -m fedcare.process_guard PARENT_PID -- COMMAND [ARGS...]\n")
        return 2
    return run(int(sys.argv[1]), sys.argv[3:])


if __name__ == "__main__":
    sys.exit(main())
