"""Where a site's time goes in each message it answers: a local file, never a reply (issue 23).

The ClientApp opens a `message` record per train or evaluate message; code on the way marks `part`s
(training, evaluation, privacy accounting, (de)serialisation, checkpointing, data set-up). Parts nest, and
each keeps its exclusive time (accounting inside training counts as accounting only); what the handler spent
outside any part is `other`. Each part has its wall time and its CPU time (`_cpu_s`): on a shared
machine the CPU split is the comparable one. One JSON line per message goes to <state_dir>/timings/<run_id>.jsonl: the
site's own folder (in simulation, under the run folder), read by benchmarks/round_breakdown.py. Outside a
message (tests, the audit) `part` costs one attribute lookup.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TIMINGS_DIR = "timings"
PARTS = ("setup", "deserialise", "train", "evaluate", "accounting", "checkpoint", "serialise")
_local = threading.local()


@contextlib.contextmanager
def message(state_dir: Path, run_id: str, phase: str, server_round: int | None) -> Iterator[None]:
    record: dict[str, Any] = {"phase": phase, "round": server_round, "pid": os.getpid(), "start": time.time()}
    parts, parts_cpu = dict.fromkeys(PARTS, 0.0), dict.fromkeys(PARTS, 0.0)
    _local.stack, _local.parts, _local.parts_cpu = [], parts, parts_cpu
    started, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        _local.parts = None
        record |= {"wall_s": round(wall, 6), "cpu_s": round(cpu, 6),
                   "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
                   **{f"{k}_s": round(v, 6) for k, v in parts.items()},
                   "other_s": round(max(0.0, wall - sum(parts.values())), 6),
                   **{f"{k}_cpu_s": round(v, 6) for k, v in parts_cpu.items()},
                   "other_cpu_s": round(max(0.0, cpu - sum(parts_cpu.values())), 6)}
        try:
            path = Path(state_dir) / TIMINGS_DIR / f"{run_id}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError:
            pass  # timings must never cost the site its reply


@contextlib.contextmanager
def part(name: str) -> Iterator[None]:
    parts = getattr(_local, "parts", None)
    if parts is None:
        yield
        return
    stack = _local.stack
    if stack and stack[-1][0] == name:  # the same part nested in itself (epsilon_both -> epsilon_opacus)
        yield
        return
    started, cpu = time.perf_counter(), time.process_time()
    stack.append([name, 0.0, 0.0])  # [name, wall and CPU time spent in nested parts]
    try:
        yield
    finally:
        _, nested, nested_cpu = stack.pop()
        spent, spent_cpu = time.perf_counter() - started, time.process_time() - cpu
        parts[name] += spent - nested
        _local.parts_cpu[name] += spent_cpu - nested_cpu
        if stack:
            stack[-1][1] += spent
            stack[-1][2] += spent_cpu
