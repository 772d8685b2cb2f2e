"""Site policy: validation, the run hash (config + code), floor checks, approval round trip."""

import pytest

from shared.config import config_from_dict
from shared.errors import InputError
from shared.privacy.code_bundle import installed_digest, installed_manifest
from shared.privacy.site_policy import (
    SitePolicy,
    approval_for,
    approve_run,
    config_violations,
    load_site_policy,
    noise_violation,
    run_hash,
    save_site_policy,
)

BASE = {"task": "event_mortality", "data": {"sites": ["a", "b"]}, "model": {"name": "event_transformer"}}


def _cfg(**sections):
    raw = {**BASE, **sections}
    return config_from_dict(raw, "run.yaml")


@pytest.mark.parametrize(
    "text, field",
    [
        ("bogus: 1\n", "bogus"),
        ("max_rounds: 0\n", "max_rounds"),
        ("privacy: {max_epsilon_per_run: -1}\n", "privacy.max_epsilon_per_run"),
        ("privacy: {min_noise: 1}\n", "privacy.min_noise"),
        ("allowed_strategies: [fedfoo]\n", "allowed_strategies"),
        ("approved_runs: [{hash: abc}]\n", "approved_runs[0].hash"),
        ("allowed_tasks: event_mortality\n", "allowed_tasks"),
        ("release: {exact_metrics: yes please}\n", "release.exact_metrics"),
        ("release: {raw_rows: true}\n", "release.raw_rows"),
    ],
)
def test_bad_policy_names_file_and_field(tmp_path, text, field):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_site_policy(path)
    assert err.value.field == field and err.value.source == str(path)


def test_missing_policy_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_site_policy(tmp_path / "nope.yaml")


def test_strict_defaults():
    policy = SitePolicy(source="x")
    assert policy.approved_runs == [] and policy.allowed_strategies == ["fedavg", "fedprox"]
    assert policy.privacy.max_epsilon_per_run == 8.0 and policy.privacy.max_clip_norm == 1.0
    assert policy.privacy.min_noise_multiplier == 0.5 and policy.max_rounds == 20


def test_approval_round_trip(tmp_path):
    cfg = _cfg()
    policy = SitePolicy(source="p")
    digest = run_hash(cfg)
    approve_run(policy, cfg, digest, parameters=123)
    approve_run(policy, cfg, digest, parameters=123)  # approving twice keeps one record
    save_site_policy(policy, tmp_path / "p.yaml")
    loaded = load_site_policy(tmp_path / "p.yaml")
    assert loaded.approved_hashes() == {digest} and len(loaded.approved_runs) == 1
    assert loaded.approved_runs[0]["parameters"] == 123 and loaded.approved_runs[0]["rounds"] == cfg.train.rounds


def test_run_hash_ignores_locations_but_not_what_runs(tmp_path):
    base = run_hash(_cfg())
    assert len(base) == 64
    assert run_hash(_cfg(output_dir=str(tmp_path), data={"sites": ["a", "b"], "root": str(tmp_path)})) == base
    assert run_hash(_cfg(train={"rounds": 6})) != base
    assert run_hash(_cfg(privacy={"target_epsilon": 7.0})) != base
    assert run_hash(_cfg(model={"name": "event_transformer", "d_model": 32})) != base


def test_code_digest_covers_every_installed_file_init_and_errors_included():
    names = set(installed_manifest())
    for path in ("shared/models/event_transformer.py", "shared/tasks/event_mortality.py", "shared/training/dp_trainer.py",
                 "client/site_worker.py", "client/app.py", "shared/privacy/whitelist.py", "shared/__init__.py",
                 "client/__init__.py", "shared/errors.py", "server/app.py"):
        assert path in names, path


def test_any_changed_file_changes_the_hash(tmp_path):
    cfg = _cfg()
    for package in ("shared", "client", "server"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    before = run_hash(cfg, installed_digest(tmp_path))
    (tmp_path / "shared" / "__init__.py").write_text("import os  # a payload in an __init__.py\n")
    assert run_hash(cfg, installed_digest(tmp_path)) != before
    assert run_hash(cfg) == run_hash(cfg, installed_digest())  # default: the installed packages


def test_approval_pins_the_roster(tmp_path):
    cfg = _cfg()
    policy = SitePolicy(source="p")
    record = approve_run(policy, cfg, run_hash(cfg), parameters=1, roster_digest="r" * 64)
    assert record["code"] == installed_digest() and record["roster"] == "r" * 64 and len(record["config_digest"]) == 64
    assert approval_for(policy, run_hash(cfg), "r" * 64) == record
    assert approval_for(policy, run_hash(cfg), "s" * 64) is None and approval_for(policy, run_hash(cfg), None) is None


def test_config_violations_name_each_weakening():
    policy = SitePolicy(source="p", allowed_tasks=["retain_aki"], allowed_models=["retain"], max_rounds=3)
    cfg = _cfg(privacy={"target_epsilon": 9.0, "max_grad_norm": 2.0, "delta": 1e-3, "enabled": False},
               strategy={"name": "krum"}, train={"rounds": 4})
    problems = " | ".join(config_violations(policy, cfg, "a"))
    for text in ("switched off", "epsilon 9 > site maximum 8", "clip norm 2 > site maximum 1", "delta 0.001",
                 "4 rounds > site maximum 3", "strategy 'krum'", "task 'event_mortality'", "model 'event_transformer'"):
        assert text in problems
    assert config_violations(SitePolicy(source="p"), _cfg(), "a") == []
    assert config_violations(SitePolicy(source="p", site="b"), _cfg(), "a") == ["the policy is for site 'b', not 'a'"]
    assert config_violations(SitePolicy(source="p"), _cfg(privacy={"site_targets": {"a": 9.0}}), "a")


def test_exact_metrics_only_where_the_policy_says_so_and_evaluation_noise_has_the_floor(tmp_path):
    assert SitePolicy(source="p").release.exact_metrics is False  # default: validation only as DP releases
    path = tmp_path / "policy.yaml"
    path.write_text("release: {exact_metrics: true}\n")
    policy = load_site_policy(path)
    assert policy.release.exact_metrics is True and policy.to_dict()["release"] == {"exact_metrics": True}
    weak = _cfg(privacy={"evaluation": {"noise_multiplier": 0.1}})
    assert config_violations(SitePolicy(source="p"), weak, "a") == ["evaluation noise multiplier 0.1 < site minimum 0.5"]


def test_noise_floor():
    policy = SitePolicy(source="p")
    assert noise_violation(policy, 0.6) is None
    assert "0.2 < site minimum 0.5" in noise_violation(policy, 0.2)


def test_site_policies_in_run_config(tmp_path):
    path = tmp_path / "p.yaml"
    save_site_policy(SitePolicy(source="p"), path)
    cfg = _cfg(federation={"site_policies": {"a": str(path)}})
    assert cfg.federation.site_policies == {"a": str(path)}
    with pytest.raises(InputError, match="federation.site_policies.c"):
        _cfg(federation={"site_policies": {"c": str(path)}})
    with pytest.raises(InputError, match="not found"):
        _cfg(federation={"site_policies": {"a": str(tmp_path / "missing.yaml")}})
