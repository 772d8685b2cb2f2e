"""`fedcare certs`: the key material of a deployment, written once by the operator.

Operator tooling, not part of either Flower app (so it lives beside the CLI, not in server/ or
client/). Layout under OUT (private keys 0600, everything else 0644):

    center/ca.crt, ca.key              the deployment's certificate authority (keep ca.key offline)
    center/server.crt, server.key      SuperLink TLS certificate (SANs: the given hosts + 127.0.0.1)
    center/supernode_keys/<site>_auth.pub   SuperNode public keys the SuperLink registers
    center/ledger_keys/<site>_ledger.pub    ledger verification keys (`fedcare audit --public-key`)
    sites/<site>/ca.crt                 to verify the SuperLink's certificate
    sites/<site>/<site>_auth.key|.pub   SuperNode authentication key pair (EC P-384, OpenSSH format)
    sites/<site>/<site>_ledger.key|.pub privacy-ledger signing key pair (Ed25519, PEM)

Running it again keeps every existing file and adds what is missing (a new site reuses the CA).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import InputError
from shared.privacy.atomic_write import write_atomically
from shared.privacy.keys import generate_site_key

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOOPBACK = "127.0.0.1"
CA_DAYS, SERVER_DAYS = 3650, 825


@dataclass
class CertsReport:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class DeploymentPaths:
    """Where `fedcare certs` puts each file (also what `fedcare server --certs DIR` reads)."""

    root: Path

    @property
    def center(self) -> Path:
        return self.root / "center"

    @property
    def ca_cert(self) -> Path:
        return self.center / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.center / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.center / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.center / "server.key"

    @property
    def supernode_keys(self) -> Path:
        return self.center / "supernode_keys"

    @property
    def ledger_keys(self) -> Path:
        return self.center / "ledger_keys"

    def site_dir(self, site: str) -> Path:
        return self.root / "sites" / site

    def auth_key(self, site: str) -> Path:
        return self.site_dir(site) / f"{site}_auth.key"

    def ledger_key(self, site: str) -> Path:
        return self.site_dir(site) / f"{site}_ledger.key"


def parse_hosts(text: str) -> list[str]:
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    if not hosts:
        raise InputError("<command line>", "--server-host", "needs at least one host name")
    return hosts


def parse_sites(text: str) -> list[str]:
    sites = [s.strip() for s in text.split(",") if s.strip()]
    if not sites:
        raise InputError("<command line>", "--sites", "needs at least one site name")
    for site in sites:
        if not SITE_NAME.match(site):
            raise InputError("<command line>", "--sites", f"{site!r} is not a valid site name (letters, digits, _ . -)")
    if len(set(sites)) != len(sites):
        raise InputError("<command line>", "--sites", "site names must be unique")
    return sites


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
    write_atomically(paths.ca_key, _private_pem(key), 0o600)
    write_atomically(paths.ca_cert, _cert_pem(cert), 0o644)
    return cert, key


def _load_ca(paths: DeploymentPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise InputError(paths.center, "ca", f"existing CA files are unreadable ({err})") from None
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
    write_atomically(paths.server_key, _private_pem(key), 0o600)
    write_atomically(paths.server_cert, _cert_pem(cert), 0o644)


def server_cert_hosts(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [str(v) for v in san.get_values_for_type(x509.IPAddress)]


def generate_auth_key(private_path: Path, public_path: Path) -> None:
    """A SuperNode authentication key pair in the format Flower 1.41 loads: EC on a NIST curve,
    private key as an OpenSSH PEM (`load_ssh_private_key`), public key as one OpenSSH line."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_atomically(private_path, private, 0o600)
    write_atomically(public_path, public + b"\n", 0o644)


def write_deployment_keys(out: Path, hosts: list[str], sites: list[str]) -> CertsReport:
    paths, report = DeploymentPaths(Path(out)), CertsReport()
    now = dt.datetime.now(dt.UTC)

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

    for site in sites:
        site_dir = paths.site_dir(site)
        auth_key, ledger_key = paths.auth_key(site), paths.ledger_key(site)
        if auth_key.is_file():
            report.kept.append(auth_key)
        else:
            generate_auth_key(auth_key, auth_key.with_suffix(".pub"))
            report.written += [auth_key, auth_key.with_suffix(".pub")]
        if ledger_key.is_file():
            report.kept.append(ledger_key)
        else:
            generate_site_key(ledger_key, ledger_key.with_suffix(".pub"), overwrite=True)
            report.written += [ledger_key, ledger_key.with_suffix(".pub")]
        # copies that travel: the CA to every site, the public keys to the center
        copies = ((paths.ca_cert, site_dir / "ca.crt"),
                  (auth_key.with_suffix(".pub"), paths.supernode_keys / f"{site}_auth.pub"),
                  (ledger_key.with_suffix(".pub"), paths.ledger_keys / f"{site}_ledger.pub"))
        for source, target in copies:
            data = source.read_bytes()
            if not target.is_file() or target.read_bytes() != data:
                write_atomically(target, data, 0o644)
                report.written.append(target)
    return report
