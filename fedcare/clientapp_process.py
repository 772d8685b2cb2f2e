"""The hospital's ClientApp process: the site, not the bundle a run ships, decides what executes.

`fedcare client` runs `flower-supernode --isolation process`: the SuperNode then executes no app
code itself; it queues each message as a task on its local Runtime API (127.0.0.1). `AppLauncher`
(a thread of `fedcare client`) keeps one process of this module, from the site's installed packages,
started and ready (imports done), takes the SuperNode's tasks one at a time and hands each task's
token to the ready process on its stdin. (Flower expires a claimed task whose process has not
pulled its input within 30 s: a cold start on a loaded machine can take longer.) The process pulls
the message, the run and the run's app bundle (FAB) with Flower's own Runtime API calls, then:

- reads the bundle as a zip in memory (never extracted, never put on `sys.path`) and compares every
  file with the site's installed code (shared/privacy/code_bundle.py);
- different: none of the bundle's code runs. The refusal, with both digests and the differing paths,
  goes to the site's signed security log (`bundle_refused`), and the center gets an error reply whose
  reason is the code `bundle_refused`, nothing else;
- identical: the ClientApp is imported from the installed package (`client.app:app`) and answers.

Any failure of the app is answered with the code `internal_error`; the traceback stays in this
process's output at the site.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import traceback
from logging import ERROR
from pathlib import Path

POLL_S = 0.5


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


def run_task(runtime_address: str, site_yaml: Path) -> int:
    """Get ready, wait for a task's token on stdin, answer that one message; returns the exit status."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore import log
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    from client.app import app  # the site's installed ClientApp (never the bundle's)
    from shared.privacy.code_bundle import installed_manifest

    installed = installed_manifest()
    # Opacus' import (~2 s of CPU; every DP message needs it: the model registry, the accountant, the trainer)
    # runs while this process waits for its task; in a thread, so the token is read and the task's heartbeat
    # started at once (importing first let the claim expire on a loaded machine; DESIGN-NOTES.md)
    threading.Thread(target=_warm_up, name="fedcare-warm-up", daemon=True).start()
    token = sys.stdin.readline().strip()
    if not token:
        return 0  # the launcher is stopping
    client = _runtime_client(runtime_address, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context = message = reply = None
    status, details, code = SubStatus.FAILED, "internal_error", 1
    try:
        message, context, run, fab = pull_task_input(client)
        differences, bundle_digest, installed_digest = bundle_check(fab.content, installed)
        if differences:
            log_bundle_refused(site_yaml, run.run_id, message.metadata.message_type, fab.hash_str, differences,
                               bundle_digest, installed_digest)
            print(f"fedcare: run {run.run_id}: app bundle refused, {len(differences)} file(s) differ from the "
                  f"installed code (first: {differences[0]}); see the security log", file=sys.stderr, flush=True)
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="bundle_refused"), reply_to=message)
            status, details, code = SubStatus.COMPLETED, "bundle_refused", 0
        else:  # the bundle's files are the installed ones: the installed ClientApp answers
            reply = app(message=message, context=context)
            status, details, code = SubStatus.COMPLETED, "", 0
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
    return code


class AppLauncher(threading.Thread):
    """Takes the SuperNode's ClientApp tasks one at a time (the site's logs have one writer) and hands
    each to a ready `python -P -m fedcare.clientapp_process` (-P: no working folder on sys.path)."""

    def __init__(self, runtime_address: str, site_yaml: Path, env: dict[str, str]) -> None:
        super().__init__(name="fedcare-app-launcher", daemon=True)
        self.runtime_address, self.site_yaml, self.env = runtime_address, site_yaml, env
        self.stopping = threading.Event()
        self.ready: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-P", "-m", "fedcare.clientapp_process", "--runtime-api-address", self.runtime_address,
                "--site-config", str(self.site_yaml)]
        # under the process guard: it dies with the `fedcare client` wrapper, even one killed with SIGKILL;
        # the guard does not read stdin, so the token written to the pipe reaches the app process
        guarded = [sys.executable, "-P", "-m", "fedcare.process_guard", str(os.getpid()), "--", *argv]
        return subprocess.Popen(guarded, env=self.env, stdin=subprocess.PIPE)

    def run(self) -> None:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        client = None
        while not self.stopping.is_set():
            if self.ready is not None and self.ready.poll() is not None:  # it failed while getting ready
                self.ready = None
                self.stopping.wait(2.0)
            if self.ready is None:
                self.ready = self._spawn()
            try:
                client = client or _runtime_client(self.runtime_address)
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            except Exception:  # the SuperNode is (re)starting: try again
                client = None
                self.stopping.wait(2.0)
                continue
            if res.HasField("task") and res.token:
                self._hand_over(self.ready, res.token)
                self.ready = None
            else:
                self.stopping.wait(POLL_S)
        if self.ready is not None:
            _stop(self.ready)

    def _hand_over(self, proc: subprocess.Popen[bytes], token: str) -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(f"{token}\n".encode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            return  # it died while waiting: Flower expires the task's claim and offers it again
        while proc.poll() is None and not self.stopping.is_set():
            time.sleep(0.2)
        _stop(proc)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=15)


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
    return run_task(args.runtime_api_address, Path(args.site_config))


if __name__ == "__main__":
    sys.exit(main())
