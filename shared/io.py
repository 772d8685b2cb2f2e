"""The project's file writing and reading: every file fedcare writes goes through here.

Writes are atomic: the content goes to a temp file in the target's folder (created 0600, then set to
`mode`), is fsynced, renamed over the target with os.replace, and the folder is fsynced so the rename
survives a crash. A reader sees the old file or the new one, never half of one; a write that fails
leaves the old file as it was and no temp file behind.

Reads of YAML and JSON raise shared.errors.InputError: one line naming the file (and the line, where
the parser gives one).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import yaml

from shared.errors import InputError


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A binary handle on a temp file that replaces `path` when the block ends without an error.

    For writers that want a handle (torch.save, DataFrame.to_csv, np.savez, Figure.savefig)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


WRITER_PAUSE_S = 0.05


class SerialWriter:
    """Writes that need not hold up the caller, run one after another on one background thread.

    The center's per-round bookkeeping (the round table, metrics.json, the global checkpoint: ~35 ms of
    rendering, JSON and fsyncs) ran between a round's last reply and the next round's requests, on every
    round's critical path (issue 23). Submitted here, it overlaps the sites' next round instead. `settle()`
    waits for everything submitted and raises the first failure (a full disk) in the caller; whoever changes
    what a pending write reads settles first. A write starts WRITER_PAUSE_S after it is submitted: the caller
    goes on to build and send the next round's requests, and a writer rendering and encoding JSON meanwhile
    (pure Python) would take the interpreter lock from it (RETAIN simulation, two runs each: 10.4 / 7.9 %
    steady overhead with the pause, 10.7 / 10.5 % without)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedcare-writer")
        self._pending.append(self._pool.submit(self._after_pause, fn, *args))

    @staticmethod
    def _after_pause(fn: Callable[..., Any], *args: Any) -> Any:
        time.sleep(WRITER_PAUSE_S)
        return fn(*args)

    def wait(self) -> list[BaseException]:
        """Wait for everything submitted; the failures, not raised (the caller is already failing)."""
        pending, self._pending = self._pending, []
        return [err for future in pending if (err := future.exception()) is not None]

    def settle(self) -> None:
        if errors := self.wait():
            raise errors[0]

    def close(self) -> list[BaseException]:
        """`wait`, then end the thread (a later `submit` starts a new one): a process that runs many runs keeps
        no idle writer per finished run."""
        errors = self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        return errors


def write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_file(path, mode) as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, mode: int = 0o644) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"), mode)


def write_json(
    path: str | Path, value: Any, mode: int = 0o644, indent: int | None = 1, default: Callable[[Any], Any] | None = None
) -> Path:
    """Write `value` as JSON (with a final newline) atomically."""
    return write_text(path, json.dumps(value, indent=indent, default=default) + "\n", mode)


def append_jsonl(path: str | Path, record: Any, mode: int = 0o644) -> None:
    """Append `record` as one JSON line and fsync it (and the folder when the file is new).

    One write(2) of the whole line on an O_APPEND descriptor: concurrent appenders never interleave
    within a line. A crash can leave a last line cut short, never an earlier line changed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of `path`; InputError (one line) when it is missing, unreadable or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, f"{what} not found")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(path, None, f"cannot read ({err.strerror or err})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        hint = " (it looks like UTF-16: save it as UTF-8)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise InputError(path, None, f"not UTF-8 text at byte {err.start}{hint}") from None


def load_yaml(path: str | Path, what: str = "file") -> Any:
    """The parsed YAML of `path` (None for an empty file); InputError naming the file and line otherwise."""
    return parse_yaml(read_text(path, what), path)


# libyaml's scanner and parser with PyYAML's safe constructor (the same documents, ~10x faster: a site reads its
# policy file with every message); the pure-Python SafeLoader where PyYAML was built without libyaml
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str, source: str | Path) -> Any:
    """The parsed YAML `text` read from `source`; InputError naming the source and line when it is not YAML."""
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise InputError(source, f"line {mark.line + 1}" if mark else None,
                         f"not valid YAML ({getattr(err, 'problem', None) or err})") from None


def load_json(path: str | Path, what: str = "file") -> Any:
    """The parsed JSON of `path`; InputError naming the file and line otherwise."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(path, f"line {err.lineno}", f"not valid JSON ({err.msg})") from None
