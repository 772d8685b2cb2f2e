"""Epsilon of a history of Poisson-subsampled Gaussian mechanisms, by two independent libraries.

`epsilon_opacus` is what the site uses while training (the same accountant Opacus steps);
`epsilon_independent` is Google's dp-accounting, used by the audit to recompute what a ledger claims.
Both libraries are imported inside the functions: Opacus pulls in torch, and the audit CLI and
Flower's per-message subprocesses should not pay for what they do not call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class Mechanism:
    """`steps` compositions of a Poisson-subsampled Gaussian (one DP-SGD run or round)."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def merged_history(mechanisms: Iterable[Mechanism]) -> list[tuple[float, float, int]]:
    """(noise_multiplier, sample_rate, steps) with equal (nm, q) pairs summed; zero-step ones dropped.

    Composition is commutative, so a run of identical rounds costs one accountant term, not one per round.
    """
    steps_by_pair: dict[tuple[float, float], int] = {}
    for m in mechanisms:
        if m.steps > 0:
            pair = (float(m.noise_multiplier), float(m.sample_rate))
            steps_by_pair[pair] = steps_by_pair.get(pair, 0) + int(m.steps)
    return [(nm, q, steps) for (nm, q), steps in steps_by_pair.items()]


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; expected one of {', '.join(ACCOUNTANTS)}")


def epsilon_opacus(mechanisms: list[Mechanism], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of the composed mechanisms by Opacus's RDP or PRV accountant (0.0 if none)."""
    _check_accountant(accountant)
    history = merged_history(mechanisms)
    if not history:
        return 0.0
    from opacus.accountants import PRVAccountant, RDPAccountant

    opacus_accountant = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    opacus_accountant.history = history
    return float(opacus_accountant.get_epsilon(delta=delta))


def epsilon_independent(mechanisms: list[Mechanism], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` by Google's dp-accounting: its RDP accountant for "rdp", its PLD accountant
    (numerical composition, the counterpart of Opacus's PRV) for "prv". 0.0 if nothing was composed."""
    _check_accountant(accountant)
    history = merged_history(mechanisms)
    if not history:
        return 0.0
    import dp_accounting
    from absl import logging as absl_logging

    # dp-accounting warns (via absl) for every fractional RDP order < 2 it cannot evaluate at
    # large sampling rates and then skips that order; the warning floods the console.
    absl_logging.set_verbosity(absl_logging.ERROR)
    event = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(nm)), steps
            )
            for nm, q, steps in history
        ]
    )
    if accountant == "rdp":
        dp_accountant = dp_accounting.rdp.RdpAccountant()
    else:
        dp_accountant = dp_accounting.pld.PLDAccountant()
    dp_accountant.compose(event)
    return float(dp_accountant.get_epsilon(delta))
