"""The simulation's Grid with a progress bar: `server.prompt_grid.PromptGrid`'s send-and-pull loop, each request
batch and each arriving reply reported to a `fedcare.progress.RunProgress` (kept apart from fedcare/progress.py
so that the commands that only draw bars do not import Flower)."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedcare.progress import PHASES, RunProgress
from server.prompt_grid import DispatchSignals, PromptGrid


class ProgressGrid(PromptGrid):
    """A Grid that reports each request it sends and each reply as it arrives; everything else is the inner grid's."""

    def __init__(self, inner: Grid, progress: RunProgress, pull_interval: float = 0.1,
                 signals: DispatchSignals | None = None, sites_answer_in_order: bool = False) -> None:
        super().__init__(inner, pull_interval, signals, sites_answer_in_order)
        self._progress, self._round, self._phase = progress, 0, ""
        self._batch: dict[str, tuple[int, str]] = {}  # request id -> (round, phase): batches may overlap

    def send(self, messages: Iterable[Message]) -> list[str]:
        ids = super().send(messages)  # `sending` has set this batch's round and phase
        self._batch = {**{i: b for i, b in self._batch.items() if b[0] >= self._round - 1},
                       **dict.fromkeys(ids, (self._round, self._phase))}
        return ids

    def sending(self, messages: list[Message]) -> None:
        self._phase = messages[0].metadata.message_type.split(".")[0] if messages else ""
        for msg in messages:
            if "config" in msg.content and "server-round" in msg.content["config"]:
                self._round = int(msg.content["config"]["server-round"])
        if self._phase in PHASES:
            self._progress.requested(self._round, self._phase, len(messages))

    def received(self, replies: list[Message], total: int) -> None:
        server_round, phase = self._batch.get(replies[-1].metadata.reply_to_message_id, (self._round, self._phase))
        if phase in PHASES:
            self._progress.replied(server_round, phase, len(replies), total)
