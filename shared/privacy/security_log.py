"""The site's security log: every message received, every reply sent, every refusal and approval.

One JSON line per event, chained and signed exactly like the privacy ledger (shared/privacy/ledger.py):
`prev_hash` is the SHA-256 of the previous line's text ("0" * 64 first), `signature` is Ed25519 over the
canonical JSON of the entry without its signature. A line is

    {"version": 1, "site": ..., "seq": n, "time": ISO-8601, "event": {...}, "prev_hash": ..., ["key_fingerprint", "signature"]}

`event` holds only descriptions (record names, keys, shapes, byte sizes, config values), never array values.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.privacy.keys import load_private_key
from shared.privacy.ledger import GENESIS_HASH, append_chained_entry, line_hash, read_ledger_lines

SECURITY_LOG_FILE = "security_log.jsonl"
SECURITY_LOG_VERSION = 1
SECURITY_LOG_FIELDS = ("version", "site", "seq", "time", "event", "prev_hash")


class SecurityLog:
    """One site's security log file. Signed when given the site's private key."""

    def __init__(self, path: Path, site: str, signing_key: Ed25519PrivateKey | None = None) -> None:
        self.path = Path(path)
        self.site = site
        self.signing_key = signing_key

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in read_ledger_lines(self.path)]

    def events(self) -> list[dict]:
        return [entry["event"] for entry in self.entries()]

    def append(self, event: dict) -> dict:
        """Append one event (a JSON-serialisable dict with a "kind"), chained and signed; return the entry."""
        if not isinstance(event.get("kind"), str):
            raise ValueError("a security event needs a text 'kind'")
        lines = read_ledger_lines(self.path)
        entry: dict[str, Any] = {
            "version": SECURITY_LOG_VERSION,
            "site": self.site,
            "seq": len(lines) + 1,
            "time": datetime.now(UTC).isoformat(),
            "event": json.loads(json.dumps(event, default=str)),
            "prev_hash": line_hash(lines[-1]) if lines else GENESIS_HASH,
        }
        return append_chained_entry(self.path, lines, entry, self.signing_key)


def log_security_event(state_dir: Path, event: dict) -> None:
    """Append `event` to state_dir/security_log.jsonl. The site is event["site"] or the folder's name;
    lines are signed with state_dir/keys/<site>.key when that key exists."""
    state_dir = Path(state_dir)
    site = str(event.get("site", state_dir.name))
    key_path = state_dir / "keys" / f"{site}.key"
    key = load_private_key(key_path) if key_path.is_file() else None
    SecurityLog(state_dir / SECURITY_LOG_FILE, site, key).append({"kind": "note", **event})
