"""Progress of a run: the Grid wrapper reports each request and each site's reply as it arrives, in every
round of the real federation loop, and the bar (on a terminal) names round, phase and sites, with an ETA."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from fedcare.progress import RunProgress, site_by_site, tracked
from fedcare.progress_grid import ProgressGrid
from server.federation import run_federation
from shared.errors import InputError
from tests.server.test_resume_and_site_tracking import SiteGrid, _rc

pytestmark = pytest.mark.usefixtures("serverapp_identity")  # tests/conftest.py


class OneReplyPerPull(SiteGrid):
    """SiteGrid's hospitals answering through push and pull, one reply per pull, as sites finish one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: list = []

    def push_messages(self, messages):
        messages = list(messages)
        self.queue.extend(SiteGrid.send_and_receive(self, messages))
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids):
        ready = [r for r in self.queue if r.metadata.reply_to_message_id in set(message_ids)][:1]
        for reply in ready:
            self.queue.remove(reply)
        return ready


def test_every_round_and_every_site_reply_reaches_the_bar(tmp_path):
    screen = io.StringIO()
    progress = RunProgress(total_rounds=2, sites=3, console=Console(file=screen, force_terminal=True, width=160))
    with progress:
        summary = run_federation(ProgressGrid(OneReplyPerPull(), progress, pull_interval=0.0), _rc(tmp_path, rounds=2))
        progress.finished()
    assert summary["complete"]
    expected = []
    for rnd in (1, 2):
        expected += [("requested", rnd, "train", 0, 3)] + [("replied", rnd, "train", k, 3) for k in (1, 2, 3)]
        expected += [("aggregated", rnd, "aggregation", 1, 1), ("requested", rnd, "evaluate", 0, 3)]
        expected += [("replied", rnd, "evaluate", k, 3) for k in (1, 2, 3)]
    assert progress.events == expected
    shown = screen.getvalue()
    assert "round 2/2: evaluation 3/3 sites" in shown and "14/14" in shown and "ETA" in shown


def test_overlapped_rounds_report_each_reply_under_its_own_round_and_phase(tmp_path):
    """Sites that answer in order get round r's evaluation and round r+1's training together (server/strategy.py):
    each reply still counts for the round and phase it answers, and the bar never moves backwards."""
    progress = RunProgress(total_rounds=2, sites=3, console=Console(file=io.StringIO(), force_terminal=True, width=160))
    with progress:
        grid = ProgressGrid(OneReplyPerPull(), progress, pull_interval=0.0, sites_answer_in_order=True)
        summary = run_federation(grid, _rc(tmp_path, rounds=2))
        progress.finished()
    assert summary["complete"]
    events = [e[:3] + (e[3],) for e in progress.events]
    assert events.index(("requested", 2, "train", 0)) < events.index(("replied", 1, "evaluate", 1))  # overlapped
    for rnd, phase in ((1, "train"), (1, "evaluate"), (2, "train"), (2, "evaluate")):
        assert [e[3] for e in progress.events if e[:3] == ("replied", rnd, phase)] == [1, 2, 3]
    assert progress._completed == 2 * progress.steps_per_round


def test_a_counted_loop_shows_its_bar():
    screen = io.StringIO()
    with tracked(Console(file=screen, force_terminal=True, width=120), "writing sites", 3) as advance:
        for _ in range(3):
            advance()
    assert "writing sites" in screen.getvalue() and "3/3" in screen.getvalue()


def test_synth_counts_sites_as_their_folders_are_written_and_passes_errors_on(tmp_path):
    def write(sites, fail=False):
        for site in sites:
            (tmp_path / site).mkdir()
            time.sleep(0.3)
        if fail:
            raise InputError("<command line>", "--sizes", "bad")
        return "done"

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    assert site_by_site(lambda: write(["a", "b", "c"]), tmp_path, ["a", "b", "c"], "writing sites", console) == "done"
    assert "1/3" in screen.getvalue() and "3/3" in screen.getvalue()
    with pytest.raises(InputError, match="--sizes"):
        site_by_site(lambda: write(["d"], fail=True), tmp_path, ["d"], "writing sites", console)
