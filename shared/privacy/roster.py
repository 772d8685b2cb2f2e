"""The federation roster: every participating site's name and identity public key.

The roster reaches each hospital out of band, with the deployment material, and is pinned by
`fedcare client approve` (its digest is part of an approval). A site's identity key is its Ed25519
signing key (the one that signs its ledger and security log), created at the hospital; the roster
holds only public keys. Format (YAML):

    sites:
      hospital_a:
        identity_key: |            # Ed25519 public key, PEM (SubjectPublicKeyInfo)
          -----BEGIN PUBLIC KEY-----
          ...
          -----END PUBLIC KEY-----
        supernode_key: ecdsa-sha2-nistp384 AAAA...   # optional: the SuperNode auth key (OpenSSH line)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.errors import InputError
from shared.io import load_yaml, write_text
from shared.privacy.ledger import canonical_json

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SITE_KEYS = ("identity_key", "supernode_key")


@dataclass(frozen=True)
class RosterEntry:
    identity_pem: str  # Ed25519 public key, PEM text
    supernode_key: str | None = None  # OpenSSH public key line

    @property
    def identity_key(self) -> Ed25519PublicKey:
        key = serialization.load_pem_public_key(self.identity_pem.encode())
        assert isinstance(key, Ed25519PublicKey)  # checked when the roster was loaded
        return key


@dataclass(frozen=True)
class Roster:
    sites: dict[str, RosterEntry]
    source: str = "<roster>"

    def identity_key(self, site: str) -> Ed25519PublicKey | None:
        entry = self.sites.get(site)
        return None if entry is None else entry.identity_key

    def to_dict(self) -> dict:
        return {"sites": {name: {"identity_key": e.identity_pem,
                                 **({"supernode_key": e.supernode_key} if e.supernode_key else {})}
                          for name, e in sorted(self.sites.items())}}

    def digest(self) -> str:
        """SHA-256 of the roster's canonical JSON: what an approval pins."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()


def _pem_public(text: str, source: str, field: str) -> str:
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise InputError(source, field, f"not a PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(source, field, f"expected an Ed25519 public key, got {type(key).__name__}")
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def roster_from_dict(raw: object, source: str) -> Roster:
    if not isinstance(raw, dict) or set(raw) != {"sites"} or not isinstance(raw["sites"], dict) or not raw["sites"]:
        raise InputError(source, "sites", "a roster is a mapping with one key, sites: {<site>: {identity_key: <PEM>}}")
    sites = {}
    for name, entry in raw["sites"].items():
        where = f"sites.{name}"
        if not isinstance(name, str) or not SITE_NAME.match(name):
            raise InputError(source, where, f"{name!r} is not a valid site name")
        if not isinstance(entry, dict) or "identity_key" not in entry:
            raise InputError(source, where, "needs identity_key (an Ed25519 public key, PEM)")
        unknown = sorted(set(entry) - set(_SITE_KEYS))
        if unknown:
            raise InputError(source, f"{where}.{unknown[0]}", f"unknown key; allowed: {', '.join(_SITE_KEYS)}")
        if not isinstance(entry["identity_key"], str):
            raise InputError(source, f"{where}.identity_key", "expected PEM text")
        supernode = entry.get("supernode_key")
        if supernode is not None and not isinstance(supernode, str):
            raise InputError(source, f"{where}.supernode_key", "expected one OpenSSH public key line")
        sites[name] = RosterEntry(_pem_public(entry["identity_key"], source, f"{where}.identity_key"),
                                  supernode.strip() if supernode else None)
    pems = [e.identity_pem for e in sites.values()]
    if len(set(pems)) != len(pems):
        raise InputError(source, "sites", "two sites share one identity key")
    return Roster(sites, source)


def load_roster(path: Path) -> Roster:
    path = Path(path)
    return roster_from_dict(load_yaml(path, "roster file"), str(path))


def roster_from_keys(identity_keys: dict[str, Ed25519PublicKey], supernode_keys: dict[str, str] | None = None) -> Roster:
    """A roster from the sites' public keys (the center assembles it from what the hospitals sent)."""
    pem = {site: key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
           for site, key in identity_keys.items()}
    supernode_keys = supernode_keys or {}
    return roster_from_dict({"sites": {s: {"identity_key": pem[s], **({"supernode_key": supernode_keys[s]}
                                                                       if s in supernode_keys else {})}
                                       for s in pem}}, "<roster>")


def save_roster(roster: Roster, path: Path) -> None:
    header = "# fedcare roster: the federation's sites and their identity public keys (no private key)\n"
    write_text(Path(path), header + yaml.safe_dump(roster.to_dict(), sort_keys=True))
