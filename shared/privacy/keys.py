"""Site signing keys (Ed25519) for the privacy ledger: generate, load, fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import InputError
from shared.io import write_bytes


def generate_site_key(private_path: Path, public_path: Path, overwrite: bool = False) -> None:
    """Create a new Ed25519 key pair: private key PEM (PKCS#8, unencrypted) and public key PEM.

    The private key file is 0600 from its creation (never wider, even briefly); the public one 0644.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise InputError(
                    path, "key", "already exists; refusing to overwrite a site key (overwrite=True)"
                )
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_bytes(private_path, private_pem, 0o600)
    write_bytes(public_path, public_pem, 0o644)


def _read_key_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(path, "key", "file not found") from None
    except OSError as error:
        raise InputError(path, "key", f"cannot read: {error.strerror}") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The site's Ed25519 private key from an unencrypted PEM file."""
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise InputError(path, "key", f"not a readable unencrypted PEM private key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(path, "key", f"expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A site's Ed25519 public key from a PEM file."""
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise InputError(path, "key", f"not a readable PEM public key ({error})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(path, "key", f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def public_key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of the SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
