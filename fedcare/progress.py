"""Progress you can watch: a rich bar with ETA for a simulation (rounds x sites: local training,
evaluation, aggregation) and for the long loops of `explain`, `synth` and the benchmarks.

A simulation's ServerApp talks to the sites through a Grid; `ProgressGrid` (fedcare/progress_grid.py,
apart so that `synth` and the benchmarks do not import Flower) wraps it and reports each request it
pushes and each reply as it arrives, so the bar moves per site, not per round. The bar is
drawn only on a terminal (rich turns it off otherwise, e.g. in CI); the events are recorded either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PHASES = {"train": "local training", "evaluate": "evaluation"}


def progress_bar(console: Console, transient: bool = False) -> Progress:
    """The bar every long fedcare loop shows: description, bar, done/total, elapsed, ETA."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=transient)


def track(items: Iterable[Any], description: str, total: int | None = None, console: Console | None = None) -> Iterator[Any]:
    """`for x in track(xs, "seeds"): ...`: a bar on stderr (stdout stays the benchmarks' JSON), drawn only on a terminal."""
    console = console or Console(stderr=True)
    with progress_bar(console, transient=True) as bar:
        bar.disable = not console.is_terminal
        yield from bar.track(items, total=total, description=description)


def site_by_site(work: Callable[[], Any], root: Path, sites: list[str], description: str, console: Console) -> Any:
    """Runs `work`, which writes one folder per site under `root`, one site after another, with a bar over the
    sites: a site counts as written once the next one's folder appears, the last one when `work` returns."""
    before = {s for s in sites if (root / s).exists()}
    with progress_bar(console) as bar, ThreadPoolExecutor(max_workers=1) as pool:
        task = bar.add_task(description, total=len(sites))
        future = pool.submit(work)
        while not future.done():
            started = sum(1 for s in sites if s not in before and (root / s).exists())
            bar.update(task, completed=max(0, started - 1))
            time.sleep(0.2)
        result = future.result()  # re-raises what `work` raised
        bar.update(task, completed=len(sites))
    return result


@contextmanager
def tracked(console: Console, description: str, total: int) -> Iterator[Any]:
    """`with tracked(console, "sites", 3) as advance: ... advance()`: one bar for a counted loop."""
    with progress_bar(console) as bar:
        task = bar.add_task(description, total=total)
        yield lambda steps=1: bar.advance(task, steps)


@dataclass
class RunProgress:
    """Rounds x (training replies, aggregation, evaluation replies) steps of a run, for the bar's ETA."""

    total_rounds: int
    sites: int
    console: Console
    events: list[tuple[str, int, str, int, int]] = field(default_factory=list)  # (what, round, phase, done, total)
    _bar: Progress | None = None
    _task: TaskID | None = None
    _round: int = 0
    _aggregated: set[int] = field(default_factory=set)
    _completed: int = 0

    @property
    def steps_per_round(self) -> int:
        return 2 * self.sites + 1

    def __enter__(self) -> RunProgress:
        self._bar = progress_bar(self.console)
        self._bar.__enter__()
        self._task = self._bar.add_task("starting the federation", total=self.total_rounds * self.steps_per_round)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)  # type: ignore[arg-type]

    def requested(self, server_round: int, phase: str, sites: int) -> None:
        # Flower aggregates the training replies before it asks for evaluation (or for the next round's training)
        if phase == "evaluate" or (self._round and server_round != self._round):
            self._close_aggregation()
        self._round = server_round
        self._record("requested", server_round, phase, 0, sites)

    def replied(self, server_round: int, phase: str, done: int, total: int) -> None:
        self._record("replied", server_round, phase, done, total)

    def finished(self) -> None:
        self._close_aggregation()

    def _close_aggregation(self) -> None:
        if self._round and self._round not in self._aggregated:
            self._aggregated.add(self._round)
            self._record("aggregated", self._round, "aggregation", 1, 1)

    def _record(self, what: str, server_round: int, phase: str, done: int, total: int) -> None:
        self.events.append((what, server_round, phase, done, total))
        if self._bar is None or self._task is None:
            return
        detail = "done" if what == "aggregated" else f"{done}/{total} sites"
        before = (server_round - 1) * self.steps_per_round
        offset = {"train": 0, "aggregation": self.sites, "evaluate": self.sites + 1}.get(phase, 0)
        # never backwards: round r's evaluation replies may come after round r+1's training was asked for
        self._completed = completed = max(self._completed, before + offset + min(done, self.sites))
        self._bar.update(self._task, description=f"round {server_round}/{self.total_rounds}: {PHASES.get(phase, phase)} {detail}",
                         completed=completed)
