"""The hospital's ClientApp process: the site, not the bundle a run ships, decides what executes.

`fedcare client` runs `flower-supernode --isolation process`: the SuperNode then executes no app
code itself; it queues each message as a task on its local Runtime API (127.0.0.1). `AppLauncher`
(a thread of `fedcare client`) takes the SuperNode's tasks one at a time and hands each task's token
to a process of this module, from the site's installed packages, on its stdin:

- one process per run: the messages of a run go to the process that answered the run's first
  message, which keeps the site's prepared data, model and accounting caches in memory between
  rounds, as the simulation does (a fresh process per message paid Python, torch and Opacus imports
  and the site's set-up on every train and evaluate message: deployment rounds of 33-40 s against
  2-6 s in simulation, DESIGN-NOTES.md). A message of another run stops that process; the run gets a
  fresh one, so no state crosses runs;
- a spare process is kept started and imported for the next run (Flower expires a claimed task whose
  process has not pulled its input within 30 s: a cold start on a loaded machine can take longer). Once
  a run has taken the spare, the next one is started only after the site has had no message for
  SPARE_AFTER_IDLE_S: its start-up (~6 s of CPU: torch, fedcare, Opacus) otherwise ran beside the run's
  next rounds and slowed their training 2-5x on a small machine (benchmarks/round_breakdown.py). A run's
  first message that finds no spare starts a process at once.

For each message the process pulls the message, the run and the run's app bundle (FAB) with Flower's
own Runtime API calls, then:

- reads the bundle as a zip in memory (never extracted, never put on `sys.path`) and compares every
  file with the site's installed code (shared/privacy/code_bundle.py);
- different: none of the bundle's code runs. The refusal, with both digests and the differing paths,
  goes to the site's signed security log (`bundle_refused`), and the center gets an error reply whose
  reason is the code `bundle_refused`, nothing else;
- identical: the ClientApp is imported from the installed package (`client.app:app`) and answers.

Any failure of the app is answered with the code `internal_error`; the traceback stays in this
process's output at the site. The process tells the launcher it is done with a message by one line
on its original stdout (its own prints go to stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
import traceback
from logging import ERROR
from pathlib import Path

POLL_S = 0.5  # the fallback task poll of the local Runtime API: a SuperNode announces each task (TASK_SIGNAL_ENV)
SPARE_AFTER_IDLE_S = 20.0  # a serving site starts its next spare only after this long without a message
# The SuperNode (fedcare.supernode_runner) sends one datagram to this host:port once it has stored and confirmed a
# message: the launcher asks for the task at once instead of polling the Runtime API 20 times a second (issue 23:
# those polls, three sites' worth, took a quarter of a core on a 2-core machine and 25 ms of latency per message).
TASK_SIGNAL_ENV = "FEDCARE_TASK_SIGNAL"


def _runtime_client(address: str, token: str | None = None):  # noqa: ANN202 (a Flower RuntimeHttpClient)
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp" if token else "SuperExec")]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=interceptors,
                                                 retry_invoker=make_simple_http_retry_invoker() if token else None)


def bundle_check(fab_content: bytes, installed: dict[str, str] | None = None) -> tuple[list[str], str, str]:
    """(differences, the bundle's digest, the installed code's digest); no differences: the bundle is ours."""
    from shared.privacy.code_bundle import (
        BundleUnreadable,
        bundle_differences,
        fab_manifest,
        installed_manifest,
        manifest_digest,
    )

    installed = installed_manifest() if installed is None else installed
    try:
        bundle = fab_manifest(fab_content)
    except BundleUnreadable as err:
        return [str(err)], "unreadable", manifest_digest(installed)
    return bundle_differences(bundle, installed), manifest_digest(bundle), manifest_digest(installed)


class CheckedBundles:
    """`bundle_check`'s result per bundle, keyed by the SHA-256 of the bytes this process received (not the hash the
    bundle claims): every message of a run carries the same bundle, and its file-by-file comparison took ~7 ms of CPU
    per message. The check is a function of those bytes and of the installed code read when the process started."""

    KEEP = 4  # bundles remembered (a process serves one run; a few cover a resubmitted run's)

    def __init__(self, installed: dict[str, str]) -> None:
        self.installed = installed
        self.results: dict[bytes, tuple[list[str], str, str]] = {}

    def check(self, fab_content: bytes) -> tuple[list[str], str, str]:
        key = hashlib.sha256(fab_content).digest()
        result = self.results.get(key)
        if result is None:
            result = bundle_check(fab_content, self.installed)
            if len(self.results) >= self.KEEP:
                self.results.pop(next(iter(self.results)))
            self.results[key] = result
        return result[0].copy(), result[1], result[2]


def log_bundle_refused(site_yaml: Path, run_id: int, message_type: str, fab_hash: str, differences: list[str],
                       bundle_digest: str, installed_digest: str) -> None:
    from client.site_config import load_site_config
    from shared.privacy.code_bundle import MAX_LISTED_DIFFERENCES
    from shared.privacy.keys import load_private_key
    from shared.privacy.security_log import SECURITY_LOG_FILE, SecurityLog

    settings = load_site_config(site_yaml)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    key = load_private_key(settings.signing_key) if settings.signing_key else None
    SecurityLog(settings.state_dir / SECURITY_LOG_FILE, settings.site, key).append({
        "kind": "bundle_refused", "run_id": run_id, "message_type": message_type, "fab_hash": fab_hash,
        "bundle_digest": bundle_digest, "installed_digest": installed_digest,
        "differences": differences[:MAX_LISTED_DIFFERENCES], "n_differences": len(differences),
    })


def _warm_up() -> None:
    try:
        import opacus  # noqa: F401
    except Exception:  # the message's own import reports it
        pass


DONE = b"fedcare-clientapp: done\n"  # the line that tells the launcher a message is answered


def answer_message(runtime_address: str, token: str, site_yaml: Path, bundles: CheckedBundles) -> None:
    """Answer the one message behind `token` (any failure is answered with `internal_error`)."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore import log
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    from client.app import app  # the site's installed ClientApp (never the bundle's)

    client = _runtime_client(runtime_address, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context = message = reply = None
    status, details = SubStatus.FAILED, "internal_error"
    try:
        message, context, run, fab = pull_task_input(client)
        differences, bundle_digest, installed_digest = bundles.check(fab.content)
        if differences:
            log_bundle_refused(site_yaml, run.run_id, message.metadata.message_type, fab.hash_str, differences,
                               bundle_digest, installed_digest)
            print(f"fedcare: run {run.run_id}: app bundle refused, {len(differences)} file(s) differ from the "
                  f"installed code (first: {differences[0]}); see the security log", file=sys.stderr, flush=True)
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="bundle_refused"), reply_to=message)
            status, details = SubStatus.COMPLETED, "bundle_refused"
        else:  # the bundle's files are the installed ones: the installed ClientApp answers
            reply = app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
    except Exception:  # the center gets a code, the traceback stays here
        log(ERROR, "fedcare ClientApp process failed:\n%s", traceback.format_exc())
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="internal_error"), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            push_task_output(client, context, status, details)
            heartbeat.stop()
            client.close()


def serve(runtime_address: str, site_yaml: Path) -> int:
    """Get ready, then answer the messages whose tokens arrive on stdin, one line each, until stdin closes."""
    done = os.fdopen(os.dup(1), "wb", buffering=0)  # the launcher's channel: nothing else writes to it
    os.dup2(2, 1)  # prints of the app and its libraries go to stderr
    from flwr.supernode.runtime import run_clientapp

    from client.app import app  # noqa: F401 (imported before the first token: the task's claim must not expire)
    from shared.flower_object_pulls import LOCAL_OBJECT_PULL_BACKOFF_S, prompt_object_pulls
    from shared.privacy.code_bundle import installed_manifest

    # the SuperNode may still be fetching a request's arrays when this process pulls it
    prompt_object_pulls(run_clientapp, "pull_and_inflate_object_from_tree", LOCAL_OBJECT_PULL_BACKOFF_S)

    bundles = CheckedBundles(installed_manifest())
    # Opacus' import (~2 s of CPU; every DP message needs it: the model registry, the accountant, the trainer)
    # runs while this process waits for its first task; in a thread, so the token is read and the task's
    # heartbeat started at once (importing first let the claim expire on a loaded machine; DESIGN-NOTES.md)
    threading.Thread(target=_warm_up, name="fedcare-warm-up", daemon=True).start()
    for line in sys.stdin:
        token = line.strip()
        if not token:
            break
        answer_message(runtime_address, token, site_yaml, bundles)
        done.write(DONE)
    return 0


class AppLauncher(threading.Thread):
    """Takes the SuperNode's ClientApp tasks one at a time (the site's logs have one writer) and hands each
    to the process serving its run, or to the ready spare `python -P -m fedcare.clientapp_process`
    (-P: no working folder on sys.path), which then serves that run."""

    def __init__(self, runtime_address: str, site_yaml: Path, env: dict[str, str]) -> None:
        super().__init__(name="fedcare-app-launcher", daemon=True)
        self.runtime_address, self.site_yaml, self.env = runtime_address, site_yaml, env
        self.stopping = threading.Event()
        self.ready: subprocess.Popen[bytes] | None = None  # started, not yet serving a run
        self.serving: tuple[int, subprocess.Popen[bytes]] | None = None  # (run id, its process)
        self.last_message = float("-inf")  # time.monotonic() when the last message was answered
        # a datagram here (any content) means "a task may be waiting"; a lost one costs at most POLL_S
        self._task_signal = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._task_signal.bind(("127.0.0.1", 0))
        self._task_signal.setblocking(False)

    @property
    def task_signal_address(self) -> str:
        """host:port for the SuperNode's TASK_SIGNAL_ENV."""
        host, port = self._task_signal.getsockname()
        return f"{host}:{port}"

    def _wait_for_task(self, timeout: float) -> None:
        """Until the SuperNode announces a task, `stop()` is called, or `timeout` passes."""
        if select.select([self._task_signal], [], [], timeout)[0]:
            self._drain_announcements()  # several announcements are one wake-up

    def _drain_announcements(self) -> None:
        while True:
            try:
                self._task_signal.recv(64)
            except OSError:  # drained (BlockingIOError), or closed by stop()
                break

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-P", "-m", "fedcare.clientapp_process", "--runtime-api-address", self.runtime_address,
                "--site-config", str(self.site_yaml)]
        # under the process guard: it dies with the `fedcare client` wrapper, even one killed with SIGKILL;
        # the guard reads neither stdin nor stdout, so tokens reach the app process and its done lines come back
        guarded = [sys.executable, "-P", "-m", "fedcare.process_guard", str(os.getpid()), "--", *argv]
        return subprocess.Popen(guarded, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self) -> None:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        client = None
        while not self.stopping.is_set():
            if self.ready is not None and self.ready.poll() is not None:  # it failed while getting ready
                self.ready = None
                self.stopping.wait(2.0)
            if self.spare_due(time.monotonic()):
                self.ready = self._spawn()
            try:
                client = client or _runtime_client(self.runtime_address)
                # the SuperNode announces a task after storing it: an announcement that came before this ask is
                # answered by it (else the task queued during the last hand-over woke one empty ask afterwards)
                self._drain_announcements()
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            except Exception:  # the SuperNode is (re)starting: try again
                client = None
                self.stopping.wait(2.0)
                continue
            if res.HasField("task") and res.token:
                self._hand_over(self._process_for(int(res.task.run_id)), res.token)
                self.last_message = time.monotonic()
            else:
                self._wait_for_task(POLL_S)
        for proc in (self.ready, self.serving[1] if self.serving else None):
            if proc is not None:
                _stop(proc)

    def spare_due(self, now: float) -> bool:
        """Start a spare now? When there is none and nothing is serving (start-up, a process died), or the
        serving process has had no message for SPARE_AFTER_IDLE_S."""
        if self.ready is not None:
            return False
        return self.serving is None or now - self.last_message >= SPARE_AFTER_IDLE_S

    def _process_for(self, run_id: int) -> subprocess.Popen[bytes]:
        """The live process serving `run_id`, else the spare, which from now on serves it (no state crosses runs:
        the process of another run is stopped)."""
        if self.serving is not None:
            served, proc = self.serving
            if served == run_id and proc.poll() is None:
                return proc
            _stop(proc)
        if self.ready is None:  # no spare yet (the site was busy until now): a cold start
            self.ready = self._spawn()
        proc, self.ready = self.ready, None
        self.serving = (run_id, proc)
        return proc

    def _hand_over(self, proc: subprocess.Popen[bytes], token: str) -> None:
        """Give `proc` the token and wait until it has answered (or died: Flower then expires the task's claim
        and offers it again, to a fresh process)."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(f"{token}\n".encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._forget(proc)
            return
        while not self.stopping.is_set():
            if select.select([proc.stdout], [], [], 0.2)[0]:
                line = proc.stdout.readline()
                if line == DONE:
                    return
                if not line:  # it exited
                    break
        self._forget(proc)

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        _stop(proc)
        if self.serving is not None and self.serving[1] is proc:
            self.serving = None

    def stop(self) -> None:
        self.stopping.set()
        try:
            self._task_signal.sendto(b"stop", self._task_signal.getsockname())  # wakes the wait at once
        except OSError:
            pass
        self.join(timeout=15)
        self._task_signal.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedcare.clientapp_process", description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--site-config", required=True)
    args = parser.parse_args(argv)
    return serve(args.runtime_api_address, Path(args.site_config))


if __name__ == "__main__":
    sys.exit(main())
