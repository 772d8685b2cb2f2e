"""`fedcare certs` and `fedcare roster`: the center's key material, written by its operator.

Operator tooling, not part of either Flower app (so it lives beside the CLI, not in server/ or
client/). No hospital private key is ever made here: each hospital creates its own keys with
`fedcare client init` and sends only its public/ folder. Layout under OUT (private keys 0600,
everything else 0644):

    ca/ca.crt, ca/ca.key                the deployment's certificate authority: keep ca/ offline, never
                                        mount it into the center's container (only center/ is)
    center/ca.crt                       the CA certificate (also what every hospital gets)
    center/server.crt, server.key       SuperLink TLS certificate (SANs: the given hosts + 127.0.0.1)
    center/roster.yaml                  `fedcare roster`: the federation's sites and their public keys
    center/supernode_keys/<site>_auth.pub       SuperNode public keys the SuperLink registers
    center/identity_keys/<site>_identity.pub    site identity keys (ledger and security-log signatures;
                                                `fedcare audit --public-key`)

Running `fedcare certs` again keeps every existing file (a CA key from the old layout,
center/ca.key, is moved out to ca/).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import InputError
from shared.io import write_bytes
from shared.privacy.keys import load_public_key
from shared.privacy.roster import Roster, roster_from_keys, save_roster

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOOPBACK = "127.0.0.1"
CA_DAYS, SERVER_DAYS = 3650, 825


@dataclass
class CertsReport:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    moved: list[tuple[Path, Path]] = field(default_factory=list)


@dataclass(frozen=True)
class DeploymentPaths:
    """Where `fedcare certs` and `fedcare roster` put each file (also what `fedcare server --certs DIR` reads)."""

    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"  # offline: never part of the center's runtime folder

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def center(self) -> Path:
        return self.root / "center"

    @property
    def ca_cert(self) -> Path:
        return self.center / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.center / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.center / "server.key"

    @property
    def roster(self) -> Path:
        return self.center / "roster.yaml"

    @property
    def supernode_keys(self) -> Path:
        return self.center / "supernode_keys"

    @property
    def identity_keys(self) -> Path:
        return self.center / "identity_keys"

    def identity_key(self, site: str) -> Path:
        return self.identity_keys / f"{site}_identity.pub"


def parse_hosts(text: str) -> list[str]:
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    if not hosts:
        raise InputError("<command line>", "--server-host", "needs at least one host name")
    return hosts


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcare"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in [*hosts, LOOPBACK]:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    return names


def _issue_ca(paths: DeploymentPaths, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name("fedcare deployment CA")
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    paths.ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_bytes(paths.ca_key, _private_pem(key), 0o600)
    write_bytes(paths.ca_cert, _cert_pem(cert), 0o644)
    return cert, key


def _load_ca(paths: DeploymentPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise InputError(paths.ca_key, None, f"existing CA files are unreadable ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError(paths.ca_key, None, "the existing CA key is not an EC key")
    return cert, key


def _issue_server_cert(paths: DeploymentPaths, hosts: list[str], ca_cert: x509.Certificate,
                       ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    write_bytes(paths.server_key, _private_pem(key), 0o600)
    write_bytes(paths.server_cert, _cert_pem(cert), 0o644)


def server_cert_hosts(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [str(v) for v in san.get_values_for_type(x509.IPAddress)]


def _move_old_ca_key(paths: DeploymentPaths, report: CertsReport) -> None:
    """The old layout kept ca.key in center/, the folder mounted into the center's container: move it out."""
    old = paths.center / "ca.key"
    if not old.is_file():
        return
    if paths.ca_key.is_file():
        raise InputError(old, None, f"a second CA key besides {paths.ca_key}; remove the one that did not sign center/ca.crt")
    paths.ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.replace(old, paths.ca_key)
    report.moved.append((old, paths.ca_key))


def write_deployment_keys(out: Path, hosts: list[str]) -> CertsReport:
    """The CA (ca/, offline) and the SuperLink's certificate (center/); never a hospital's key."""
    paths, report = DeploymentPaths(Path(out)), CertsReport()
    now = dt.datetime.now(dt.UTC)
    _move_old_ca_key(paths, report)

    if paths.ca_cert.is_file() and paths.ca_key.is_file():
        ca_cert, ca_key = _load_ca(paths)
        report.kept += [paths.ca_cert, paths.ca_key]
    else:
        ca_cert, ca_key = _issue_ca(paths, now)
        report.written += [paths.ca_cert, paths.ca_key]

    if paths.server_cert.is_file() and paths.server_key.is_file():
        have = server_cert_hosts(paths.server_cert)
        missing = [h for h in hosts if h not in have]
        if missing:
            raise InputError(paths.server_cert, "--server-host",
                             f"exists without {', '.join(missing)} (has {', '.join(have)}); delete server.crt/.key to re-issue")
        report.kept += [paths.server_cert, paths.server_key]
    else:
        _issue_server_cert(paths, hosts, ca_cert, ca_key, now)
        report.written += [paths.server_cert, paths.server_key]
    return report


# -- the roster: assembled at the center from the hospitals' public files -------------------------

PUBLIC_SUFFIXES = {"_identity.pub": "identity", "_auth.pub": "auth"}
PRIVATE_MARKERS = (b"PRIVATE KEY", b"OPENSSH PRIVATE KEY")


def holds_private_key(data: bytes) -> bool:
    """Private key material in any PEM/OpenSSH form (PKCS#8, EC, RSA, OpenSSH, encrypted)."""
    return any(marker in data for marker in PRIVATE_MARKERS)


def read_public_bundle(folder: Path) -> dict[str, dict[str, Path]]:
    """site -> {"identity": path, "auth": path} from one hospital's public folder (`fedcare client init`
    writes DIR/public/; DIR itself is accepted when it is that folder). A folder holding any private key
    is refused: the center must never receive one."""
    folder = Path(folder)
    if (folder / "public").is_dir():
        folder = folder / "public"
    if not folder.is_dir():
        raise InputError(folder, "--public-keys", "no such folder")
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if holds_private_key(path.read_bytes()):
            raise InputError(path, None, "holds a private key: a hospital sends only the files in its public/ folder")
        for suffix, kind in PUBLIC_SUFFIXES.items():
            if path.name.endswith(suffix):
                found.setdefault(path.name[: -len(suffix)], {})[kind] = path
    if not found:
        raise InputError(folder, "--public-keys", "no <site>_identity.pub / <site>_auth.pub files (from `fedcare client init`)")
    for site, files in found.items():
        if not SITE_NAME.match(site):
            raise InputError(folder, site, "not a valid site name (letters, digits, _ . -)")
        missing = [k for k in ("identity", "auth") if k not in files]
        if missing:
            raise InputError(folder, site, f"{site}_{missing[0]}.pub is missing")
    return found


def _auth_public_line(path: Path) -> str:
    try:
        key = load_ssh_public_key(path.read_bytes())
    except (ValueError, UnsupportedAlgorithm) as err:
        raise InputError(path, None, f"not an OpenSSH public key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)):
        raise InputError(path, None, "expected an EC public key on a NIST curve (a SuperNode key from `fedcare client init`)")
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def assemble_roster(out: Path, public_dirs: list[Path], roster_path: Path | None = None) -> tuple[Roster, CertsReport]:
    """The federation roster from the hospitals' public folders, plus the center's copies of their
    public keys (supernode_keys/ for registration, identity_keys/ for audits); files of sites no longer
    on the roster are removed from those two folders."""
    paths, report = DeploymentPaths(Path(out)), CertsReport()
    bundles: dict[str, dict[str, Path]] = {}
    for folder in public_dirs:
        for site, files in read_public_bundle(folder).items():
            if site in bundles:
                raise InputError(folder, site, f"{site} is given twice (also in {bundles[site]['identity'].parent})")
            bundles[site] = files
    identity = {site: load_public_key(files["identity"]) for site, files in bundles.items()}
    auth = {site: _auth_public_line(files["auth"]) for site, files in bundles.items()}
    if len(set(auth.values())) != len(auth):
        raise InputError("--public-keys", None, "two sites share one SuperNode key")
    roster = roster_from_keys(identity, auth)  # refuses a shared identity key
    copies = {paths.supernode_keys: {f"{s}_auth.pub": (auth[s] + "\n").encode() for s in bundles},
              paths.identity_keys: {f"{s}_identity.pub": bundles[s]["identity"].read_bytes() for s in bundles}}
    for folder, files in copies.items():
        for name, data in files.items():
            target = folder / name
            if not target.is_file() or target.read_bytes() != data:
                write_bytes(target, data, 0o644)
                report.written.append(target)
        for stale in folder.glob("*.pub"):
            if stale.name not in files:
                stale.unlink()
                report.removed.append(stale)
    target = roster_path or paths.roster
    save_roster(roster, target)
    report.written.append(target)
    return roster, report
