"""The simulation's Grid with a progress bar: `server.prompt_grid.PromptGrid`'s send-and-pull loop, each request
batch and each arriving reply reported to a `fedcare.progress.RunProgress` (kept apart from fedcare/progress.py
so that the commands that only draw bars do not import Flower)."""

from __future__ import annotations

from flwr.app import Message
from flwr.serverapp import Grid

from fedcare.progress import PHASES, RunProgress
from server.prompt_grid import DispatchSignals, PromptGrid


class ProgressGrid(PromptGrid):
    """A Grid that reports each request it sends and each reply as it arrives; everything else is the inner grid's."""

    def __init__(self, inner: Grid, progress: RunProgress, pull_interval: float = 0.1,
                 signals: DispatchSignals | None = None) -> None:
        super().__init__(inner, pull_interval, signals)
        self._progress, self._round, self._phase = progress, 0, ""

    def sending(self, messages: list[Message]) -> None:
        self._phase = messages[0].metadata.message_type.split(".")[0] if messages else ""
        for msg in messages:
            if "config" in msg.content and "server-round" in msg.content["config"]:
                self._round = int(msg.content["config"]["server-round"])
        if self._phase in PHASES:
            self._progress.requested(self._round, self._phase, len(messages))

    def received(self, done: int, total: int) -> None:
        if self._phase in PHASES:
            self._progress.replied(self._round, self._phase, done, total)
