"""A curious center against SecAgg+ in a real Flower simulation (light sites with known updates, see
secagg_harness): each attack, run by a modified server workflow, is refused by fedcare's guarded sites,
logged in their security logs and yields no individual update; the same attack against sites running
Flower's stock `secaggplus_mod` rebuilds the victim's update exactly. A dropout is still aggregated."""

import numpy as np
import pytest
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.simulation import run_simulation

from server.secure_aggregation import SecAggPlusWithEarlyDropouts
from tests.integration import secagg_harness as h

# (scenario, group, attempts) — attempts are sent one after another in the same unmask stage
ATTACKS = [
    ("active_and_dropped", ["active_and_dropped"]),
    ("outside_neighbours", ["outside_neighbours", "active_and_dropped"]),  # probe, then retry
    ("below_threshold", ["below_threshold", "below_threshold_padded"]),
]
GUARDED = {0, 1, 2, 6, 7, 8, 9}
DROPOUT_PID = 20  # group 6: partition 20 fails while training, after sharing its keys
DECLINING = frozenset({26, 29})  # groups 8 and 9: the third site declines at setup (e.g. no budget)


def _curious(name, attempts):
    return lambda nodes: h.CuriousSecAggPlus(name, victim=nodes[0], attempts=attempts)


def _honest(nodes):
    return SecAggPlusWithEarlyDropouts(**h.PARAMS.workflow_kwargs())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    state_root = tmp_path_factory.mktemp("secagg_sites")
    scenarios = [(f"guarded_{name}", g, _curious(f"guarded_{name}", a)) for g, (name, a) in enumerate(ATTACKS)]
    scenarios += [(f"stock_{name}", g + 3, _curious(f"stock_{name}", a)) for g, (name, a) in enumerate(ATTACKS)]
    scenarios += [("dropout", 6, _honest), ("honest", 7, _honest), ("early_dropout", 8, _honest),
                  ("early_dropout_stock_workflow", 9, lambda nodes: SecAggPlusWorkflow(**h.PARAMS.workflow_kwargs()))]
    h.RESULTS.clear()
    run_simulation(
        server_app=h.build_server_app(scenarios),
        client_app=h.build_client_app(str(state_root), GUARDED, {DROPOUT_PID}, DECLINING),
        num_supernodes=30,
        backend_config={"client_resources": {"num_cpus": 1},
                        "init_args": {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}},
    )
    return dict(h.RESULTS), state_root


def _victim_update(group):
    return h.site_update(3 * group)[0]


@pytest.mark.parametrize("group, name, first_reason", [
    (0, "active_and_dropped", "both active and dropped"),
    (1, "outside_neighbours", "outside this site's neighbour set"),
    (2, "below_threshold", "fewer than the threshold"),
])
def test_guarded_sites_refuse_log_and_leak_nothing(results, group, name, first_reason):
    res, state_root = results
    record = res[f"guarded_{name}"]
    assert record["recovered"] is None
    attempts = record["replies"]
    assert len(attempts) == len(dict(ATTACKS)[name])
    for attempt in attempts:  # every site answered every attempt with an error, never with shares
        assert len(attempt) == 3 and all(reply != "shares" for reply in attempt.values())
    victim_pid = 3 * group
    log = h.security_log(state_root, victim_pid).events()
    assert log[0]["kind"] == "secagg_request_refused" and first_reason in log[0]["reason"]
    assert log[0]["stage"] == "unmask"
    if len(attempts) > 1:  # the retry is not answered either: the site sends nothing further in this run
        assert log[1]["kind"] == "secagg_message_blocked" and "already refused" in log[1]["reason"]
        assert all(reply == "secagg_refused" for reply in attempts[1].values())  # a code; the why stays logged
    for pid in range(3 * group, 3 * group + 3):  # every site of the group logged its refusal
        assert h.security_log(state_root, pid).events()[0]["kind"] == "secagg_request_refused"


@pytest.mark.parametrize("name", [name for name, _ in ATTACKS])
def test_the_same_attacks_rebuild_the_victims_update_from_stock_flower_sites(results, name):
    res, _ = results
    record = res[f"stock_{name}"]
    group = 3 + [n for n, _ in ATTACKS].index(name)
    assert record["recovered"] is not None, record["replies"]
    for rebuilt, truth in zip(record["recovered"], _victim_update(group)):
        np.testing.assert_allclose(rebuilt, truth, atol=1e-5)
    attempts = record["replies"]
    assert all(reply == "shares" for reply in attempts[-1].values())  # stock sites answered the last attempt
    if len(attempts) > 1:  # the probe failed at Flower's own checks (KeyError / len(active) < threshold) ...
        assert all(reply != "shares" for reply in attempts[0].values())  # ... but the sites kept answering


def test_a_site_dropping_out_mid_round_still_yields_the_aggregate_of_the_others(results):
    res, state_root = results
    record = res["dropout"]
    assert sorted(n for _, n in record["results_seen"]) == sorted([h.site_update(18)[1], h.site_update(19)[1]])
    for got, want in zip(record["aggregate"], h.weighted_mean([18, 19])):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert all(h.security_log(state_root, pid).events() == [] for pid in (18, 19, 20))  # a dropout is no attack


def test_an_honest_round_aggregates_all_three(results):
    res, _ = results
    for got, want in zip(res["honest"]["aggregate"], h.weighted_mean([21, 22, 23])):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_site_declining_at_setup_leaves_the_round_instead_of_failing_it(results):
    res, _ = results
    for got, want in zip(res["early_dropout"]["aggregate"], h.weighted_mean([24, 25])):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # Flower 1.41's own workflow keeps the declined node as "dropped", asks the others for shares of it
    # they never received, and loses the round
    assert res["early_dropout_stock_workflow"].get("aggregate") is None
