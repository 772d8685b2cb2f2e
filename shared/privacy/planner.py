"""Plan the noise multiplier that spends a site's remaining budget exactly over a run, and check a round fits.

The noise multiplier is planned once per run from the whole run's steps (DESIGN: the budget is met,
not blown, at the last round), on top of the site's lifetime history (`prior`) from its ledger.
Epsilon here is the larger of the Opacus and the independent (dp-accounting) value: whichever
accountant an auditor uses, the site stays within its target.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from shared.privacy.accountant import Mechanism, epsilon_both

# The search stops once epsilon is within this fraction below the target (the guarantee is 0.9 x target).
_PLAN_RELATIVE_TOLERANCE = 0.005
_MAX_BISECTIONS = 100


class BudgetTooSmall(Exception):
    """The requested run cannot be done within the privacy budget, whatever the noise."""


def _epsilon_quietly(mechanisms: list[Mechanism], delta: float, accountant: str) -> float:
    # At large noise Opacus warns that the best RDP order is its largest one; the bound is still valid.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        epsilon = epsilon_both(mechanisms, delta, accountant)
    return math.inf if math.isnan(epsilon) else epsilon


def plan_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: Sequence[Mechanism] = (),
    accountant: str = "rdp",
    max_noise_multiplier: float = 20.0,
) -> float:
    """Smallest noise multiplier such that epsilon(prior + [Mechanism(nm, sample_rate, steps)]) <= target.

    The returned multiplier reaches an epsilon in [0.995 x target, target] (bisection; epsilon falls
    monotonically with the noise). Raises BudgetTooSmall when the prior already spends the target or
    when even `max_noise_multiplier` would overshoot it.
    """
    prior = list(prior)
    spent = _epsilon_quietly(prior, delta, accountant)
    if spent >= target_epsilon:
        raise BudgetTooSmall(
            f"the site has already spent epsilon {spent:.4g} of its target {target_epsilon:.4g} "
            f"(delta {delta:g}, {accountant}); no further training fits"
        )

    def epsilon_with(noise_multiplier: float) -> float:
        return _epsilon_quietly(prior + [Mechanism(noise_multiplier, sample_rate, steps)], delta, accountant)

    high, epsilon_high = max_noise_multiplier, epsilon_with(max_noise_multiplier)
    if epsilon_high > target_epsilon:
        raise BudgetTooSmall(
            f"{steps} steps at sample rate {sample_rate:g} reach epsilon {epsilon_high:.4g} even at the "
            f"largest noise multiplier {max_noise_multiplier:g}, above the target {target_epsilon:.4g} "
            f"(already spent {spent:.4g}); train fewer rounds/epochs, use a smaller batch, or raise the budget"
        )
    low = 0.0  # epsilon is infinite without noise
    for _ in range(_MAX_BISECTIONS):
        if epsilon_high >= (1.0 - _PLAN_RELATIVE_TOLERANCE) * target_epsilon:
            break
        middle = 0.5 * (low + high)
        epsilon_middle = epsilon_with(middle)
        if epsilon_middle <= target_epsilon:
            high, epsilon_high = middle, epsilon_middle
        else:
            low = middle
    return high


def fits_budget(
    prior: Sequence[Mechanism],
    next_round: Mechanism,
    delta: float,
    limit_epsilon: float,
    accountant: str = "rdp",
) -> tuple[bool, float]:
    """(whether composing `next_round` after `prior` keeps epsilon <= limit, the epsilon it would reach)."""
    epsilon = _epsilon_quietly(list(prior) + [next_round], delta, accountant)
    return epsilon <= limit_epsilon + 1e-9, epsilon
