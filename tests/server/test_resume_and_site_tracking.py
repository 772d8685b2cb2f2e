"""The center's federation loop against an in-process grid: a run interrupted in round 3 resumes
from its round 2 checkpoint with the right round numbers and ends where an uninterrupted run
ends; SuperLink-made error replies and silent nodes are named by their registered site; a
reply claiming another site's name is dropped."""

import json
import uuid

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid

from server.checkpoints import checkpoint_path, latest_checkpoint, load_checkpoint
from server.federation import run_federation
from server.history import RunHistory
from shared.config import config_from_dict
from shared.errors import InputError

SITES = {11: "site_a", 12: "site_b", 13: "site_c"}
LEAK = "/srv/ehr/site_b/visits.csv: creatinine, row 17: '7.1 (hemolysed)' is not a finite number"
CFG = {
    "task": "event_mortality",
    "data": {"sites": list(SITES.values()), "max_events": 8, "text_dim": 8},
    "model": {"name": "event_transformer", "d_model": 8, "layers": 1, "heads": 2, "ff": 8, "pooling_heads": 1,
              "mlp_hidden": 8},
    "train": {"rounds": 4},
    "strategy": {"name": "fedavg", "min_sites": 2},
    "federation": {"mode": "deployment", "wait_for_sites_s": 0.0},
}


pytestmark = pytest.mark.usefixtures("serverapp_identity")  # tests/conftest.py


class Crash(Exception):
    """The center dies."""


class SiteGrid(Grid):
    """Hospitals in-process: training adds 1.0 to every float array; `behaviour` may make a site
    silent, fail (as the SuperLink reports it), lie about its name, or crash the center."""

    def __init__(self, behaviour=None, names=SITES, online=tuple(SITES), message_ids="object_id"):
        self.behaviour = behaviour or (lambda phase, rnd, site: "ok")
        self.message_ids = message_ids  # what a pushed message's id is: HttpGrid's object id, or InMemoryGrid's uuid
        self.names = names
        self.online = list(online)
        self.asked: list[tuple[str, int, str]] = []

    def set_run(self, run):
        pass

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.online)

    def get_nodes(self):
        return [NodeInfo(node_id=n, name=self.names.get(n, "")) for n in self.online]

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id if self.message_ids == "object_id" else str(uuid.uuid4())
            node, phase = msg.metadata.dst_node_id, msg.metadata.message_type
            rnd = int(msg.content["config"]["server-round"])
            site = SITES[node]
            self.asked.append((phase, rnd, site))
            what = self.behaviour(phase, rnd, site)
            if what == "crash":
                raise Crash
            if what == "silent":
                continue
            if what == "unavailable":
                reply = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = 1  # made by the SuperLink, not by the node
                replies.append(reply)
                continue
            if what == "leaky_error":  # what Flower sends for an exception in a ClientApp without fedcare's guard
                replies.append(Message(Error(code=2, reason=f"<class 'InputError'>:<'{LEAK}'>"), reply_to=msg))
                continue
            name = "site_a" if what == "impostor" else site
            status, reason = ("trained" if phase == "train" else "evaluated"), ""
            if what == "leaky_refusal":
                status, reason = "refused", LEAK
            content = RecordDict({"metrics": MetricRecord({"num-examples": 10, "train_loss": 0.5, "val_loss": 0.5}),
                                  "site": ConfigRecord({"name": name, "status": status, "reason": reason})})
            if phase == "train" and status == "trained":
                state = msg.content["arrays"].to_torch_state_dict()
                content["arrays"] = ArrayRecord({k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()})
            replies.append(Message(content, reply_to=msg))
        return replies


def _rc(tmp_path, resume=False, rounds=4):
    raw = json.loads(json.dumps(CFG))
    raw["train"]["rounds"] = rounds
    cfg = config_from_dict(raw, "center.yaml")
    return {"config": cfg.to_json(), "run-dir": str(tmp_path / "run"), "run-id": "run-7", "resume": resume}


def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path):
    with pytest.raises(Crash):
        run_federation(SiteGrid(lambda phase, rnd, site: "crash" if (phase, rnd, site) == ("evaluate", 3, "site_b") else "ok"),
                       _rc(tmp_path))
    run_dir = tmp_path / "run"
    assert latest_checkpoint(run_dir) == checkpoint_path(run_dir, 2)
    assert set(json.loads((run_dir / "metrics.json").read_text())["rounds"]) == {"1", "2"}

    grid = SiteGrid()
    summary = run_federation(grid, _rc(tmp_path, resume=True))
    assert {(phase, rnd) for phase, rnd, _ in grid.asked} == {("train", 3), ("evaluate", 3), ("train", 4), ("evaluate", 4)}
    assert summary["complete"] and summary["rounds_planned"] == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"round_{r:03d}.pt" for r in range(5)]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["rounds"]) == {"1", "2", "3", "4"}
    assert sum("resumed after round 2" in e for e in metrics["events"]) == 1

    uninterrupted = tmp_path / "plain"
    run_federation(SiteGrid(), {**_rc(tmp_path), "run-dir": str(uninterrupted)})
    resumed_final = load_checkpoint(checkpoint_path(run_dir, 4))
    plain_final = load_checkpoint(checkpoint_path(uninterrupted, 4))
    assert resumed_final["round"] == 4 and resumed_final["run_id"] == "run-7"
    for key, value in plain_final["state_dict"].items():
        assert torch.equal(resumed_final["state_dict"][key], value), key


@pytest.mark.parametrize("damage", ["truncated", "not_a_checkpoint"])
def test_resume_with_a_damaged_newest_checkpoint_continues_from_the_previous_one(tmp_path, damage):
    with pytest.raises(Crash):
        run_federation(SiteGrid(lambda phase, rnd, site: "crash" if (phase, rnd) == ("train", 3) else "ok"), _rc(tmp_path))
    run_dir = tmp_path / "run"
    newest = checkpoint_path(run_dir, 2)
    if damage == "truncated":  # a disk that lost the end of the file
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:  # loads as a torch file, but is no checkpoint
        torch.save({"something": 1}, newest)

    grid = SiteGrid()
    summary = run_federation(grid, _rc(tmp_path, resume=True))
    assert sorted({rnd for _, rnd, _ in grid.asked}) == [2, 3, 4]  # round 2 runs again from round 1's model
    assert summary["complete"]
    assert any(e.startswith("resume: skipped a checkpoint that does not load") and "round_002.pt" in e for e in summary["events"])
    assert load_checkpoint(newest)["round"] == 2  # written again, whole
    plain = tmp_path / "plain"
    run_federation(SiteGrid(), {**_rc(tmp_path), "run-dir": str(plain)})
    for key, value in load_checkpoint(checkpoint_path(plain, 4))["state_dict"].items():
        assert torch.equal(load_checkpoint(checkpoint_path(run_dir, 4))["state_dict"][key], value), key


def test_resume_refuses_another_runs_checkpoints_and_a_fresh_start_refuses_to_overwrite(tmp_path):
    run_federation(SiteGrid(), _rc(tmp_path, rounds=1))
    with pytest.raises(InputError, match="already holds checkpoints"):
        run_federation(SiteGrid(), _rc(tmp_path, rounds=1))
    with pytest.raises(InputError, match="belongs to run 'run-7', not 'other'"):
        run_federation(SiteGrid(), {**_rc(tmp_path, resume=True), "run-id": "other"})
    with pytest.raises(InputError, match="nothing to resume"):
        run_federation(SiteGrid(), {**_rc(tmp_path, resume=True), "run-dir": str(tmp_path / "empty")})


@pytest.mark.parametrize("message_ids", ["object_id", "uuid"])
def test_failed_silent_and_lying_sites_are_named_by_their_registered_site(tmp_path, message_ids):
    """A reply the SuperLink makes names the request by the id the Grid gave it when it was sent, whatever that
    id is (the packing on the wire changes a request's object id after the strategy built it)."""
    def behaviour(phase, rnd, site):
        if site == "site_c" and phase == "train" and rnd == 1:
            return "unavailable"
        if site == "site_c" and phase == "evaluate" and rnd == 1:
            return "silent"
        if site == "site_b" and rnd == 2:
            return "impostor"
        return "ok"

    summary = run_federation(SiteGrid(behaviour, message_ids=message_ids), _rc(tmp_path, rounds=2))
    events = summary["events"]
    assert "round 1: site_c train failed: node_unavailable" in events  # Flower's own error, by a fixed name
    assert "round 1: site_c evaluate failed: no reply (site offline or timed out)" in events
    assert any(e.startswith("round 2: site_b train failed: reply names site 'site_a'") for e in events)
    assert summary["sites"]["site_c"]["rounds_trained"] == [2]
    assert summary["sites"]["site_c"]["rounds_missed"] == {"1": "failed"}
    assert summary["sites"]["site_b"]["rounds_trained"] == [1]
    assert summary["sites"]["site_a"]["rounds_trained"] == [1, 2]  # the lie did not count for site_a
    assert "node-" not in " ".join(events)


def test_only_reason_codes_of_a_site_are_stored(tmp_path):
    """A site that sends free text (an error reply, or a refusal reason) is stored with a code only."""
    def behaviour(phase, rnd, site):
        if site == "site_b":
            return "leaky_error" if phase == "train" else "leaky_refusal"
        if site == "site_c" and phase == "train":
            return "leaky_refusal"
        return "ok"

    summary = run_federation(SiteGrid(behaviour), _rc(tmp_path, rounds=1))
    stored = (tmp_path / "run" / "metrics.json").read_text() + (tmp_path / "run" / "summary.json").read_text()
    assert "hemolysed" not in stored and "visits.csv" not in stored
    assert "round 1: site_b train failed: internal_error" in summary["events"]
    assert summary["sites"]["site_c"]["first_stop"] == {"round": 1, "status": "refused", "reason": "internal_error"}


def test_rounds_without_enough_connected_sites_are_skipped_not_waited_for_forever(tmp_path):
    rc = _rc(tmp_path, rounds=2)
    raw = json.loads(rc["config"])
    raw["federation"]["round_timeout_s"] = 0.5
    rc["config"] = json.dumps(raw)
    grid = SiteGrid(online=[11])  # one site online, min_sites 2
    summary = run_federation(grid, rc)
    assert grid.asked == [] and not summary["complete"]
    assert "round 1: training skipped: 1 sites connected, 2 needed" in summary["events"]
    assert "round 2: evaluation skipped: 1 sites connected, 2 needed" in summary["events"]
    assert summary["sites"]["site_a"]["rounds_missed"] == {"1": "not asked", "2": "not asked"}


def test_history_resume_drops_rounds_after_the_checkpoint(tmp_path):
    history = RunHistory(tmp_path, ["a"])
    for r in (1, 2, 3):
        history.record_train(r, "a", "trained", "", {"train_loss": 1.0})
    history.note("round 3: a did something")
    history.note("start: 1 of 1 sites connected")
    history.save()
    resumed = RunHistory.resume(tmp_path, ["a"], "auroc", 2)
    assert set(resumed.rounds) == {1, 2}
    assert resumed.events == ["start: 1 of 1 sites connected",
                              "resumed after round 2 (its global checkpoint); later rounds run again"]


def test_latest_checkpoint_orders_rounds_numerically(tmp_path):
    for r in (9, 10, 100):
        path = checkpoint_path(tmp_path, r)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (tmp_path / "checkpoints" / "round_1000.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "round_1000.pt"


def test_in_deployment_a_reply_never_names_its_site(tmp_path):
    from server.strategy import SiteTracking

    tracking = SiteTracking()
    tracking._init_tracking(RunHistory(tmp_path, ["site_a", "site_b"]), 1)
    assert tracking.site_for(5, "site_a") == "site_a"  # simulation: no registered names, the reply is all there is
    tracking.registered_names = {5: "site_b"}  # deployment: the center registered node 5's key as site_b
    assert tracking.site_for(5, "site_a") == "site_b"
    assert tracking.site_for(6, "site_a") == "node-6"  # a node without a registered name is never taken at its word


@pytest.mark.parametrize(("privacy", "evaluated"), [
    ({"evaluation": {"rounds": "final"}}, [4]),  # DP sites release one evaluation: only the last round is asked
    ({"evaluation": {"rounds": "all"}}, [1, 2, 3, 4]),
    ({"enabled": False, "evaluation": {"rounds": "final"}}, [1, 2, 3, 4]),  # no DP: exact metrics every round
    ({"site_targets": {"site_c": float("inf")}, "evaluation": {"rounds": "final"}}, [1, 2, 3, 4]),
])
def test_evaluate_messages_go_only_to_rounds_that_release_one(tmp_path, privacy, evaluated):
    raw = json.loads(json.dumps(CFG))
    raw["privacy"] = privacy
    grid = SiteGrid()
    run_federation(grid, {**_rc(tmp_path), "config": config_from_dict(raw, "center.yaml").to_json()})
    asked = {phase: sorted({rnd for p, rnd, _ in grid.asked if p == phase}) for phase in ("train", "evaluate")}
    assert asked == {"train": [1, 2, 3, 4], "evaluate": evaluated}
    assert len([a for a in grid.asked if a[0] == "evaluate"]) == 3 * len(evaluated)
    # every round is still checkpointed and in the history
    assert [checkpoint_path(tmp_path / "run", r).is_file() for r in range(1, 5)] == [True] * 4


class InOrderSiteGrid(SiteGrid):
    """A Grid that sends and receives separately (as server.prompt_grid.PromptGrid does), and sites that answer
    their requests one at a time in the order they were sent, as a deployed site does."""

    sites_answer_in_order = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.queue, self.answered, self.events, self.what = [], {}, [], {}

    def send(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            self.what[msg.metadata.message_id] = (msg.metadata.message_type, int(msg.content["config"]["server-round"]))
            ids.append(msg.metadata.message_id)
            self.queue.append(msg)
        self.events += sorted({("send", *self.what[i]) for i in ids})
        return ids

    def receive(self, message_ids, *, timeout=None):
        message_ids = list(message_ids)
        self.events += sorted({("receive", *self.what[i]) for i in message_ids})
        while self.queue and not set(message_ids) <= self.answered.keys():
            for reply in self.send_and_receive([self.queue.pop(0)]):
                self.answered[reply.metadata.reply_to_message_id] = reply
        return [self.answered.pop(i) for i in message_ids if i in self.answered]


def test_a_deployment_sends_the_next_rounds_training_with_this_rounds_evaluation(tmp_path):
    """Round r's evaluate requests, then round r+1's train requests, go out before round r's evaluations are
    collected; the run's checkpoints, history and final model are those of Flower's one-phase-at-a-time loop."""
    grid = InOrderSiteGrid()
    summary = run_federation(grid, _rc(tmp_path, rounds=3))
    assert grid.events == [("send", "train", 1), ("receive", "train", 1),
                           ("send", "evaluate", 1), ("send", "train", 2), ("receive", "evaluate", 1),
                           ("receive", "train", 2),
                           ("send", "evaluate", 2), ("send", "train", 3), ("receive", "evaluate", 2),
                           ("receive", "train", 3), ("send", "evaluate", 3), ("receive", "evaluate", 3)]
    # each site answered in the order of its requests: evaluation of round r before training round r+1
    assert [(phase, rnd) for phase, rnd, site in grid.asked if site == "site_b"] == [
        ("train", 1), ("evaluate", 1), ("train", 2), ("evaluate", 2), ("train", 3), ("evaluate", 3)]
    assert summary["complete"] and not grid.queue and not grid.answered

    plain = tmp_path / "plain"
    run_federation(SiteGrid(), {**_rc(tmp_path, rounds=3), "run-dir": str(plain)})
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "metrics.json").read_text())["rounds"] == json.loads(
        (plain / "metrics.json").read_text())["rounds"]
    for r in range(4):
        overlapped, sequential = load_checkpoint(checkpoint_path(run_dir, r)), load_checkpoint(checkpoint_path(plain, r))
        assert overlapped["decision_threshold"] == sequential["decision_threshold"]
        for key, value in sequential["state_dict"].items():
            assert torch.equal(overlapped["state_dict"][key], value), (r, key)


@pytest.mark.parametrize("change", [{"privacy": {"site_level_dp": {"enabled": True}}}, {"strategy": {"name": "fedadam"}}])
def test_phases_are_not_overlapped_where_repeating_a_round_could_change_its_model(change):
    """The center's site-level DP noise and a server optimiser's state would give a repeated round another model
    than the one the sites trained the next round on; a simulation overlaps as a deployment does."""
    from server.strategy import overlaps_phases

    assert overlaps_phases(config_from_dict(CFG, "center.yaml"))
    assert overlaps_phases(config_from_dict({**CFG, "federation": {"mode": "simulation"}}, "center.yaml"))
    raw = json.loads(json.dumps(CFG))
    for section, values in change.items():
        raw[section] = {**raw.get(section, {}), **values}
    assert not overlaps_phases(config_from_dict(raw, "center.yaml"))


def test_a_center_dying_while_overlapped_evaluations_are_out_resumes_from_that_rounds_model(tmp_path):
    """Round 3's training went out with round 2's evaluation: round 2's model was checkpointed first (its
    evaluation pending), the resumed run asks for round 2's evaluation again, then goes on from round 3, and ends
    where an uninterrupted run ends."""
    crash = InOrderSiteGrid(lambda phase, rnd, site: "crash" if (phase, rnd, site) == ("evaluate", 2, "site_b") else "ok")
    with pytest.raises(Crash):
        run_federation(crash, _rc(tmp_path))
    run_dir = tmp_path / "run"
    assert ("send", "train", 3) in crash.events  # the center died with round 3's training already sent
    pending = load_checkpoint(checkpoint_path(run_dir, 2))
    assert latest_checkpoint(run_dir) == checkpoint_path(run_dir, 2) and pending["evaluation_pending"]
    assert pending["decision_threshold"] is None
    assert json.loads((run_dir / "metrics.json").read_text())["rounds"]["2"]["site_b"]["status"] == "trained"

    grid = InOrderSiteGrid()
    summary = run_federation(grid, _rc(tmp_path, resume=True))
    assert [(phase, rnd) for phase, rnd, site in grid.asked if site == "site_b"] == [
        ("evaluate", 2), ("train", 3), ("evaluate", 3), ("train", 4), ("evaluate", 4)]
    assert summary["complete"]
    assert "round 2: the center stopped while this round's evaluations were out; asked again" in summary["events"]
    plain = tmp_path / "plain"
    run_federation(SiteGrid(), {**_rc(tmp_path), "run-dir": str(plain)})
    assert json.loads((run_dir / "metrics.json").read_text())["rounds"] == json.loads(
        (plain / "metrics.json").read_text())["rounds"]
    for r in (2, 4):
        resumed, sequential = load_checkpoint(checkpoint_path(run_dir, r)), load_checkpoint(checkpoint_path(plain, r))
        assert not resumed.get("evaluation_pending") and resumed["decision_threshold"] == sequential["decision_threshold"]
        for key, value in sequential["state_dict"].items():
            assert torch.equal(resumed["state_dict"][key], value), (r, key)
