import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import InputError
from shared.privacy.keys import generate_site_key, load_private_key, load_public_key, public_key_fingerprint


def test_generated_key_pair_signs_and_verifies(tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "keys" / "site.key", tmp_path / "keys" / "site.pub"
    generate_site_key(private_path, public_path)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert private_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert sorted(p.name for p in private_path.parent.iterdir()) == ["site.key", "site.pub"]  # no temp files
    private_key, public_key = load_private_key(private_path), load_public_key(public_path)
    public_key.verify(private_key.sign(b"round 1"), b"round 1")
    fingerprint = public_key_fingerprint(public_key)
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert fingerprint == public_key_fingerprint(private_key.public_key())


def test_existing_key_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "site.key", tmp_path / "site.pub"
    generate_site_key(private_path, public_path)
    before = private_path.read_bytes()
    with pytest.raises(InputError, match=r"site\.key: key: already exists"):
        generate_site_key(private_path, public_path)
    assert private_path.read_bytes() == before
    generate_site_key(private_path, public_path, overwrite=True)
    assert private_path.read_bytes() != before
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600


def test_missing_corrupt_and_wrong_type_keys_are_input_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(InputError, match="nope.key: key: file not found") as caught:
        load_private_key(missing)
    assert caught.value.source == str(missing) and caught.value.field == "key"

    corrupt = tmp_path / "corrupt.pem"
    corrupt.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(InputError, match="corrupt.pem: key: not a readable"):
        load_private_key(corrupt)
    with pytest.raises(InputError, match="corrupt.pem: key: not a readable"):
        load_public_key(corrupt)

    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_private = tmp_path / "ec.key"
    ec_private.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ec_public = tmp_path / "ec.pub"
    ec_public.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(InputError, match="ec.key: key: expected an Ed25519 private key, got EC"):
        load_private_key(ec_private)
    with pytest.raises(InputError, match="expected an Ed25519 public key"):
        load_public_key(ec_public)


def test_public_key_file_is_not_a_private_key(tmp_path: Path) -> None:
    generate_site_key(tmp_path / "a.key", tmp_path / "a.pub")
    with pytest.raises(InputError, match="a.pub: key: not a readable unencrypted PEM private key"):
        load_private_key(tmp_path / "a.pub")
