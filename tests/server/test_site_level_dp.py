"""Site-level DP at the center: Flower's server-side DP wrapper behind fedcare's site tracking,
with the epsilon of each aggregate release accounted from the weights really used."""

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from rich.console import Console

from server.history import RunHistory
from server.strategy import make_strategy
from shared.config import config_from_dict
from shared.errors import InputError
from shared.privacy.accountant import Mechanism, epsilon_opacus

SITES = ["site_a", "site_b", "site_c"]


def _cfg(**site_dp):
    return config_from_dict({"data": {"sites": SITES}, "privacy": {"site_level_dp": {"enabled": True, **site_dp}}})


def _reply(node: int, site: str, n: int, value: float, status: str = "trained") -> Message:
    metadata = Metadata(run_id=1, message_id=f"r{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="m",
                        group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    content = RecordDict({"metrics": MetricRecord({"num-examples": n, "epsilon": 1.5, "steps": 3}),
                          "site": ConfigRecord({"name": site, "status": status, "reason": ""})})
    if status == "trained":
        content["arrays"] = ArrayRecord({"w": Array(np.full(4, value, dtype=np.float32))})
    return Message(metadata=metadata, content=content)


def _strategy(tmp_path, **site_dp):
    history = RunHistory(tmp_path, SITES, console=Console(file=open("/dev/null", "w")))
    strategy = make_strategy(_cfg(**site_dp), history)
    strategy.current_arrays = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})
    return strategy, history


def test_fixed_clipping_divides_by_the_configured_sites_and_accounts_their_sensitivity(tmp_path):
    np.random.seed(0)
    strategy, history = _strategy(tmp_path, noise_multiplier=0.8, clipping_norm=1.0)
    replies = [_reply(1, "site_a", 300, 5.0), _reply(2, "site_b", 100, -5.0), _reply(3, "site_c", 0, 0.0, "budget_exhausted")]
    arrays, _ = strategy.aggregate_train(1, replies)
    rec = history.site_level_dp[1]
    # noise std 0.8 x 1 / 3 sites; one site (weight <= 1, clipped update norm <= 1) moves sum / 3 by at most 1 / 3
    assert rec["noise_std"] == pytest.approx(0.8 / 3) and rec["sensitivity"] == pytest.approx(1 / 3)
    assert rec["effective_noise_multiplier"] == pytest.approx(0.8)
    assert rec["sites_aggregated"] == 2 and rec["sample_rate"] == 1.0 and rec["denominator"] == 3
    assert rec["neighbouring"] == "add/remove one site" and rec["site_weights"] == [1.0, 1.0]
    expected = epsilon_opacus([Mechanism(0.8, 1.0, 1)], 1e-5)
    assert rec["epsilon"] == pytest.approx(expected) and rec["epsilon"] == pytest.approx(6.12, abs=0.01)
    assert rec["epsilon_independent"] == pytest.approx(expected, rel=0.02)
    # each update (norm 10) was clipped to norm 1 (0.5 per entry): (0.5 - 0.5) / 3 = 0 per entry, plus noise
    assert arrays is not None and np.abs(arrays["w"].numpy()).max() < 6 * rec["noise_std"]
    strategy.aggregate_train(2, [_reply(1, "site_a", 300, 5.0), _reply(2, "site_b", 100, -5.0)])
    assert history.site_level_dp[2]["epsilon"] > rec["epsilon"]


def test_the_old_variable_denominator_cost_epsilon_41_not_the_16_it_recorded():
    """The weighted mean over the sites that trained (300 and 100 examples, C = 1): removing site_a moves
    it by 300/400 x |u_a - u_b| = 1.5 = 2 C w / W for opposite updates, not the C w / W = 0.75 accounted."""
    u = {"a": np.array([1.0, 0.0]), "b": np.array([-1.0, 0.0])}
    w = {"a": 300.0, "b": 100.0}

    def old_mean(sites):
        return sum(w[s] * u[s] for s in sites) / sum(w[s] for s in sites)

    change = max(np.linalg.norm(old_mean(["a", "b"]) - old_mean([s])) for s in ("a", "b"))
    assert change == pytest.approx(1.5)
    noise_std = 0.8 / 3
    assert epsilon_opacus([Mechanism(noise_std / 0.75, 1.0, 1)], 1e-5) == pytest.approx(16.4, abs=0.05)  # recorded
    assert epsilon_opacus([Mechanism(noise_std / change, 1.0, 1)], 1e-5) == pytest.approx(41.3, abs=0.05)  # spent


def _aggregate_without_noise(tmp_path, replies, **site_dp):
    strategy, history = _strategy(tmp_path, **site_dp)
    strategy.noise_multiplier = 0.0  # the deterministic part of the release (the config refuses 0 for real runs)
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays["w"].numpy().astype(float), history.site_level_dp[1]


@pytest.mark.parametrize("max_site_weight", [None, 250.0])
def test_brute_force_sensitivity_of_the_released_aggregate_over_all_neighbouring_site_sets(tmp_path, max_site_weight):
    """Every site set S of up to three configured sites and every neighbour S + {j}: the real strategy's
    aggregate (clipping, weights, phantom, FedAvg) moves by at most the accounted sensitivity C / m, and the
    worst case (a full-weight site whose clipped update points away from the others') reaches it."""
    clip = 0.5
    rng = np.random.default_rng(0)
    # site -> (num-examples, update): unclipped, mixed norms, two opposite large ones
    updates = {"site_a": (300, np.full(4, 5.0)), "site_b": (100, np.full(4, -5.0)),
               "site_c": (40, rng.normal(size=4) * 0.1)}
    sets = [[s for k, s in enumerate(SITES) if mask >> k & 1] for mask in range(1, 8)]
    largest = 0.0
    for subset in sets:
        for extra in (s for s in SITES if s not in subset):
            with_site = subset + [extra]
            agg = {}
            for key, sites in (("without", subset), ("with", with_site)):
                replies = [_reply(SITES.index(s) + 1, s, updates[s][0], 0.0) for s in sites]
                for msg, s in zip(replies, sites):
                    msg.content["arrays"] = ArrayRecord({"w": Array(updates[s][1].astype(np.float32))})
                agg[key], rec = _aggregate_without_noise(tmp_path / f"{len(sites)}{extra}", replies, noise_multiplier=1.0,
                                                         clipping_norm=clip, max_site_weight=max_site_weight)
            largest = max(largest, float(np.linalg.norm(agg["with"] - agg["without"])))
            assert rec["sensitivity"] == pytest.approx(clip / 3)
    assert largest <= clip / 3 + 1e-6
    assert largest == pytest.approx(clip / 3, rel=1e-5)  # site_a (weight 1 at 300 >= 250 examples) is a worst case


def test_fixed_denominator_mean_shrinks_towards_the_current_model_when_sites_are_missing(tmp_path):
    def replies():
        return [_reply(1, "site_a", 300, 0.1), _reply(2, "site_b", 100, 0.1)]

    agg, rec = _aggregate_without_noise(tmp_path, replies(), noise_multiplier=1.0, clipping_norm=1.0)
    assert agg == pytest.approx(np.full(4, 0.2 / 3))  # (0.1 + 0.1) / 3 configured sites, current model 0
    agg, rec = _aggregate_without_noise(tmp_path / "capped", replies(), noise_multiplier=1.0, clipping_norm=1.0,
                                        max_site_weight=200.0)
    assert rec["site_weights"] == [1.0, 0.5] and agg == pytest.approx(np.full(4, 0.15 / 3))


def test_adaptive_clipping_composes_the_count_query_and_the_norm_it_clipped_with(tmp_path):
    np.random.seed(0)
    strategy, history = _strategy(tmp_path, mode="adaptive", noise_multiplier=0.5, clipping_norm=1.0, clipped_count_stddev=1.0)
    strategy.aggregate_train(1, [_reply(1, "site_a", 100, 5.0), _reply(2, "site_b", 100, 5.0)])
    rec = history.site_level_dp[1]
    assert rec["clipping_norm"] == 1.0  # the norm round 1 was clipped with; Flower noises with the updated one
    assert rec["noise_std"] == pytest.approx(strategy.noise_multiplier * strategy.clipping_norm / 3)
    assert rec["effective_noise_multiplier"] == pytest.approx(rec["noise_std"] / (1.0 / 3))
    assert [m["noise_multiplier"] for m in rec["mechanisms"]] == [pytest.approx(rec["effective_noise_multiplier"]), 1.0]
    assert rec["epsilon"] == pytest.approx(epsilon_opacus([Mechanism(**m) for m in rec["mechanisms"]], 1e-5))


@pytest.mark.parametrize(
    "site_dp, field",
    [
        ({"noise_multiplier": 0.0}, "privacy.site_level_dp.noise_multiplier"),
        ({"clipping_norm": -1.0}, "privacy.site_level_dp.clipping_norm"),
        ({"mode": "quantile"}, "privacy.site_level_dp.mode"),
        ({"max_site_weight": 0.0}, "privacy.site_level_dp.max_site_weight"),
        ({"mode": "adaptive"}, "privacy.site_level_dp.clipped_count_stddev"),  # 3 sites / 20 = 0.15 < 0.5 / 2
        ({"mode": "adaptive", "target_clipped_quantile": 1.5, "clipped_count_stddev": 1.0},
         "privacy.site_level_dp.target_clipped_quantile"),
    ],
)
def test_bad_site_level_dp_settings_name_the_field(site_dp, field):
    with pytest.raises(InputError) as err:
        _cfg(**site_dp)
    assert field in str(err.value)


def test_round_table_shows_the_site_level_epsilon(tmp_path):
    console = Console(record=True, width=120)
    history = RunHistory(tmp_path, SITES, console=console)
    history.record_site_level_dp(1, {"epsilon": 12.3456, "delta": 1e-5, "effective_noise_multiplier": 0.5})
    history.print_round(1, 2)
    assert "site-level DP: epsilon (cum.) 12.35, delta 1e-05" in console.export_text()


def test_site_level_dp_refuses_strategies_that_are_not_a_weighted_mean():
    with pytest.raises(InputError) as err:
        config_from_dict({"data": {"sites": SITES}, "strategy": {"name": "fedmedian"},
                          "privacy": {"site_level_dp": {"enabled": True}}})
    assert "strategy.name" in str(err.value) and "fedmedian" in str(err.value)
