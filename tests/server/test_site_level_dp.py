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
    content = RecordDict({"metrics": MetricRecord({"num-examples": n}),
                          "site": ConfigRecord({"name": site, "status": status, "reason": ""})})
    if status == "trained":
        content["arrays"] = ArrayRecord({"w": Array(np.full(4, value, dtype=np.float32))})
    return Message(metadata=metadata, content=content)


def _strategy(tmp_path, **site_dp):
    history = RunHistory(tmp_path, SITES, console=Console(file=open("/dev/null", "w")))
    strategy = make_strategy(_cfg(**site_dp), history)
    strategy.current_arrays = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})
    return strategy, history


def test_fixed_clipping_accounts_the_weighted_sensitivity_of_the_sites_that_trained(tmp_path):
    np.random.seed(0)
    strategy, history = _strategy(tmp_path, noise_multiplier=0.8, clipping_norm=1.0)
    replies = [_reply(1, "site_a", 300, 5.0), _reply(2, "site_b", 100, -5.0), _reply(3, "site_c", 0, 0.0, "budget_exhausted")]
    arrays, _ = strategy.aggregate_train(1, replies)
    rec = history.site_level_dp[1]
    # noise std 0.8 x 1 / 3 sites; one site moves the weighted mean by at most 1 x 300 / 400
    assert rec["noise_std"] == pytest.approx(0.8 / 3)
    assert rec["effective_noise_multiplier"] == pytest.approx((0.8 / 3) / (300 / 400))
    assert rec["sites_aggregated"] == 2 and rec["sample_rate"] == 1.0
    expected = epsilon_opacus([Mechanism(rec["effective_noise_multiplier"], 1.0, 1)], 1e-5)
    assert rec["epsilon"] == pytest.approx(expected) and rec["epsilon_independent"] == pytest.approx(expected, rel=0.02)
    # each update (norm 10) was clipped to norm 1 before averaging: the aggregate is near 0.5 x 0.75 - 0.5 x 0.25 per entry
    assert arrays is not None and np.abs(arrays["w"].numpy() - 0.25).max() < 6 * rec["noise_std"]
    strategy.aggregate_train(2, [_reply(1, "site_a", 300, 5.0), _reply(2, "site_b", 100, -5.0)])
    assert history.site_level_dp[2]["epsilon"] > rec["epsilon"]


def test_adaptive_clipping_composes_the_count_query_and_the_norm_it_clipped_with(tmp_path):
    np.random.seed(0)
    strategy, history = _strategy(tmp_path, mode="adaptive", noise_multiplier=0.5, clipping_norm=1.0, clipped_count_stddev=1.0)
    strategy.aggregate_train(1, [_reply(1, "site_a", 100, 5.0), _reply(2, "site_b", 100, 5.0)])
    rec = history.site_level_dp[1]
    assert rec["clipping_norm"] == 1.0  # the norm round 1 was clipped with; Flower noises with the updated one
    assert rec["noise_std"] == pytest.approx(strategy.noise_multiplier * strategy.clipping_norm / 3)
    assert rec["effective_noise_multiplier"] == pytest.approx(rec["noise_std"] / (1.0 * 100 / 200))
    assert [m["noise_multiplier"] for m in rec["mechanisms"]] == [pytest.approx(rec["effective_noise_multiplier"]), 1.0]
    assert rec["epsilon"] == pytest.approx(epsilon_opacus([Mechanism(**m) for m in rec["mechanisms"]], 1e-5))


@pytest.mark.parametrize(
    "site_dp, field",
    [
        ({"noise_multiplier": 0.0}, "privacy.site_level_dp.noise_multiplier"),
        ({"clipping_norm": -1.0}, "privacy.site_level_dp.clipping_norm"),
        ({"mode": "quantile"}, "privacy.site_level_dp.mode"),
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
