import pytest

from shared.privacy.accountant import Mechanism, epsilon_both, epsilon_independent, epsilon_opacus
from shared.privacy.planner import BudgetTooSmall, fits_budget, plan_noise_multiplier

DELTA = 1e-5


@pytest.mark.parametrize(
    ("target", "sample_rate", "steps"),
    [(1.0, 0.01, 1000), (3.0, 0.02, 500), (8.0, 0.05, 200), (8.0, 0.004, 5000), (0.5, 0.001, 100)],
)
def test_plan_spends_the_target_without_exceeding_it(target: float, sample_rate: float, steps: int) -> None:
    noise = plan_noise_multiplier(target, DELTA, sample_rate, steps)
    spent = epsilon_opacus([Mechanism(noise, sample_rate, steps)], DELTA)
    assert 0.9 * target <= spent <= target
    # a little less noise would overshoot: the multiplier is (near) the smallest that fits
    assert epsilon_opacus([Mechanism(noise * 0.97, sample_rate, steps)], DELTA) > target


def test_plan_accounts_for_the_lifetime_prior() -> None:
    prior = [Mechanism(1.0, 0.01, 500), Mechanism(1.5, 0.02, 100)]
    spent_before = epsilon_opacus(prior, DELTA)
    assert 0 < spent_before < 3.0
    noise = plan_noise_multiplier(3.0, DELTA, 0.02, 300, prior=prior)
    total = epsilon_opacus(prior + [Mechanism(noise, 0.02, 300)], DELTA)
    assert 0.9 * 3.0 <= total <= 3.0
    assert noise > plan_noise_multiplier(3.0, DELTA, 0.02, 300)


def test_plan_with_prv_accountant() -> None:
    noise = plan_noise_multiplier(3.0, DELTA, 0.01, 200, accountant="prv")
    spent = epsilon_opacus([Mechanism(noise, 0.01, 200)], DELTA, "prv")
    assert 0.9 * 3.0 <= spent <= 3.0
    # PRV is tighter, so it needs less noise than RDP for the same target
    assert noise < plan_noise_multiplier(3.0, DELTA, 0.01, 200, accountant="rdp")


def test_budget_too_small_even_at_max_noise() -> None:
    with pytest.raises(BudgetTooSmall, match="largest noise multiplier 2"):
        plan_noise_multiplier(0.05, DELTA, 0.5, 1000, max_noise_multiplier=2.0)


def test_budget_already_spent_by_prior() -> None:
    prior = [Mechanism(0.7, 0.05, 1000)]
    spent = epsilon_opacus(prior, DELTA)
    with pytest.raises(BudgetTooSmall, match="already spent epsilon"):
        plan_noise_multiplier(spent, DELTA, 0.01, 10, prior=prior)


def test_fits_budget_reports_the_epsilon_it_would_reach() -> None:
    prior = [Mechanism(1.0, 0.01, 500)]
    next_round = Mechanism(1.0, 0.01, 100)
    expected = epsilon_both(prior + [next_round], DELTA)
    assert fits_budget(prior, next_round, DELTA, expected + 0.01) == (True, pytest.approx(expected))
    assert fits_budget(prior, next_round, DELTA, expected) == (True, pytest.approx(expected))
    fits, reached = fits_budget(prior, next_round, DELTA, expected - 0.01)
    assert not fits and reached == pytest.approx(expected)
    assert fits_budget([], Mechanism(1.0, 0.01, 0), DELTA, 0.0) == (True, 0.0)


def test_plan_keeps_both_accountants_within_the_target_at_a_large_sampling_rate() -> None:
    """At q = 0.5 dp-accounting's RDP reads ~0.2 % above Opacus's (another set of orders): the plan must
    satisfy the stricter of the two, so an independent audit never finds the site over its budget."""
    sample_rate, steps = 0.5, 30
    from opacus.accountants.utils import get_noise_multiplier

    opacus_only = get_noise_multiplier(target_epsilon=8.0, target_delta=DELTA, sample_rate=sample_rate, steps=steps,
                                       accountant="rdp", epsilon_tolerance=0.001)
    assert epsilon_independent([Mechanism(opacus_only, sample_rate, steps)], DELTA) > 8.0  # what planning by Opacus alone gave
    noise = plan_noise_multiplier(8.0, DELTA, sample_rate, steps)
    mechanisms = [Mechanism(noise, sample_rate, steps)]
    opacus, independent = epsilon_opacus(mechanisms, DELTA), epsilon_independent(mechanisms, DELTA)
    assert max(opacus, independent) <= 8.0
    assert 0.99 * 8.0 <= max(opacus, independent)
