"""Epsilon of a history of Poisson-subsampled Gaussian mechanisms, by two independent libraries.

`epsilon_opacus` is what the site uses while training (the same accountant Opacus steps);
`epsilon_independent` is Google's dp-accounting, used by the audit to recompute what a ledger claims.
Both libraries are imported inside the functions: Opacus pulls in torch, and the audit CLI and
Flower's per-message subprocesses should not pay for what they do not call.

Accounting runs every round at every site (budget check, then the epsilon the ledger records), so it is
cached, exactly: RDP is additive, and each library's RDP of a history is the sum over its (sigma, q) pairs of
steps x the per-step RDP vector. That vector is computed once per pair and process (`_unit_rdp_*`), and the
sum and the conversion to epsilon repeat the libraries' own operations in their order, so a cached epsilon
is bit-for-bit the library's (tests/shared/test_accountant_cache.py). Whole results are memoised per merged
history too (the check before a round and the ledger entry after it ask the same question). A site also
keeps the per-step vectors in its state folder (`use_disk_cache`): a deployment answers each message in a
fresh process. PRV/PLD accounting is only memoised per history.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared import timings
from shared.io import write_bytes

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


_disk_cache: Path | None = None


def use_disk_cache(folder: Path | None) -> None:
    """Keep the per-step RDP vectors in `folder` too (a site's state folder), so that a fresh process (a
    deployment answers each message in one) reads them instead of evaluating every order again. The values
    round-trip exactly (.npy float64); a file that does not load is computed again."""
    global _disk_cache
    _disk_cache = None if folder is None else Path(folder)


def _from_disk(library: str, noise_multiplier: float, sample_rate: float, compute: Callable[[], Any]) -> Any:
    folder = _disk_cache
    if folder is None:
        rdp = np.asarray(compute(), dtype=np.float64)
    else:
        from importlib.metadata import version

        package = {"opacus": "opacus", "independent": "dp-accounting"}[library]
        path = folder / f"{library}-{version(package)}-{noise_multiplier!r}-{sample_rate!r}.npy"
        try:
            rdp = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            rdp = np.asarray(compute(), dtype=np.float64)
            with contextlib.suppress(OSError):
                buffer = io.BytesIO()
                np.save(buffer, rdp, allow_pickle=False)
                write_bytes(path, buffer.getvalue(), 0o600)
    rdp.setflags(write=False)
    return rdp


@functools.lru_cache(maxsize=1024)
def _unit_rdp_opacus(noise_multiplier: float, sample_rate: float) -> Any:
    """Opacus's RDP of one step at its default orders (read-only; cached per pair and process)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as privacy_analysis

    return _from_disk("opacus", noise_multiplier, sample_rate, lambda: privacy_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS))


@functools.lru_cache(maxsize=1024)
def _unit_rdp_independent(noise_multiplier: float, sample_rate: float) -> Any:
    """dp-accounting's RDP of one Poisson-subsampled Gaussian step at its default orders (read-only)."""
    from dp_accounting.rdp import rdp_privacy_accountant as rdp_module

    return _from_disk("independent", noise_multiplier, sample_rate, lambda: rdp_module._compute_rdp_poisson_subsampled_gaussian(
        q=sample_rate, noise_multiplier=noise_multiplier, orders=np.array(rdp_module.DEFAULT_RDP_ORDERS)))


def epsilon_opacus(mechanisms: list[Mechanism], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of the composed mechanisms by Opacus's RDP or PRV accountant (0.0 if none)."""
    _check_accountant(accountant)
    history = merged_history(mechanisms)
    if not history:
        return 0.0
    with timings.part("accounting"):
        return _epsilon_opacus(tuple(history), float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon_opacus(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    from opacus.accountants import PRVAccountant, RDPAccountant

    if accountant == "rdp":
        from opacus.accountants.analysis import rdp as privacy_analysis

        # RDPAccountant.get_privacy_spent: sum([compute_rdp(...) for each]) then get_privacy_spent, unchanged
        rdp = sum([_unit_rdp_opacus(nm, q) * steps for nm, q, steps in history])
        eps, _ = privacy_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(eps)
    opacus_accountant = PRVAccountant()
    opacus_accountant.history = list(history)
    return float(opacus_accountant.get_epsilon(delta=delta))


def epsilon_independent(mechanisms: list[Mechanism], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` by Google's dp-accounting: its RDP accountant for "rdp", its PLD accountant
    (numerical composition, the counterpart of Opacus's PRV) for "prv". 0.0 if nothing was composed."""
    _check_accountant(accountant)
    history = merged_history(mechanisms)
    if not history:
        return 0.0
    with timings.part("accounting"):
        return _epsilon_independent(tuple(history), float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon_independent(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    import dp_accounting
    from absl import logging as absl_logging

    # dp-accounting warns (via absl) for every fractional RDP order < 2 it cannot evaluate at
    # large sampling rates and then skips that order; the warning floods the console.
    absl_logging.set_verbosity(absl_logging.ERROR)
    if accountant == "rdp":
        from dp_accounting.rdp import rdp_privacy_accountant as rdp_module

        # RdpAccountant: _rdp = zeros; _rdp += count * per-step rdp for each event; compute_epsilon(...)[0]
        orders = np.array(rdp_module.DEFAULT_RDP_ORDERS)
        rdp = np.zeros_like(orders, dtype=np.float64)
        for nm, q, steps in history:
            rdp += steps * _unit_rdp_independent(nm, q)
        return float(rdp_module.compute_epsilon(orders, rdp, delta)[0])
    event = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(nm)), steps
            )
            for nm, q, steps in history
        ]
    )
    dp_accountant = dp_accounting.pld.PLDAccountant()
    dp_accountant.compose(event)
    return float(dp_accountant.get_epsilon(delta))


def epsilon_both(mechanisms: list[Mechanism], delta: float, accountant: str = "rdp") -> float:
    """The larger of the Opacus and the independent epsilon. Budgets are planned and checked with it, so
    the audit's recomputation can never find a site above its target (at large sampling rates the two
    RDP implementations differ by up to ~1 %, in either direction)."""
    return max(epsilon_opacus(mechanisms, delta, accountant), epsilon_independent(mechanisms, delta, accountant))
