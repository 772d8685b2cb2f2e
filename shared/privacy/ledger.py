"""The site's privacy ledger: one JSON line per round, hash-chained and Ed25519-signed, kept across runs.

Each line is the canonical JSON of one entry. `prev_hash` is the SHA-256 of the previous line's text
("0" * 64 on the first line), so changing, deleting or reordering a line breaks the chain; `signature`
signs the canonical JSON of the entry without its signature, so only the site's key can write a line.
The cumulative epsilon on each line covers every trained entry of the file (the site's lifetime); it is
null (unbounded) once a round was trained without DP (status "no_dp").

One budget, one writer: `SiteLedger.lock()` holds an exclusive flock on a lock file beside the ledger;
the site holds it across check -> train -> append, so two runs at one site cannot both pass the check.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.errors import InputError
from shared.io import write_text
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.keys import public_key_fingerprint

LEDGER_FILE = "privacy_ledger.jsonl"  # in the site's state folder
LEDGER_VERSION = 1
GENESIS_HASH = "0" * 64
TRAINED = "trained"
BUDGET_EXHAUSTED = "budget_exhausted"
REFUSED = "refused"
NO_DP = "no_dp"  # trained without DP (privacy.enabled false or target .inf): epsilon is unbounded from here on
# a marker after a round's trained entry: the site trained (the budget is spent, the trained entry counts it)
# but its update went into no aggregate (a SecAgg+ round that failed after training); no mechanism of its own
NO_AGGREGATE = "no_aggregate"
LEDGER_STATUSES = (TRAINED, BUDGET_EXHAUSTED, REFUSED, NO_DP, NO_AGGREGATE)
MECHANISM_FIELDS = ("noise_multiplier", "sample_rate", "steps")
COUNT_PHASE = "count"  # extra.phase of the entry recording the run's noisy training count (the FedAvg weight a site sends)


def canonical_json(value: Any) -> str:
    """The one JSON text of a value that is hashed and signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def line_hash(line: str) -> str:
    """SHA-256 hex of one ledger line's text (what the next line's prev_hash holds)."""
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def signed_payload(entry: dict) -> bytes:
    """The bytes an entry's signature covers: its canonical JSON without the signature field."""
    return canonical_json({k: v for k, v in entry.items() if k != "signature"}).encode("utf-8")


def recorded_epsilon(entry: dict) -> float:
    """An entry's cumulative epsilon; null is unbounded (inf): the history holds a round without DP."""
    value = entry.get("cumulative_epsilon")
    return math.inf if value is None else float(value)


def mechanism_from_entry(entry: dict) -> Mechanism | None:
    """The entry's mechanism, or None where it records none. Raises ValueError when it is malformed."""
    recorded = entry.get("mechanism")
    if recorded is None:
        return None
    if not isinstance(recorded, dict) or set(recorded) != set(MECHANISM_FIELDS):
        raise ValueError(f"mechanism must have exactly the fields {', '.join(MECHANISM_FIELDS)}")
    noise_multiplier, sample_rate, steps = (recorded[field] for field in MECHANISM_FIELDS)
    numbers_ok = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in (noise_multiplier, sample_rate)
    )
    if not numbers_ok or not isinstance(steps, int) or isinstance(steps, bool):
        raise ValueError("mechanism noise_multiplier/sample_rate must be numbers and steps an integer")
    if noise_multiplier < 0 or not 0 <= sample_rate <= 1 or steps < 0:
        raise ValueError("mechanism needs noise_multiplier >= 0, 0 <= sample_rate <= 1, steps >= 0")
    return Mechanism(float(noise_multiplier), float(sample_rate), steps)


def read_ledger_lines(path: Path) -> list[str]:
    """The ledger's lines without their newlines ([] for a missing file)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


class SiteLedger:
    """One site's ledger file. Signed when given the site's private key; unsigned lines omit
    `key_fingerprint` and `signature`."""

    def __init__(self, path: Path, site: str, signing_key: Ed25519PrivateKey | None = None) -> None:
        self.path = Path(path)
        self.site = site
        self.signing_key = signing_key
        self._lock_guard = threading.RLock()
        self._lock_depth = 0
        self._lock_fd: int | None = None

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".lock")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on this site's budget (fcntl.flock on the lock file beside the ledger), re-entrant
        within this object; other processes and other SiteLedger objects (threads) wait for it."""
        with self._lock_guard:
            if self._lock_depth == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def head(self) -> str:
        """SHA-256 of the last line (GENESIS_HASH for an empty ledger): what the site sends the center."""
        lines = read_ledger_lines(self.path)
        return line_hash(lines[-1]) if lines else GENESIS_HASH

    def dp_off(self) -> bool:
        """Whether any round at this site was trained without DP (its lifetime epsilon is unbounded)."""
        return any(entry.get("status") == NO_DP for entry in self.entries())

    def entries(self) -> list[dict]:
        """All entries, in file order. Raises InputError naming the line when one is not a JSON object."""
        entries = []
        for number, line in enumerate(read_ledger_lines(self.path), start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(self.path, f"line {number}", f"not valid JSON ({error.msg})") from None
            if not isinstance(entry, dict):
                raise InputError(self.path, f"line {number}", "not a JSON object")
            entries.append(entry)
        return entries

    def mechanisms(self) -> list[Mechanism]:
        """The mechanisms of all trained entries: the site's lifetime history, across runs."""
        history = []
        for number, entry in enumerate(self.entries(), start=1):
            if entry.get("status") != TRAINED:
                continue
            try:
                mechanism = mechanism_from_entry(entry)
            except ValueError as error:
                raise InputError(self.path, f"line {number}", str(error)) from None
            if mechanism is None:
                raise InputError(self.path, f"line {number}", "trained entry without a mechanism")
            history.append(mechanism)
        return history

    def spent_epsilon(self, accountant: str = "rdp") -> float:
        """Lifetime epsilon spent: the last entry's cumulative epsilon (0.0 for an empty ledger).

        If the last entry was accounted with another accountant, the history is recomputed with this one
        at the last entry's delta.
        """
        entries = self.entries()
        if not entries:
            return 0.0
        last = entries[-1]
        if any(entry.get("status") == NO_DP for entry in entries):
            return math.inf
        if last.get("accountant") == accountant:
            return recorded_epsilon(last)
        return epsilon_opacus(self.mechanisms(), float(last["delta"]), accountant)

    def append(
        self,
        run_id: str,
        round: int,
        status: str,
        mechanism: Mechanism | None,
        delta: float,
        max_grad_norm: float,
        accountant: str,
        cumulative_epsilon: float,
        lifetime_epsilon: float,
        extra: dict | None = None,
    ) -> dict:
        """Append one round's entry (chained to the last line, signed if there is a key) and return it."""
        if status not in LEDGER_STATUSES:
            raise ValueError(f"ledger status must be one of {LEDGER_STATUSES}, got {status!r}")
        if status == TRAINED and mechanism is None:
            raise ValueError("a trained round must record its mechanism")
        extra = dict(extra or {})
        for key, value in extra.items():
            if not isinstance(value, (str, int, float, bool)) and value is not None:
                raise ValueError(f"ledger extra {key!r} must be a scalar, got {type(value).__name__}")

        lines = read_ledger_lines(self.path)
        for number, previous in enumerate(self.entries(), start=1):
            if previous.get("site") != self.site:
                raise InputError(
                    self.path,
                    f"line {number}",
                    f"belongs to site {previous.get('site')!r}, not {self.site!r}",
                )
        entry: dict[str, Any] = {
            "version": LEDGER_VERSION,
            "site": self.site,
            "run_id": str(run_id),
            "round": int(round),
            "time": datetime.now(UTC).isoformat(),
            "status": status,
            "mechanism": None
            if mechanism is None
            else {
                "noise_multiplier": float(mechanism.noise_multiplier),
                "sample_rate": float(mechanism.sample_rate),
                "steps": int(mechanism.steps),
            },
            "delta": float(delta),
            "max_grad_norm": float(max_grad_norm),
            "accountant": accountant,
            "cumulative_epsilon": float(cumulative_epsilon) if math.isfinite(cumulative_epsilon) else None,
            "lifetime_epsilon": float(lifetime_epsilon) if math.isfinite(lifetime_epsilon) else None,  # null: none
            "extra": extra,
            "prev_hash": line_hash(lines[-1]) if lines else GENESIS_HASH,
        }
        return append_chained_entry(self.path, lines, entry, self.signing_key)


def append_chained_entry(path: Path, lines: list[str], entry: dict[str, Any], signing_key: Ed25519PrivateKey | None) -> dict:
    """Sign `entry` (which already holds `prev_hash`) when a key is given, and rewrite `path` atomically
    as `lines` plus the entry: the one append of the ledger and of the security log."""
    if signing_key is not None:
        entry["key_fingerprint"] = public_key_fingerprint(signing_key.public_key())
        entry["signature"] = signing_key.sign(signed_payload(entry)).hex()
    text = "".join(f"{line}\n" for line in lines + [canonical_json(entry)])
    write_text(path, text)
    return entry
