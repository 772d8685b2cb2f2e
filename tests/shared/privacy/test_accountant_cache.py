"""Accounting is cached per (sigma, q) pair and per history, and the cached epsilon is exactly the libraries'
(issue 23: budget check + ledger epsilon were 38-47 % of a round). Counts RDP evaluations, never time."""

import json
import math

import numpy as np
import pytest

from shared.privacy import accountant
from shared.privacy.accountant import Mechanism, epsilon_independent, epsilon_opacus, merged_history

HISTORIES = [
    [Mechanism(1.1, 0.01, 100)],
    [Mechanism(0.8, 0.25, 4), Mechanism(0.8, 0.25, 4), Mechanism(20.0, 1.0, 1)],
    [Mechanism(3.0, 0.5, 2), Mechanism(5.0, 1.0, 1), Mechanism(3.0, 0.5, 2), Mechanism(0.6, 0.004, 3000)],
    [Mechanism(19.9, 1.0, 7)],
]


def _library_opacus(history, delta):
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = merged_history(history)
    return float(acc.get_epsilon(delta=delta))


def _library_independent(history, delta):
    import dp_accounting

    event = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(nm)), s)
        for nm, q, s in merged_history(history)])
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(event)
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_cached_epsilon_is_bit_for_bit_the_libraries(history, delta):
    for _ in range(2):  # the first call fills the caches, the second reads them
        assert epsilon_opacus(history, delta) == _library_opacus(history, delta)
        assert epsilon_independent(history, delta) == _library_independent(history, delta)


def test_a_cached_per_step_rdp_cannot_be_corrupted_by_a_caller():
    unit = accountant._unit_rdp_opacus(1.3, 0.02)
    with pytest.raises(ValueError):
        unit += 1.0
    before = epsilon_opacus([Mechanism(1.3, 0.02, 10)], 1e-5)
    assert epsilon_opacus([Mechanism(1.3, 0.02, 10)], 1e-5) == before


@pytest.fixture
def rdp_calls(monkeypatch):
    """Counts the per-order RDP evaluations of both libraries (the expensive part of accounting)."""
    from dp_accounting.rdp import rdp_privacy_accountant
    from opacus.accountants.analysis import rdp

    calls = {"opacus": 0, "independent": 0}
    original_opacus, original_independent = rdp._compute_rdp, rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian

    def counted_opacus(*args, **kwargs):
        calls["opacus"] += 1
        return original_opacus(*args, **kwargs)

    def counted_independent(*args, **kwargs):
        calls["independent"] += 1
        return original_independent(*args, **kwargs)

    monkeypatch.setattr(rdp, "_compute_rdp", counted_opacus)
    monkeypatch.setattr(rdp_privacy_accountant, "_compute_rdp_poisson_subsampled_gaussian", counted_independent)
    accountant._unit_rdp_opacus.cache_clear()
    accountant._unit_rdp_independent.cache_clear()
    accountant._epsilon_opacus.cache_clear()
    accountant._epsilon_independent.cache_clear()
    return calls


def test_rdp_is_evaluated_once_per_pair_not_once_per_round(rdp_calls):
    from opacus.accountants import RDPAccountant

    orders = len(RDPAccountant.DEFAULT_ALPHAS)
    history = []
    for _ in range(10):  # ten rounds: budget check (both), then the ledger's epsilon (Opacus), then an evaluation
        round_mechanism, evaluation = Mechanism(1.2, 0.05, 20), Mechanism(30.0, 1.0, 1)
        accountant.epsilon_both(history + [round_mechanism], 1e-5)
        epsilon_opacus(history + [round_mechanism], 1e-5)
        history.append(round_mechanism)
        accountant.epsilon_both(history + [evaluation], 1e-5)
        history.append(evaluation)
    assert rdp_calls["opacus"] == 2 * orders  # one per-step RDP vector per (sigma, q) pair, for the whole run
    assert rdp_calls["independent"] == 2


TINY = {
    "task": "event_mortality",
    "data": {"sites": ["site_a"], "synth_sizes": [120], "max_events": 16, "text_dim": 16},
    "model": {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2,
              "mlp_hidden": 16},
    "train": {"rounds": 4, "local_epochs": 1, "batch_size": 32},
    "privacy": {"target_epsilon": 4.0},
}


def test_site_rounds_after_the_plan_need_no_new_rdp_evaluation(tmp_path, rdp_calls):
    """A real SiteWorker: planning costs RDP evaluations (a bisection over sigma), the rounds after it none."""
    from client.site_worker import SiteSettings, SiteWorker
    from shared.config import config_from_dict
    from shared.tasks.registry import build_task

    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(tmp_path / "data")
    cfg = config_from_dict(raw, "tiny.yaml")
    build_task(cfg).synthesize(tmp_path / "data", ["site_a"], 0)
    settings = SiteSettings(site="site_a", data_dir=tmp_path / "data" / "site_a", state_dir=tmp_path / "state")
    worker = SiteWorker(cfg, settings, "run-1")
    worker.plan()
    after_plan = dict(rdp_calls)
    state = worker.task.build_model().state_dict()
    per_round = []
    for server_round in range(1, 5):
        before = dict(rdp_calls)
        outcome = worker.train_round(server_round, state)
        assert outcome.status == "trained" and math.isfinite(outcome.metrics["epsilon"])
        worker.evaluate_round(state, server_round)
        per_round.append({k: rdp_calls[k] - before[k] for k in rdp_calls})
    assert after_plan["opacus"] > 0  # the counter sees the planner's work
    assert per_round == [{"opacus": 0, "independent": 0}] * 4
    # and the recorded epsilons are the library's values of the ledger's history
    entries = worker.ledger.entries()
    history = [Mechanism(**e["mechanism"]) for e in entries if e["status"] == "trained"]
    assert entries[-1]["cumulative_epsilon"] == _library_opacus(history, cfg.privacy.delta)
    assert np.isfinite(entries[-1]["cumulative_epsilon"])


def test_a_fresh_process_reads_the_rdp_orders_from_the_disk_cache(tmp_path, rdp_calls):
    history = [Mechanism(1.7, 0.03, 40), Mechanism(25.0, 1.0, 2)]
    accountant.use_disk_cache(tmp_path)
    try:
        first = epsilon_opacus(history, 1e-5), epsilon_independent(history, 1e-5)
        assert len(list(tmp_path.glob("*.npy"))) == 4 and rdp_calls["opacus"] > 0
        for cache in (accountant._unit_rdp_opacus, accountant._unit_rdp_independent, accountant._epsilon_opacus,
                      accountant._epsilon_independent):
            cache.cache_clear()  # what a new process starts with
        before = dict(rdp_calls)
        again = epsilon_opacus(history, 1e-5), epsilon_independent(history, 1e-5)
        assert rdp_calls == before  # nothing evaluated again
        assert again == first == (_library_opacus(history, 1e-5), _library_independent(history, 1e-5))
        next(tmp_path.glob("opacus-*.npy")).write_bytes(b"damaged")
        accountant._unit_rdp_opacus.cache_clear()
        accountant._epsilon_opacus.cache_clear()
        assert epsilon_opacus(history, 1e-5) == first[0]  # a damaged file is computed again
    finally:
        accountant.use_disk_cache(None)
