"""The fixed vocabulary of reasons a site may send to the center.

A reply's `site.reason` (and a SecAgg+ decline's error reason) is one of these codes, never free
text: messages, paths and cell values stay in the site's local security log (`detail`).
"""

from __future__ import annotations

REASON_CODES: frozenset[str] = frozenset({
    "",                        # no reason (a trained or evaluated reply)
    "data_error",              # the site's data could not be loaded or is invalid
    "no_training_data",        # the site has no training rows
    "no_validation_data",      # the site has no validation rows to evaluate on
    "budget_exhausted",        # the round does not fit in the site's privacy budget
    "bundle_refused",          # the run's code (app bundle) differs from what the site approved
    "no_policy",               # deployment without a site policy: nothing is approved
    "not_approved",            # the run (config, code or roster) is not approved by the site policy
    "policy_refused",          # the run breaks the site policy's privacy floor or limits
    "delta_refused",           # the run's delta is above the site's
    "phase_refused",           # a phase the run does not have
    "round_conflict",          # a round already answered from another global model
    "secagg_refused",          # a SecAgg+ request broke the protocol guard
    "roster_refused",          # a peer is not on the roster or its signed keys do not verify
    "version_mismatch",        # a peer runs another SecAgg+ mask or protocol version
    "update_would_clip",       # SecAgg+ parameters would clip or wrap this update
    "outgoing_refused",        # the reply broke the outgoing whitelist
    "internal_error",          # anything else (details in the site's log)
})


def is_reason_code(value: str) -> bool:
    return value in REASON_CODES


def as_reason_code(value: object) -> str:
    """What the center may store of a reason a site sent: the code itself, or `internal_error` for
    anything outside the vocabulary (free text from a site is never kept)."""
    return value if isinstance(value, str) and value in REASON_CODES else "internal_error"
