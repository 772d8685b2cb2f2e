"""A curious (and a malicious) center against SecAgg+ in a real Flower simulation (light sites with known updates,
see secagg_harness): each attack, run by a modified server workflow, is refused by fedcare's guarded sites,
logged in their security logs and yields no individual update; the same attack against sites running
Flower's stock `secaggplus_mod` rebuilds the victim's update exactly. A dropout is still aggregated. Sites
sign their SecAgg+ keys: key substitution, a site off the roster, a bad signature and a mixed-version
federation are refused before any site trains; a sum whose masks did not cancel is refused by the center."""

import numpy as np
import pytest
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.simulation import run_simulation

from server.secure_aggregation import AuthenticatedSecAggPlus, SecAggPlusWithEarlyDropouts
from shared.privacy.secagg_masks import MASK_ALGORITHM, STOCK_MASK_ALGORITHM
from tests.integration import secagg_harness as h

# (scenario, group, attempts) — attempts are sent one after another in the same unmask stage
ATTACKS = [
    ("active_and_dropped", ["active_and_dropped"]),
    ("outside_neighbours", ["outside_neighbours", "active_and_dropped"]),  # probe, then retry
    ("below_threshold", ["below_threshold", "below_threshold_padded"]),
]
GUARDED = {0, 1, 2, 6, 7, 8, 10, 12, 13, 14, 15}
DROPOUT_PID = 20  # group 6: partition 20 fails while training, after sharing its keys
DECLINING = frozenset({26, 29})  # groups 8 and 9: the third site declines at setup (e.g. no budget)
OUTSIDER, IMPOSTOR = 38, 41  # group 12: p38 is on no other site's roster; group 13: p41 signs with a key not its own
STOCK_MASKS = frozenset({44, 47, 50, 53})  # groups 14-17: the third site runs Flower's stock 32-bit masks
GROUPS = 18


def _curious(name, attempts):
    return lambda nodes: h.CuriousSecAggPlus(name, victim=nodes[0], attempts=attempts)


def _honest(nodes):
    return AuthenticatedSecAggPlus(h.PARAMS)


def _unchecked(nodes):  # a center that does not check versions (stock sites send no signed keys)
    return AuthenticatedSecAggPlus(h.PARAMS, check_versions=False)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    state_root = tmp_path_factory.mktemp("secagg_sites")
    scenarios = [(f"guarded_{name}", g, _curious(f"guarded_{name}", a)) for g, (name, a) in enumerate(ATTACKS)]
    scenarios += [(f"stock_{name}", g + 3, _curious(f"stock_{name}", a)) for g, (name, a) in enumerate(ATTACKS)]
    scenarios += [("dropout", 6, _honest), ("honest", 7, _honest), ("early_dropout", 8, _honest),
                  ("early_dropout_stock_workflow", 9, lambda nodes: SecAggPlusWorkflow(**h.PARAMS.workflow_kwargs()))]
    scenarios += [("guarded_key_substitution", 10, lambda nodes: h.KeySubstitutingSecAggPlus("guarded_key_substitution",
                                                                                              victim=nodes[0])),
                  ("stock_key_substitution", 11, lambda nodes: h.KeySubstitutingSecAggPlus("stock_key_substitution",
                                                                                            victim=nodes[0])),
                  ("outsider", 12, _honest), ("impostor", 13, _honest),
                  ("mixed_version", 14, _honest), ("mixed_version_unchecked_center", 15, _unchecked),
                  ("mixed_masks_stock_sites", 16, _unchecked),
                  ("mixed_masks_no_bounds_check", 17, lambda nodes: SecAggPlusWithEarlyDropouts(**h.PARAMS.workflow_kwargs()))]
    h.RESULTS.clear()
    h.make_identity_keys(state_root, range(3 * GROUPS), impostors=frozenset({IMPOSTOR}))
    run_simulation(
        server_app=h.build_server_app(scenarios),
        client_app=h.build_client_app(str(state_root), GUARDED, {DROPOUT_PID}, DECLINING, not_on_roster=frozenset({OUTSIDER}),
                                      impostors=frozenset({IMPOSTOR}), stock_mask_pids=STOCK_MASKS),
        num_supernodes=3 * GROUPS,
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
        assert log[1]["kind"] == "secagg_message_blocked"
        assert all("already refused" in reply for reply in attempts[1].values())
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


# -- signed SecAgg+ keys ---------------------------------------------------------------------------
def _refusals(state_root, pid):
    return [e for e in h.security_log(state_root, pid).events() if e["kind"] == "secagg_peer_refused"]


def _trained(state_root, group):
    return [pid for pid in range(3 * group, 3 * group + 3) if h.trained_marker(state_root, pid).exists()]


def test_key_substitution_rebuilds_the_victims_update_from_stock_flower_sites(results, record_property):
    res, state_root = results
    record = res["stock_key_substitution"]
    assert record["substituted"] and record["recovered"] is not None
    for rebuilt, truth in zip(record["recovered"], h.site_update(33)[0]):
        np.testing.assert_allclose(rebuilt, truth, rtol=0, atol=1e-6)
    record_property("max_abs_error", max(float(np.abs(r - t).max()) for r, t in zip(record["recovered"], h.site_update(33)[0])))
    for got, want in zip(record["aggregate"], h.weighted_mean([33, 34, 35])):  # and the round ended normally
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert all(h.security_log(state_root, pid).events() == [] for pid in (33, 34, 35))  # nobody noticed


def test_key_substitution_is_refused_by_sites_that_check_signed_keys(results):
    res, state_root = results
    record = res["guarded_key_substitution"]
    assert record["substituted"] and record.get("recovered") is None and record.get("aggregate") is None
    assert _trained(state_root, 10) == []  # refused before any shared secret, long before training
    for pid in (30, 31, 32):
        refusal = _refusals(state_root, pid)[0]
        assert refusal["stage"] == "share_keys" and refusal["code"] == "roster_refused"
        assert "signed other keys than the center forwarded (pk2" in refusal["reason"]
        entry = h.security_log(state_root, pid).entries()[0]
        assert "signature" in entry  # the site's signed security log


def test_a_site_outside_the_roster_is_refused_before_any_secret(results):
    res, state_root = results
    assert res["outsider"].get("aggregate") is None and _trained(state_root, 12) == []
    for pid in (36, 37):
        refusal = _refusals(state_root, pid)[0]
        assert refusal["code"] == "roster_refused" and refusal["stage"] == "share_keys"
        assert f"site 'p{OUTSIDER}'" in refusal["reason"] and "is not on this site's roster" in refusal["reason"]


def test_a_bad_signature_is_refused_before_any_secret(results):
    res, state_root = results
    assert res["impostor"].get("aggregate") is None and _trained(state_root, 13) == []
    for pid in (39, 40):
        refusal = _refusals(state_root, pid)[0]
        assert refusal["code"] == "roster_refused"
        assert f"site 'p{IMPOSTOR}'" in refusal["reason"] and "does not verify with its roster key" in refusal["reason"]
    assert "own identity key is not the roster's key" in _refusals(state_root, IMPOSTOR)[0]["reason"]


def test_a_mixed_version_federation_stops_at_setup_with_one_line(results):
    res, state_root = results
    failure = res["mixed_version"]["failure"]
    assert failure == (f"secure aggregation stopped before training: site 'p44' runs SecAgg+ masks {STOCK_MASK_ALGORITHM!r}, "
                       f"protocol 'fedcare-secagg+/2'; the federation runs masks {MASK_ALGORITHM!r}, "
                       "protocol 'fedcare-secagg+/2'")
    assert "\n" not in failure and _trained(state_root, 14) == []


def test_sites_refuse_a_mixed_federation_themselves_when_the_center_does_not_check(results):
    res, state_root = results
    assert res["mixed_version_unchecked_center"].get("aggregate") is None and _trained(state_root, 15) == []
    for pid in (45, 46):
        refusal = _refusals(state_root, pid)[0]
        assert refusal["code"] == "version_mismatch"
        assert refusal["reason"] == (f"site 'p47' (node {res['mixed_version_unchecked_center']['nodes'][2]}) runs SecAgg+ "
                                     f"masks {STOCK_MASK_ALGORITHM!r}, protocol 'fedcare-secagg+/2'; this site runs masks "
                                     f"{MASK_ALGORITHM!r}, protocol 'fedcare-secagg+/2'")


def test_the_center_refuses_a_sum_whose_masks_did_not_cancel(results):
    res, _ = results
    checked, unchecked = res["mixed_masks_stock_sites"], res["mixed_masks_no_bounds_check"]
    assert checked.get("aggregate") is None
    assert "the masks did not cancel" in checked["failure"] and checked["failure"].startswith(
        "the unmasked aggregate is outside the protocol's bounds")
    # without the check the strategy gets garbage (what a mixed federation produced before: max |w| 21 vs 1.9)
    garbage = unchecked["aggregate"]
    assert garbage is not None
    assert max(float(np.abs(g - w).max()) for g, w in zip(garbage, h.weighted_mean([51, 52, 53]))) > 0.5
