"""The statement a site signs at SecAgg+ setup (shared/privacy/secagg_auth.py), apart so that the outgoing
whitelist can check its form without importing the SecAgg+ machinery."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from shared.privacy.ledger import canonical_json


@dataclass(frozen=True)
class KeyStatement:
    """What a site signs at setup: its SecAgg+ keys bound to the run, round, node, site and versions."""

    protocol: str
    mask: str
    run_id: int
    round: str
    node_id: int
    site: str
    pk1: str  # SHA-256 hex of the public key bytes
    pk2: str

    def to_bytes(self) -> bytes:
        return canonical_json(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyStatement:
        """The statement in `data`, or ValueError (exact fields, exact types, canonical form)."""
        raw = json.loads(bytes(data).decode())
        names = {f.name: f.type for f in fields(cls)}
        if not isinstance(raw, dict) or set(raw) != set(names):
            raise ValueError(f"a key statement has exactly the fields {', '.join(names)}")
        for name, kind in names.items():
            expected = int if kind == "int" else str
            if type(raw[name]) is not expected:
                raise ValueError(f"key statement field {name!r} must be {expected.__name__}")
        statement = cls(**raw)
        if statement.to_bytes() != bytes(data):
            raise ValueError("key statement is not in canonical form")
        return statement

    def version(self) -> str:
        return f"masks {self.mask!r}, protocol {self.protocol!r}"
