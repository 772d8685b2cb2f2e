"""`fedcare client init`: a hospital's own keys, created at the hospital; only public keys leave it.

Layout under DIR (the folder is 0700, private keys 0600; give the center DIR/public/ only):

    <site>_auth.key                     SuperNode authentication key (EC P-384, OpenSSH: Flower loads it)
    <site>_identity.key                 the site's identity key (Ed25519, PEM): signs its privacy ledger
                                        and security log (site.yaml `key:`)
    public/<site>_auth.pub              the SuperNode public key (one OpenSSH line): the center registers it
    public/<site>_identity.pub          the identity public key (PEM): the roster and auditors verify with it

Running it again keeps existing keys (a lost public file is written again from its private key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedcare.certs import SITE_NAME
from shared.errors import InputError
from shared.io import write_bytes
from shared.privacy.keys import generate_site_key, load_private_key


@dataclass(frozen=True)
class SiteKeyPaths:
    root: Path
    site: str

    @property
    def auth_key(self) -> Path:
        return self.root / f"{self.site}_auth.key"

    @property
    def identity_key(self) -> Path:
        return self.root / f"{self.site}_identity.key"

    @property
    def public(self) -> Path:
        return self.root / "public"

    @property
    def auth_public(self) -> Path:
        return self.public / f"{self.site}_auth.pub"

    @property
    def identity_public(self) -> Path:
        return self.public / f"{self.site}_identity.pub"


@dataclass
class SiteKeysReport:
    paths: SiteKeyPaths
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def generate_auth_key(private_path: Path, public_path: Path) -> None:
    """A SuperNode authentication key pair in the format Flower 1.41 loads: EC on a NIST curve,
    private key as an OpenSSH PEM (`load_ssh_private_key`), public key as one OpenSSH line."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    write_bytes(private_path, private, 0o600)
    write_bytes(public_path, _auth_public(key), 0o644)


def _auth_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"


def _identity_public(path: Path) -> bytes:
    return load_private_key(path).public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_auth_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise InputError(path, None, f"existing SuperNode key is unreadable ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError(path, None, "existing SuperNode key is not an EC key")
    return key


def init_site_keys(site: str, out: Path) -> SiteKeysReport:
    if not SITE_NAME.match(site):
        raise InputError("<command line>", "--site", f"{site!r} is not a valid site name (letters, digits, _ . -)")
    paths = SiteKeyPaths(Path(out), site)
    report = SiteKeysReport(paths)
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if paths.auth_key.is_file():
        report.kept.append(paths.auth_key)
        public = _auth_public(_load_auth_key(paths.auth_key))
        if not paths.auth_public.is_file() or paths.auth_public.read_bytes() != public:
            write_bytes(paths.auth_public, public, 0o644)
            report.written.append(paths.auth_public)
    else:
        generate_auth_key(paths.auth_key, paths.auth_public)
        report.written += [paths.auth_key, paths.auth_public]
    if paths.identity_key.is_file():
        report.kept.append(paths.identity_key)
        public = _identity_public(paths.identity_key)
        if not paths.identity_public.is_file() or paths.identity_public.read_bytes() != public:
            write_bytes(paths.identity_public, public, 0o644)
            report.written.append(paths.identity_public)
    else:
        generate_site_key(paths.identity_key, paths.identity_public, overwrite=True)
        report.written += [paths.identity_key, paths.identity_public]
    return report
