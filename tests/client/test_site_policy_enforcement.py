"""The site worker enforces its site policy before any training: approval by run hash, the privacy floor
(epsilon, DP on, noise multiplier) and the code it approved."""

import pytest

from client.site_worker import Refusal, SiteSettings, SiteWorker
from shared.config import config_from_dict
from shared.privacy import site_policy
from shared.privacy.site_policy import SitePolicy, approve_run, run_hash, save_site_policy
from shared.tasks.registry import build_task

TINY = {
    "task": "event_mortality",
    "data": {"sites": ["site_a"], "synth_sizes": [80], "max_events": 16, "text_dim": 8},
    "model": {"name": "event_transformer", "d_model": 8, "layers": 1, "heads": 2, "ff": 16, "pooling_heads": 2,
              "mlp_hidden": 8},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 32},
    "privacy": {"target_epsilon": 4.0},
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    build_task(config_from_dict(TINY, "tiny.yaml")).synthesize(root, ["site_a"], 0)
    return root


def _cfg(**privacy):
    raw = {**TINY, "privacy": {**TINY["privacy"], **privacy}}
    return config_from_dict(raw, "tiny.yaml")


def _worker(tmp_path, data_root, cfg, policy: SitePolicy | None, approve: bool = True) -> SiteWorker:
    path = None
    if policy is not None:
        if approve:
            approve_run(policy, cfg, run_hash(cfg), parameters=0)
        path = tmp_path / "policy.yaml"
        save_site_policy(policy, path)
    settings = SiteSettings(site="site_a", data_dir=data_root / "site_a", state_dir=tmp_path / "state", policy=path)
    return SiteWorker(cfg, settings, "run-1")


def _lenient_noise() -> SitePolicy:
    policy = SitePolicy(source="p")
    policy.privacy.min_noise_multiplier = 0.1
    return policy


def test_no_policy_approves_the_simulated_run(tmp_path, data_root):
    assert _worker(tmp_path, data_root, _cfg(), None).policy_refusal() is None


def test_unapproved_run_is_refused_without_arrays(tmp_path, data_root):
    worker = _worker(tmp_path, data_root, _cfg(), SitePolicy(source="p"), approve=False)
    refusal = worker.policy_refusal()
    assert refusal.code == "not_approved"
    assert refusal.detail.startswith(f"site policy refuses: run {worker.run_hash[:16]} not approved")
    outcome = worker.refuse("train", 1, refusal)
    assert outcome.status == "refused" and outcome.arrays is None and outcome.metrics == {"refused": 1}
    assert outcome.reason == "not_approved"  # what the center is told; the detail stays in the log
    logged = worker.security_log.events()[-1]
    assert logged == {"kind": "refused", "run_id": "run-1", "run_hash": worker.run_hash, "phase": "train",
                      "round": 1, "reason": "not_approved", "detail": refusal.detail}
    assert not (tmp_path / "state" / "privacy_ledger.jsonl").exists()  # nothing was trained or spent


def test_approved_run_trains(tmp_path, data_root):
    worker = _worker(tmp_path, data_root, _cfg(), _lenient_noise())
    assert worker.policy_refusal() is None
    assert [e["kind"] for e in worker.security_log.events()] == ["policy_approved"]
    outcome = worker.train_round(1, worker.task.build_model().state_dict())
    assert outcome.status == "trained" and outcome.arrays and outcome.metrics["epsilon"] <= 4.0


def test_epsilon_above_the_floor_is_refused_even_when_approved(tmp_path, data_root):
    policy = _lenient_noise()
    policy.privacy.max_epsilon_per_run = 2.0
    refusal = _worker(tmp_path, data_root, _cfg(), policy).policy_refusal()
    assert refusal == Refusal("policy_refused", "site policy refuses: epsilon 4 > site maximum 2")


def test_dp_switched_off_is_refused(tmp_path, data_root):
    refusal = _worker(tmp_path, data_root, _cfg(enabled=False), _lenient_noise()).policy_refusal()
    assert refusal == Refusal("policy_refused", "site policy refuses: differential privacy is switched off")


def test_huge_budget_means_too_little_noise_and_is_refused(tmp_path, data_root):
    policy = SitePolicy(source="p")  # min noise multiplier 0.5
    policy.privacy.max_epsilon_per_run = policy.privacy.max_lifetime_epsilon = 1e6
    worker = _worker(tmp_path, data_root, _cfg(target_epsilon=1e5), policy)
    reason = worker.policy_refusal().detail
    assert reason.startswith("site policy refuses: planned noise multiplier") and "< site minimum 0.5" in reason
    assert worker.plan().noise_multiplier < 0.5


def test_policy_lifetime_cap_lowers_the_site_budget(tmp_path, data_root):
    policy = _lenient_noise()
    policy.privacy.max_lifetime_epsilon = 3.0
    assert _worker(tmp_path, data_root, _cfg(), policy).lifetime_epsilon == 3.0


def test_code_changed_after_approval_is_refused(tmp_path, data_root, monkeypatch):
    cfg = _cfg()
    policy = _lenient_noise()
    approve_run(policy, cfg, run_hash(cfg), parameters=0)
    save_site_policy(policy, tmp_path / "policy.yaml")
    settings = SiteSettings(site="site_a", data_dir=data_root / "site_a", state_dir=tmp_path / "state",
                            policy=tmp_path / "policy.yaml")
    assert SiteWorker(cfg, settings, "run-1").policy_refusal() is None
    monkeypatch.setattr(site_policy, "installed_digest", lambda: "0" * 64)  # any installed file changed
    assert SiteWorker(cfg, settings, "run-2").policy_refusal().code == "not_approved"


def test_deployed_site_without_policy_refuses_with_no_policy(tmp_path, data_root):
    settings = SiteSettings(site="site_a", data_dir=data_root / "site_a", state_dir=tmp_path / "state", deployment=True)
    worker = SiteWorker(_cfg(), settings, "run-1")
    refusal = worker.policy_refusal()
    assert refusal.code == "no_policy"
    assert worker.refuse("train", 1, refusal).metrics == {"refused": 1}


def test_approval_with_another_roster_is_refused(tmp_path, data_root):
    from shared.privacy.keys import generate_site_key, load_public_key
    from shared.privacy.roster import roster_from_keys, save_roster

    keys = {}
    for site in ("site_a", "site_b"):
        generate_site_key(tmp_path / f"{site}.key", tmp_path / f"{site}.pub")
        keys[site] = load_public_key(tmp_path / f"{site}.pub")
    roster = roster_from_keys(keys)
    save_roster(roster, tmp_path / "roster.yaml")
    cfg = _cfg()
    policy = _lenient_noise()
    approve_run(policy, cfg, run_hash(cfg), parameters=0, roster_digest=roster.digest())
    save_site_policy(policy, tmp_path / "policy.yaml")
    settings = SiteSettings(site="site_a", data_dir=data_root / "site_a", state_dir=tmp_path / "state",
                            policy=tmp_path / "policy.yaml", roster=tmp_path / "roster.yaml", deployment=True)
    assert SiteWorker(cfg, settings, "run-1").policy_refusal() is None
    save_roster(roster_from_keys({"site_a": keys["site_a"]}), tmp_path / "roster.yaml")  # the roster changed
    worker = SiteWorker(cfg, settings, "run-2")
    refusal = worker.policy_refusal()
    assert refusal.code == "not_approved" and "with this roster" in refusal.detail


def test_revoked_approval_is_refused_from_the_next_message(tmp_path, data_root):
    worker = _worker(tmp_path, data_root, _cfg(), _lenient_noise())
    assert worker.policy_refusal() is None
    save_site_policy(_lenient_noise(), tmp_path / "policy.yaml")  # approvals removed
    assert worker.policy_refusal().code == "not_approved"
