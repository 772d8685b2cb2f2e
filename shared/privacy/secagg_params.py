"""SecAgg+ parameters that cannot lose data silently, derived from the model's weight bound, the largest
site's number of examples and the number of sites.

What Flower's SecAgg+ (1.41) does to a site's update w with weight n (num_examples):
  ratio = n / max_weight, q = round(ratio x Q) (Q = quantization_range), w' = (q / Q) x w
  w' is clipped to [-clipping_range, clipping_range]   <- silently, no warning
  stochastic rounding of (w' + clipping_range) x Q / (2 clipping_range) to an integer in [0, Q], plus q
  the center sums these integers over the sites modulo modulus_range  <- wraps silently on overflow
So: max_weight >= the largest n keeps ratio <= 1, clipping_range >= the weight bound then clips nothing,
and sites x Q < modulus_range keeps every sum (values and the q's) below the modulus. Flower rounds to
int32, so Q <= 2**31 - 1, and it documents modulus_range <= 2**32. The quantisation step is
2 x clipping_range / Q; the aggregate's error per value is below sites x step x max_weight / (sum of n).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.config_schema import RunConfig
from shared.errors import InputError

SECAGG_STRATEGIES = ("fedavg", "fedprox")  # aggregations that are a weighted mean of the updates
LARGEST_QUANTIZATION_RANGE = 2**31 - 1  # Flower's stochastic rounding casts to int32
LARGEST_MODULUS_RANGE = 2**32


@dataclass(frozen=True)
class SecAggParameters:
    num_sites: int
    num_shares: int
    reconstruction_threshold: int
    weight_bound: float
    max_num_examples: int
    clipping_range: float
    max_weight: float
    quantization_range: int
    modulus_range: int

    @property
    def quantization_step(self) -> float:
        return 2 * self.clipping_range / self.quantization_range

    def workflow_kwargs(self) -> dict[str, Any]:
        """Arguments of flwr.server.workflow.SecAggPlusWorkflow (an int num_shares must be > 2 there)."""
        return {
            "num_shares": self.num_shares,
            "reconstruction_threshold": self.reconstruction_threshold,
            "max_weight": self.max_weight,
            "clipping_range": self.clipping_range,
            "quantization_range": self.quantization_range,
            "modulus_range": self.modulus_range,
        }

    def update_problem(self, arrays: Iterable[np.ndarray], num_examples: int) -> str | None:
        """Why SecAgg+ would clip this update (None when every value passes unchanged)."""
        if num_examples > self.max_weight:
            return (f"num_examples {num_examples} > max_weight {self.max_weight:g} "
                    "(secure_aggregation.max_num_examples): the weighted update would be clipped")
        scale = round(num_examples / self.max_weight * self.quantization_range) / self.quantization_range
        peak = max((float(np.max(np.abs(a))) for a in arrays if np.size(a)), default=0.0)
        if not np.isfinite(peak):
            return "the update holds a non-finite value"
        if peak * scale > self.clipping_range:
            return (f"largest |weight| {peak:.4g} x weight {scale:.4g} exceeds clipping_range {self.clipping_range:g} "
                    f"(secure_aggregation.weight_bound {self.weight_bound:g}): it would be clipped")
        return None


def aggregate_problem(params: SecAggParameters, total_weight: int, values: Iterable[np.ndarray],
                      num_examples: list[int]) -> str | None:
    """Why an unmasked SecAgg+ sum (Flower's integer vector before dequantisation: the total quantised weight
    and the summed values) breaks the bounds the parameters imply, or None.

    With every mask cancelled the total weight is exactly the sum of round(n / max_weight x Q) over the sites'
    reported num_examples n, and every summed value lies in [0, sites x Q]: masks that did not cancel (a site on
    another mask expansion, a tampered vector) leave uniform noise modulo modulus_range instead."""
    if any(n > params.max_weight or n < 0 for n in num_examples):
        return f"a site reported num_examples outside [0, max_weight {params.max_weight:g}]: {sorted(num_examples)}"
    expected = sum(round(n / params.max_weight * params.quantization_range) for n in num_examples)
    if int(total_weight) != expected:
        return (f"total quantised weight {int(total_weight)}, but the {len(num_examples)} sites' num_examples imply "
                f"{expected}: the masks did not cancel (mixed mask versions or a tampered vector)")
    ceiling = len(num_examples) * params.quantization_range
    peak = max((int(np.max(v)) for v in values if np.size(v)), default=0)
    if peak > ceiling:
        return (f"a summed value {peak} exceeds {len(num_examples)} sites x quantization_range = {ceiling}: the masks "
                "did not cancel (mixed mask versions or a tampered vector)")
    return None


def derive_secagg_parameters(cfg: RunConfig) -> SecAggParameters:
    """The protocol parameters for `cfg`, or InputError naming the field that makes them unsafe."""
    s, src = cfg.secure_aggregation, cfg.source
    where = "secure_aggregation"

    def need(ok: bool, field: str, problem: str) -> None:
        if not ok:
            raise InputError(src, field, problem)

    sites = len(cfg.data.sites)
    need(sites >= 3, f"{where}.enabled", f"needs at least 3 sites (got {sites}): a sum of two reveals each to the other")
    need(cfg.strategy.name in SECAGG_STRATEGIES, "strategy.name",
         f"secure aggregation computes a weighted mean only; use one of {', '.join(SECAGG_STRATEGIES)}")
    need(not cfg.privacy.site_level_dp.enabled, "privacy.site_level_dp.enabled",
         "cannot be combined with secure_aggregation yet: server-side clipping needs each site's update in clear")
    shares = s.num_shares if s.num_shares is not None else sites
    need(3 <= shares <= sites, f"{where}.num_shares", f"must be in [3, {sites}] (the number of sites), got {shares}")
    need(shares == sites or shares % 2 == 1, f"{where}.num_shares",
         f"must be odd when below the number of sites (Flower widens an even neighbourhood past it), got {shares}")
    threshold = s.reconstruction_threshold if s.reconstruction_threshold is not None else shares // 2 + 1
    need(2 * threshold > shares and threshold < shares, f"{where}.reconstruction_threshold",
         f"must be a majority of num_shares {shares} and below it (so inconsistent drop lists cannot reach it), "
         f"got {threshold}")
    need(s.weight_bound > 0, f"{where}.weight_bound", f"must be > 0, got {s.weight_bound}")
    need(s.max_num_examples is not None, f"{where}.max_num_examples",
         "required with secure aggregation: the largest number of training examples any site has")
    assert s.max_num_examples is not None
    need(s.max_num_examples >= 1, f"{where}.max_num_examples", f"must be >= 1, got {s.max_num_examples}")
    modulus = s.modulus_range
    need(modulus >= 2**8 and modulus & (modulus - 1) == 0 and modulus <= LARGEST_MODULUS_RANGE, f"{where}.modulus_range",
         f"must be a power of two in [2**8, 2**32], got {modulus}")
    clipping = s.clipping_range if s.clipping_range is not None else s.weight_bound
    need(clipping >= s.weight_bound, f"{where}.clipping_range",
         f"{clipping:g} < weight_bound {s.weight_bound:g}: weights up to the bound would be clipped silently")
    max_weight = s.max_weight if s.max_weight is not None else float(s.max_num_examples)
    need(max_weight >= s.max_num_examples, f"{where}.max_weight",
         f"{max_weight:g} < max_num_examples {s.max_num_examples}: the largest site's update would be clipped silently")
    quantization = s.quantization_range
    if quantization is None:
        quantization = min(LARGEST_QUANTIZATION_RANGE, (modulus - 1) // sites)
    need(quantization >= 2, f"{where}.quantization_range", f"must be >= 2, got {quantization}")
    need(quantization <= LARGEST_QUANTIZATION_RANGE, f"{where}.quantization_range",
         f"must be <= 2**31 - 1 (Flower rounds to int32), got {quantization}")
    need(sites * quantization < modulus, f"{where}.quantization_range",
         f"{sites} sites x {quantization} >= modulus_range {modulus}: the sum would overflow and wrap silently")
    need(s.timeout_s is None or s.timeout_s > 0, f"{where}.timeout_s", "must be > 0")
    return SecAggParameters(
        num_sites=sites, num_shares=shares, reconstruction_threshold=threshold, weight_bound=s.weight_bound,
        max_num_examples=s.max_num_examples, clipping_range=float(clipping), max_weight=float(max_weight),
        quantization_range=int(quantization), modulus_range=int(modulus),
    )
