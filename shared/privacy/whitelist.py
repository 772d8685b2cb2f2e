"""The outgoing-message whitelist: only model arrays and a fixed set of scalar metrics leave a site.

`check_outgoing` inspects a reply's RecordDict; `outgoing_guard_mod` is the Flower client mod that runs
it on every reply and sends an error reply instead of anything it refuses. Texts a site sends are
codes, never free text: its name, a status from SITE_STATUSES and a reason from REASON_CODES; an error
reply's reason is a code too (or a SecAgg+ decline made of the same three). Paths, values and
exception messages stay in the site's local logs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from logging import ERROR
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from shared.privacy.dp_evaluation import EXACT_MARKER, RELEASE_KEYS
from shared.privacy.key_statement import KeyStatement
from shared.privacy.reason_codes import REASON_CODES

_METRICS_WITH_CI = ("auroc", "auprc", "brier", "accuracy", "macro_f1", "kappa", "c_index")
# Reliability-curve bins (shared.metrics.calibration_bins): 10 equal-width bins, each sent only
# when it holds at least 10 validation patients (the site suppresses smaller ones).
_CALIBRATION_BIN_KEYS = {f"calib_bin_{i}_{part}" for i in range(10) for part in ("observed", "predicted", "count")}
ALLOWED_METRICS: frozenset[str] = frozenset(
    {
        "num-examples",
        "val_loss",
        "auroc",
        "auprc",
        "brier",
        "ece",
        "sens_at_spec",
        "accuracy",
        "macro_f1",
        "kappa",
        "c_index",
        "epsilon",
        "delta",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "budget_exhausted",
        "refused",
        "threshold",
        EXACT_MARKER,
    }
    | {f"{metric}_ci_{bound}" for metric in _METRICS_WITH_CI for bound in ("low", "high")}
    | _CALIBRATION_BIN_KEYS
    # DP evaluation (shared/privacy/dp_evaluation.py): noisy score histograms / confusion-matrix cells. Exact
    # metrics above leave a site only where its policy allows them (`release.exact_metrics`). `train_loss` (an
    # un-noised mean over the training data) is never sent.
    | RELEASE_KEYS
)
ALLOWED_SITE_KEYS: frozenset[str] = frozenset({"name", "status", "reason", "ledger_head"})
SITE_STATUSES: frozenset[str] = frozenset({"trained", "evaluated", "budget_exhausted", "refused"})
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SITE_TEXT_LENGTH = 200
# site.ledger_head: the SHA-256 of the last line of the site's privacy ledger, exactly 64 lower-case hex
# digits; the center keeps it per round so the audit can catch a ledger replaced, truncated or re-signed later
LEDGER_HEAD_KEY = "ledger_head"
_LEDGER_HEAD = re.compile(r"[0-9a-f]{64}")
ARRAYS_RECORD, METRICS_RECORD, SITE_RECORD = "arrays", "metrics", "site"
# A SecAgg+ stage reply (Flower's legacy format): protocol values, and at the collect stage the fit
# result whose parameters Flower's mod has emptied (the update leaves only masked, in the protocol values).
SECAGG_RECORD = "secaggplus_configs"
# signed_keys: the setup reply's [key statement, Ed25519 signature] (shared/privacy/secagg_auth.py)
SIGNED_KEYS = "signed_keys"
SECAGG_REPLY_KEYS: frozenset[str] = frozenset({"pk1", "pk2", "dsts", "ctxts", "masked_params", "nids", "shares", SIGNED_KEYS})
SECAGG_SITE_KEYS: frozenset[str] = frozenset({f"site.{key}" for key in ALLOWED_SITE_KEYS})


class OutgoingMessageRefused(Exception):
    """A reply carries something outside the whitelist; it must not leave the site."""


def _check_arrays(record: ArrayRecord, expected_keys: set[str] | None) -> None:
    if expected_keys is None:
        return
    keys = set(record.keys())
    if keys != expected_keys:
        unexpected, missing = sorted(keys - expected_keys), sorted(expected_keys - keys)
        raise OutgoingMessageRefused(
            f"record {ARRAYS_RECORD!r}: array keys differ from the model received "
            f"(unexpected {unexpected}, missing {missing})"
        )


def _check_metrics(record: Mapping[str, Any]) -> None:
    for key, value in record.items():
        if key not in ALLOWED_METRICS:
            raise OutgoingMessageRefused(f"record {METRICS_RECORD!r}: metric {key!r} is not whitelisted")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OutgoingMessageRefused(
                f"record {METRICS_RECORD!r}: metric {key!r} must be a single number, not "
                f"{type(value).__name__} (a list could carry per-patient values)"
            )


def _check_site(record: Mapping[str, Any]) -> None:
    for key, value in record.items():
        if key not in ALLOWED_SITE_KEYS:
            raise OutgoingMessageRefused(f"record {SITE_RECORD!r}: key {key!r} is not whitelisted")
        if not isinstance(value, str) or len(value) > MAX_SITE_TEXT_LENGTH:
            raise OutgoingMessageRefused(
                f"record {SITE_RECORD!r}: key {key!r} must be text of at most {MAX_SITE_TEXT_LENGTH} characters"
            )
        if key == LEDGER_HEAD_KEY and not _LEDGER_HEAD.fullmatch(value):
            raise OutgoingMessageRefused(f"record {SITE_RECORD!r}: {key!r} must be 64 lower-case hex digits")
    allowed = {"name": lambda v: bool(SITE_NAME.match(v)), "status": SITE_STATUSES.__contains__,
               "reason": REASON_CODES.__contains__}
    for key, ok in allowed.items():
        if key in record and not ok(record[key]):
            # the refused text itself is not repeated: the refusal may travel where the text must not
            raise OutgoingMessageRefused(f"record {SITE_RECORD!r}: {key} is not a site name, status or reason code")


def check_error_reason(reason: str) -> None:
    """Raise OutgoingMessageRefused unless an error reply's reason is a reason code, or a SecAgg+ decline
    (shared.privacy.secagg_guard.site_decline_reason) of a site name, status and reason code."""
    if reason in REASON_CODES:
        return
    from shared.privacy.secagg_guard import parse_site_decline

    declined = parse_site_decline(reason)
    if declined is None:
        raise OutgoingMessageRefused("an error reply's reason is not a reason code")
    site, status, code = declined
    _check_site({"name": site, "status": status, "reason": code})


def check_outgoing(content: RecordDict, expected_array_keys: set[str] | None) -> None:
    """Raise OutgoingMessageRefused unless `content` holds only whitelisted records, keys and values.

    Allowed: "arrays" (ArrayRecord, with exactly `expected_array_keys` when given), "metrics"
    (MetricRecord of whitelisted single numbers), "site" (ConfigRecord of short texts under
    name/status/reason, and ledger_head as 64 hex digits). Each is optional.
    """
    checks = {
        ARRAYS_RECORD: (ArrayRecord, lambda record: _check_arrays(record, expected_array_keys)),
        METRICS_RECORD: (MetricRecord, _check_metrics),
        SITE_RECORD: (ConfigRecord, _check_site),
    }
    for name, record in content.items():
        if name not in checks:
            raise OutgoingMessageRefused(f"record {name!r} is not whitelisted")
        record_type, check = checks[name]
        if not isinstance(record, record_type):
            raise OutgoingMessageRefused(
                f"record {name!r} must be a {record_type.__name__}, not {type(record).__name__}"
            )
        check(record)


def _check_signed_keys(value: Any) -> None:
    """[a key statement in canonical form, a 64-byte signature] and nothing else."""
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, bytes) for v in value)) or len(value[1]) != 64:
        raise OutgoingMessageRefused(f"{SIGNED_KEYS!r} must be [key statement, 64-byte signature]")
    try:
        KeyStatement.from_bytes(value[0])
    except (ValueError, UnicodeDecodeError) as err:
        raise OutgoingMessageRefused(f"{SIGNED_KEYS!r}: not a key statement ({err})") from None


def check_outgoing_secagg(content: RecordDict) -> None:
    """Raise OutgoingMessageRefused unless `content` is a SecAgg+ stage reply holding only protocol values,
    an empty fit-result parameter record, the example count, a status, and whitelisted metrics/site texts."""
    for name, record in content.items():
        if name == SECAGG_RECORD and isinstance(record, ConfigRecord):
            unexpected = sorted(set(record.keys()) - SECAGG_REPLY_KEYS)
            if unexpected:
                raise OutgoingMessageRefused(f"record {name!r}: keys {unexpected} are not SecAgg+ reply values")
            if SIGNED_KEYS in record:
                _check_signed_keys(record[SIGNED_KEYS])
        elif name == "fitres.parameters" and isinstance(record, ArrayRecord):
            if len(record):
                raise OutgoingMessageRefused("a SecAgg+ reply carries model arrays in clear")
        elif name == "fitres.num_examples" and isinstance(record, MetricRecord):
            if set(record.keys()) != {"num_examples"}:
                raise OutgoingMessageRefused(f"record {name!r} may hold num_examples only")
        elif name == "fitres.status" and isinstance(record, ConfigRecord):
            if not set(record.keys()) <= {"code", "message"}:
                raise OutgoingMessageRefused(f"record {name!r} may hold code and message only")
        elif name == "fitres.metrics" and isinstance(record, ConfigRecord):
            _check_metrics({k: v for k, v in record.items() if k not in SECAGG_SITE_KEYS})
            _check_site({k.removeprefix("site."): v for k, v in record.items() if k in SECAGG_SITE_KEYS})
        else:
            raise OutgoingMessageRefused(f"record {name!r} ({type(record).__name__}) is not part of a SecAgg+ reply")


def outgoing_guard_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower client mod: pass the message on, then let the reply out only if it passes the whitelist.

    The reply's arrays must have the keys of the "arrays" record the site received (when it received one);
    an error reply's reason must be a code. A refused reply is replaced by an error reply whose reason is
    `outgoing_refused`, an exception by one whose reason is `internal_error`: the details (what was refused,
    the exception) go to the site's local log only.
    """
    received_arrays = msg.content.get(ARRAYS_RECORD) if msg.has_content() else None
    expected_keys = set(received_arrays.keys()) if isinstance(received_arrays, ArrayRecord) else None
    try:
        reply = call_next(msg, context)
    except Exception as error:  # Flower would send the exception's text to the center
        log(ERROR, "the ClientApp raised %s: %s (the center is told internal_error)", type(error).__name__, error)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="internal_error"), reply_to=msg)
    try:
        if reply.has_error():
            check_error_reason(reply.error.reason)
        elif SECAGG_RECORD in reply.content:
            check_outgoing_secagg(reply.content)
        else:
            check_outgoing(reply.content, expected_keys)
    except OutgoingMessageRefused as refusal:
        sent = f" (error reason {reply.error.reason!r})" if reply.has_error() else ""
        log(ERROR, "outgoing_guard_mod refused the reply: %s%s", refusal, sent)
        return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason="outgoing_refused"), reply_to=msg)
    return reply
