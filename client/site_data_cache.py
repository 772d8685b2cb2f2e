"""A site's prepared data (the task's `prepare_site`), built once per site and data, not once per process.

Flower's simulation serves one site from several Ray actors, and a deployment runs the ClientApp in fresh
processes: each used to load and featurise the site's data again (issue 23: 6 builds for 3 sites, 58 for 32).
The first process builds and stores the datasets' tensors in the site's own state folder (never sent, mode
0600); the others load them. The key is the run hash (config + installed code) and a SHA-256 of every file in
the site's data folder, so changed data or code builds again (and the worker's data-change check still sees
the new row counts). Builds run under an exclusive lock, so two processes never build the same key at once.
Each build appends one line to `builds.jsonl` beside the cache (how long it took, in which process): the
count the tests and the round-time benchmark read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from shared import timings
from shared.io import write_bytes
from shared.tasks.base import SiteData

CACHE_DIR = "site_data_cache"
BUILDS_FILE = "builds.jsonl"
_FORMAT = 1  # bump when the stored layout changes


def data_digest(data_dir: Path) -> str:
    """SHA-256 over the relative path, size and content of every file under `data_dir` (sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(data_dir).rglob("*") if p.is_file()) if Path(data_dir).is_dir() else []
    for path in files:
        digest.update(f"{path.relative_to(data_dir).as_posix()}|{path.stat().st_size}|".encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _tensors(dataset: Any) -> list[torch.Tensor] | None:
    return list(dataset.tensors) if isinstance(dataset, TensorDataset) else None


def _encode(data: SiteData) -> bytes | None:
    """The datasets' tensors and the info as JSON; None when something is not storable (no cache then)."""
    parts = {name: _tensors(getattr(data, name)) for name in ("train", "val")}
    test = None if data.test is None else _tensors(data.test)
    if any(v is None for v in parts.values()) or (data.test is not None and test is None):
        return None
    try:
        info = json.dumps(data.info)
    except (TypeError, ValueError):
        return None
    buffer = io.BytesIO()
    torch.save({"format": _FORMAT, **parts, "test": test, "info": info}, buffer)
    return buffer.getvalue()


def _decode(path: Path) -> SiteData | None:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # tensors, lists, strings only
    except Exception:  # a damaged or foreign file: build again
        return None
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
        return None
    test = saved["test"]
    return SiteData(TensorDataset(*saved["train"]), TensorDataset(*saved["val"]), json.loads(saved["info"]),
                    None if test is None else TensorDataset(*test))


def cached_site_data(build: Callable[[], SiteData], state_dir: Path, data_dir: Path, run_hash: str) -> SiteData:
    """`build()` once per (run hash, data digest) at this site; later calls, in any process, load its result."""
    with timings.part("setup"):
        return _cached_site_data(build, state_dir, data_dir, run_hash)


def _cached_site_data(build: Callable[[], SiteData], state_dir: Path, data_dir: Path, run_hash: str) -> SiteData:
    cache = Path(state_dir) / CACHE_DIR
    key = hashlib.sha256(f"{run_hash}|{data_digest(data_dir)}".encode()).hexdigest()[:32]
    path = cache / f"{key}.pt"
    with _exclusive(cache / ".lock"):
        if path.is_file():
            data = _decode(path)
            if data is not None:
                return data
        started, cpu = time.perf_counter(), time.process_time()
        data = build()
        encoded = _encode(data)
        if encoded is not None:
            write_bytes(path, encoded, 0o600)
            for old in cache.glob("*.pt"):  # one entry per site: an older key is stale data or code
                if old != path:
                    old.unlink(missing_ok=True)
        record = {"key": key, "pid": os.getpid(), "wall_s": round(time.perf_counter() - started, 4),
                  "cpu_s": round(time.process_time() - cpu, 4), "stored": encoded is not None}
        with (cache / BUILDS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        return data
