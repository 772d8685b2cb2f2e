import dataclasses

import pytest

from shared.privacy.accountant import Mechanism, epsilon_independent, epsilon_opacus, merged_history

DELTA = 1e-5
MIXED = [Mechanism(1.1, 0.01, 1000), Mechanism(0.8, 0.02, 300), Mechanism(3.0, 0.1, 10)]


def test_mechanism_is_frozen() -> None:
    mechanism = Mechanism(1.0, 0.01, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mechanism.steps = 11  # type: ignore[misc]


@pytest.mark.parametrize("epsilon", [epsilon_opacus, epsilon_independent])
@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_nothing_composed_costs_nothing(epsilon, accountant: str) -> None:
    assert epsilon([], DELTA, accountant) == 0.0
    assert epsilon([Mechanism(1.0, 0.01, 0)], DELTA, accountant) == 0.0


def test_opacus_rdp_matches_known_value_and_dp_accounting() -> None:
    history = [Mechanism(1.1, 0.01, 1000)]
    opacus_epsilon = epsilon_opacus(history, DELTA)
    independent = epsilon_independent(history, DELTA)
    assert opacus_epsilon == pytest.approx(1.7118, rel=1e-3)
    assert independent == pytest.approx(opacus_epsilon, rel=0.01)


def test_mixed_history_agrees_between_libraries() -> None:
    opacus_epsilon = epsilon_opacus(MIXED, DELTA)
    assert opacus_epsilon == pytest.approx(epsilon_independent(MIXED, DELTA), rel=0.01)
    # composition costs more than its most expensive part
    assert opacus_epsilon > epsilon_opacus(MIXED[:1], DELTA) > 0


def test_prv_is_tighter_than_rdp_and_matches_pld() -> None:
    history = [Mechanism(1.1, 0.01, 1000)]
    prv = epsilon_opacus(history, DELTA, "prv")
    assert prv < epsilon_opacus(history, DELTA, "rdp")
    assert prv == pytest.approx(epsilon_independent(history, DELTA, "prv"), rel=0.02)


def test_identical_mechanisms_merge_into_one_term() -> None:
    per_round = Mechanism(1.2, 0.02, 50)
    assert merged_history([per_round, Mechanism(1.0, 0.5, 0), per_round]) == [(1.2, 0.02, 100)]
    assert epsilon_opacus([per_round] * 4, DELTA) == pytest.approx(
        epsilon_opacus([Mechanism(1.2, 0.02, 200)], DELTA), rel=1e-12
    )


def test_more_steps_or_less_noise_cost_more() -> None:
    base = epsilon_opacus([Mechanism(1.0, 0.01, 100)], DELTA)
    assert epsilon_opacus([Mechanism(1.0, 0.01, 200)], DELTA) > base
    assert epsilon_opacus([Mechanism(0.8, 0.01, 100)], DELTA) > base


def test_unknown_accountant_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown accountant 'gdp'"):
        epsilon_opacus(MIXED, DELTA, "gdp")
    with pytest.raises(ValueError, match="unknown accountant"):
        epsilon_independent(MIXED, DELTA, "moments")
