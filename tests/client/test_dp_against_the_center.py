"""Differential privacy that holds against the center (issue 17), played at one site with a tiny model:

- the replay attack: with everything the center knows, a rerun does not reproduce the sent update; in
  reproducible mode it does (and tells D from D minus one record), and the audit flags that run;
- the honest baseline: privacy.enabled false / target .inf really train without DP, the ledger says
  no_dp, the audit reports epsilon inf, a site policy refuses it;
- the data shrinks between rounds: the ledger records the real rate (dp-accounting agrees), the noise is
  re-planned, and a round that would overspend is refused (data_changed);
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
from shared.privacy.planner import fits_budget
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


def test_shrunk_data_is_accounted_at_its_real_rate_and_replanned(data_root, tmp_path):
    site = _worker(data_root, tmp_path / "site")
    state = site.task.build_model().state_dict()
    assert site.train_round(1, state).status == "trained"
    planned = site.plan()
    assert planned.sample_rate == pytest.approx(1 / 3)  # 90 training rows, batch 32
    _shrink(site, 20)  # 90 -> 20 rows: every row in every batch, q 1/3 -> 1
    # what the old plan would do at the real rate: overspend the run's target
    old = Mechanism(planned.noise_multiplier, 1.0, 2)
    assert not fits_budget(site._trained_history(), old, 1e-5, planned.composed_target)[0]
    assert site.train_round(2, state).status == "trained"
    entries = _ledger(tmp_path / "site").entries()
    assert [e["extra"]["phase"] for e in entries] == ["count", "train", "train"]  # the count: once per run
    second = entries[2]
    assert second["mechanism"]["sample_rate"] == 1.0 and second["mechanism"]["steps"] == 1
    assert second["extra"]["n_train"] == 20 and second["extra"]["replanned_at_round"] == 2
    assert second["mechanism"]["noise_multiplier"] > planned.noise_multiplier
    history = [Mechanism(**e["mechanism"]) for e in entries]
    recomputed = epsilon_independent(history, 1e-5)
    assert second["cumulative_epsilon"] == pytest.approx(recomputed, rel=0.01) and recomputed <= 4.0 * 1.01
    assert audit_ledger(tmp_path / "site" / "privacy_ledger.jsonl").status == "ok"
    assert any(e["event"].get("kind") == "data_changed" and e["event"]["action"] == "replanned"
               for e in site.security_log.entries())


def test_shrunk_data_that_no_noise_can_absorb_is_refused(data_root, tmp_path):
    site = _worker(data_root, tmp_path / "site")
    state = site.task.build_model().state_dict()
    assert site.train_round(1, state).status == "trained"
    site.cfg.privacy.max_noise_multiplier = site.plan().noise_multiplier  # no more noise available
    _shrink(site, 20)
    outcome = site.train_round(2, state)
    assert (outcome.status, outcome.reason, outcome.arrays) == ("refused", "data_changed", None)
    entries = _ledger(tmp_path / "site").entries()
    assert [e["status"] for e in entries] == ["trained", "trained", "refused"]  # count, round 1, round 2
    assert entries[2]["extra"]["reason"] == "data_changed" and "90 -> 20" in entries[2]["extra"]["detail"]
    assert any(e["event"].get("kind") == "data_changed" and e["event"]["action"] == "refused"
               for e in site.security_log.entries())


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
