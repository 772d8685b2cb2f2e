"""Differential privacy that holds against the center (issue 17), played at one site with a tiny model:

- the replay attack: with everything the center knows, a rerun does not reproduce the sent update; in
  reproducible mode it does (and tells D from D minus one record), and the audit flags that run;
- the honest baseline: privacy.enabled false / target .inf really train without DP, the ledger says
  no_dp, the audit reports epsilon inf, a site policy refuses it;
- the data shrinks between rounds: the ledger records the rate that ran and the rows it ran on (dp-accounting
  agrees); the rate comes from the released count, so no data change can overspend, and a round the budget
  cannot hold is refused;
- what a reply says about the size: at a batch boundary (n and n + 1 rows), the epsilon, the noise multiplier and
  the update's divisor follow the released noisy count, never ceil(n / B);
- two simultaneous runs at one site never exceed the lifetime budget.
"""

import json
import threading

import pytest
import torch
from torch.utils.data import Subset

from client import site_worker as site_worker_module
from client.site_worker import SiteSettings, SiteWorker
from fedcare.audit_run import audit_path
from shared.config import config_from_dict
from shared.privacy.accountant import Mechanism, epsilon_independent
from shared.privacy.audit import audit_ledger
from shared.privacy.ledger import SiteLedger
from shared.privacy.site_policy import SitePolicy, config_violations
from shared.tasks.base import SiteData
from shared.tasks.registry import build_task

SITE = "site_a"
TINY = {
    "task": "event_mortality",
    "data": {"sites": [SITE], "synth_sizes": [120], "max_events": 16, "text_dim": 16},
    "model": {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2,
              "mlp_hidden": 16},
    "train": {"rounds": 3, "local_epochs": 1, "batch_size": 32},
    "privacy": {"target_epsilon": 4.0},
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp_data")
    build_task(_cfg(root)).synthesize(root, [SITE], 0)
    return root


def _cfg(root, **privacy):
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root)
    raw["privacy"].update(privacy)
    return config_from_dict(raw, "tiny.yaml")


def _worker(data_root, state_dir, run_id="run-1", lifetime=None, **privacy):
    settings = SiteSettings(site=SITE, data_dir=data_root / SITE, state_dir=state_dir, lifetime_epsilon=lifetime)
    return SiteWorker(_cfg(data_root, **privacy), settings, run_id)


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _ledger(state_dir):
    return SiteLedger(state_dir / "privacy_ledger.jsonl", SITE)


# -- the replay attack ----------------------------------------------------------------------------------
def test_the_center_cannot_replay_a_round_with_secret_noise(data_root, tmp_path):
    site = _worker(data_root, tmp_path / "site")
    global_state = site.task.build_model().state_dict()
    sent = site.train_round(1, {k: v.clone() for k, v in global_state.items()}).arrays
    # the center: same config, seeds, run id, global weights and even ALL of the site's data
    replay = _worker(data_root, tmp_path / "center").train_round(1, {k: v.clone() for k, v in global_state.items()})
    assert not _same(replay.arrays, sent)
    assert audit_ledger(tmp_path / "site" / "privacy_ledger.jsonl").status == "ok"


def test_reproducible_noise_is_replayable_and_flagged_by_the_audit(data_root, tmp_path):
    site = _worker(data_root, tmp_path / "site", reproducible_noise=True)
    global_state = site.task.build_model().state_dict()
    sent = site.train_round(1, {k: v.clone() for k, v in global_state.items()}).arrays
    same_data = _worker(data_root, tmp_path / "center_d", reproducible_noise=True)
    assert _same(same_data.train_round(1, {k: v.clone() for k, v in global_state.items()}).arrays, sent)
    minus_one = _worker(data_root, tmp_path / "center_d1", reproducible_noise=True)
    full = minus_one.data
    minus_one._data = SiteData(Subset(full.train, range(full.n_train - 1)), full.val)
    assert not _same(minus_one.train_round(1, {k: v.clone() for k, v in global_state.items()}).arrays, sent)
    # the two worlds are told apart, so the run is not private against the center: the audit says so
    audit = audit_ledger(tmp_path / "site" / "privacy_ledger.jsonl")
    assert audit.status == "reproducible_noise"
    assert any("not private against the center" in p for p in audit.problems)
    assert _ledger(tmp_path / "site").entries()[0]["extra"]["reproducible_noise"] is True
    assert any("reproducible" in p for p in config_violations(SitePolicy(source="p"), site.cfg, SITE))


# -- honest baselines --------------------------------------------------------------------------------------
@pytest.mark.parametrize("privacy", [{"enabled": False}, {"target_epsilon": float("inf")}])
def test_dp_off_really_trains_without_dp_and_is_recorded_as_such(data_root, tmp_path, monkeypatch, privacy):
    seen = []
    real_train = site_worker_module.train_model
    monkeypatch.setattr(site_worker_module, "train_model", lambda *a: seen.append(a[3]) or real_train(*a))
    site = _worker(data_root, tmp_path / "site", **privacy)
    assert any("switched off" in p for p in config_violations(SitePolicy(source="p"), site.cfg, SITE))
    outcome = site.train_round(1, site.task.build_model().state_dict())
    assert outcome.status == "trained" and outcome.arrays is not None and "epsilon" not in outcome.metrics
    assert seen[0].noise_multiplier is None  # no clipping, no noise, plain shuffled batches
    entry = _ledger(tmp_path / "site").entries()[0]
    assert (entry["status"], entry["mechanism"], entry["cumulative_epsilon"]) == ("no_dp", None, None)
    audit = audit_ledger(tmp_path / "site" / "privacy_ledger.jsonl")
    assert audit.status == "no_dp" and audit.recorded_epsilon == audit.recomputed_epsilon == float("inf")
    # the site's lifetime epsilon is unbounded now: a later DP run there is refused
    later = _worker(data_root, tmp_path / "site", run_id="run-2")
    assert later.train_round(1, later.task.build_model().state_dict()).status == "budget_exhausted"


# -- the data change between rounds ------------------------------------------------------------------------
def _shrink(worker, rows):
    full = worker.data
    worker._data = SiteData(Subset(full.train, range(rows)), full.val)


def test_shrunk_data_trains_at_the_planned_rate_and_the_ledger_says_so(data_root, tmp_path):
    site = _worker(data_root, tmp_path / "site")
    state = site.task.build_model().state_dict()
    assert site.train_round(1, state).status == "trained"
    planned = site.plan()
    count = site._count_entry()["extra"]["released"]
    assert planned.planned_size == count and planned.sample_rate == 1 / -(-count // 32)  # 90 rows +- the noise
    _shrink(site, 20)  # 90 -> 20 rows: Poisson sampling at the same rate is private for any number of rows
    assert site.train_round(2, state).status == "trained"
    entries = _ledger(tmp_path / "site").entries()
    assert [e["extra"]["phase"] for e in entries] == ["count", "train", "train"]  # the count: once per run
    first, second = entries[1], entries[2]
    assert second["mechanism"] == first["mechanism"]  # the mechanism that ran: same rate, steps and noise
    assert (first["extra"]["n_train"], second["extra"]["n_train"]) == (90, 20)  # the rows it ran on
    assert second["extra"]["planned_size"] == count
    history = [Mechanism(**e["mechanism"]) for e in entries]
    recomputed = epsilon_independent(history, 1e-5)
    assert second["cumulative_epsilon"] == pytest.approx(recomputed, rel=0.01) and recomputed <= 4.0 * 1.01
    assert audit_ledger(tmp_path / "site" / "privacy_ledger.jsonl").status == "ok"


def test_a_round_the_budget_cannot_hold_is_refused_and_recorded(data_root, tmp_path):
    site = _worker(data_root, tmp_path / "site")
    state = site.task.build_model().state_dict()
    assert site.train_round(1, state).status == "trained"
    # another run spent meanwhile (its ledger line): round 2 of this run no longer fits the composed target
    entries = _ledger(tmp_path / "site").entries()
    site.ledger.append("other-run", 1, "trained", Mechanism(0.8, 1.0, 1), 1e-5, 1.0, "rdp",
                       epsilon_independent([Mechanism(**e["mechanism"]) for e in entries] + [Mechanism(0.8, 1.0, 1)],
                                           1e-5), float("inf"))
    outcome = site.train_round(2, state)
    assert (outcome.status, outcome.arrays) == ("budget_exhausted", None)
    last = _ledger(tmp_path / "site").entries()[-1]
    assert last["status"] == "budget_exhausted" and "would reach epsilon" in last["extra"]["reason"]


def test_at_a_batch_boundary_the_reply_follows_the_released_count_not_the_size(data_root, tmp_path, monkeypatch):
    """64 and 65 rows at batch 32 give ceil(n / B) 2 and 3: the old plan sent different epsilons and noise
    multipliers (and divided the noisy sum by n x q). With the same released count both sites send the same
    numbers and train with the same rate, steps, noise and divisor."""
    seen = []
    real_train = site_worker_module.train_model
    monkeypatch.setattr(site_worker_module, "train_model", lambda *a: seen.append((len(a[1]), a[3])) or real_train(*a))
    replies = []
    for rows, offset in ((64, 0.2), (65, -0.8)):  # both release round(rows + offset) = 64
        monkeypatch.setattr(site_worker_module, "secure_rng", lambda offset=offset: _FixedNormal(offset))
        site = _worker(data_root, tmp_path / f"site{rows}")
        _shrink(site, rows)
        outcome = site.train_round(1, site.task.build_model().state_dict())
        assert outcome.status == "trained"
        replies.append({k: outcome.metrics[k] for k in ("num-examples", "epsilon", "noise_multiplier")})
        entry = _ledger(tmp_path / f"site{rows}").entries()[1]
        assert (entry["extra"]["n_train"], entry["extra"]["planned_size"]) == (rows, 64)
    assert replies[0] == replies[1] and replies[0]["num-examples"] == 64
    (n64, s64), (n65, s65) = seen
    assert (n64, n65) == (64, 65) and s64.planned_size == s65.planned_size == 64
    assert s64.sampling(n64) == s65.sampling(n65) == (2, 0.5, 32)  # k, q, divisor: none of them is the size's


class _FixedNormal:
    """The OS CSPRNG's stand-in: normal() gives a chosen offset (the test fixes the released count)."""

    def __init__(self, offset):
        self.offset = offset

    def normal(self, loc=0.0, scale=1.0):
        return self.offset


# -- one budget, one writer -----------------------------------------------------------------------------------
def test_two_simultaneous_runs_never_exceed_the_lifetime_budget(data_root, tmp_path, monkeypatch):
    real_train = site_worker_module.train_model

    both_checked = threading.Barrier(2, timeout=3.0)

    def gated_train(*args):
        # Without the lock both runs pass the budget check and meet here, then both spend. With it the
        # second run waits for the first one's append; the first waits here in vain (3 s) and goes on.
        try:
            both_checked.wait()
        except threading.BrokenBarrierError:
            pass
        return real_train(*args)

    monkeypatch.setattr(site_worker_module, "train_model", gated_train)
    monkeypatch.setitem(TINY["train"], "rounds", 1)
    state_dir = tmp_path / "site"
    workers = [_worker(data_root, state_dir, run_id=f"run-{i}", lifetime=4.0) for i in (1, 2)]
    for worker in workers:
        _ = worker.data  # load before the race
    start, outcomes = threading.Barrier(2), {}

    def run(worker):
        start.wait()
        outcomes[worker.run_id] = worker.train_round(1, worker.task.build_model().state_dict()).status

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # the second run checks after the first one's append: it is refused, or fits what is left
    assert "trained" in outcomes.values() and set(outcomes.values()) <= {"trained", "budget_exhausted"}
    spent = epsilon_independent(_ledger(state_dir).mechanisms(), 1e-5)
    assert spent <= 4.0 * 1.005
    assert audit_ledger(state_dir / "privacy_ledger.jsonl").status in ("ok", "budget_exhausted")


# -- the center's ledger heads -------------------------------------------------------------------------------
def _run_folder(data_root, tmp_path):
    """A run folder as the center keeps it (config.yaml, metrics.json with the heads the site sent) and the
    site's state under sites/<site>; two rounds trained."""
    import yaml

    from server.history import RunHistory

    run_dir = tmp_path / "run-1"
    state_dir = run_dir / "sites" / SITE
    site = _worker(data_root, state_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(site.cfg.to_dict()))
    history = RunHistory(run_dir, [SITE])
    state = site.task.build_model().state_dict()
    copies = []
    for r in (1, 2):
        outcome = site.train_round(r, state)
        history.record_train(r, SITE, outcome.status, outcome.reason, outcome.metrics, ledger_head=site.ledger.head())
        copies.append((state_dir / "privacy_ledger.jsonl").read_text())
    history.save()
    return run_dir, state_dir, site, copies


def _resign(lines, key, edit):
    """The site's key rewrites the ledger: edit each entry, re-chain and re-sign every line."""
    from shared.privacy.ledger import GENESIS_HASH, canonical_json, line_hash, signed_payload

    out, prev = [], GENESIS_HASH
    for number, line in enumerate(lines):
        entry = json.loads(line)
        entry.pop("signature")
        edit(number, entry)
        entry["prev_hash"] = prev
        entry["signature"] = key.sign(signed_payload(entry)).hex()
        out.append(canonical_json(entry))
        prev = line_hash(out[-1])
    return "".join(f"{line}\n" for line in out)


def test_the_center_heads_catch_resigned_truncated_and_replayed_ledgers(data_root, tmp_path):
    run_dir, state_dir, site, copies = _run_folder(data_root, tmp_path)
    assert json.loads((run_dir / "ledger_heads.json").read_text())[SITE]["2"] == site.ledger.head()
    assert [a.status for a in audit_path(run_dir)] == ["ok"]
    ledger = state_dir / "privacy_ledger.jsonl"
    honest = ledger.read_text()
    key = site._signing_key()

    def verdict(text):
        ledger.write_text(text)
        audit = audit_path(run_dir)[0]
        ledger.write_text(honest)
        return audit

    # an innocuous-looking edit, re-chained and re-signed with the site's own key: only the heads see it
    edited = verdict(_resign(honest.splitlines(), key, lambda n, e: e.update(time="2020-01-01T00:00:00+00:00")))
    assert edited.status == "tampered" and any("no line of this ledger" in p for p in edited.problems)
    # lower round 1's steps and recompute epsilon, re-signed: the mechanism no longer fits the data, and the heads
    count = Mechanism(**json.loads(honest.splitlines()[0])["mechanism"])

    def fewer_steps(n, e):
        if n == 1:  # round 1's training (line 0 is the run's count release)
            e["mechanism"]["steps"] = 1
            e["cumulative_epsilon"] = epsilon_independent([count, Mechanism(**e["mechanism"])], 1e-5)
    lowered = verdict(_resign(honest.splitlines(), key, fewer_steps))
    assert lowered.status == "tampered"
    assert any("steps 1 are not epochs x ceil(n/B)" in p for p in lowered.problems)
    assert any("no line of this ledger" in p for p in lowered.problems)
    truncated = verdict("".join(f"{line}\n" for line in honest.splitlines()[:1]))
    assert truncated.status == "tampered" and any("round 2 reply" in p for p in truncated.problems)
    replayed = verdict(copies[0])  # the older copy, after round 1: valid chain, valid signatures
    assert replayed.status == "tampered" and any("round 2 reply" in p for p in replayed.problems)
