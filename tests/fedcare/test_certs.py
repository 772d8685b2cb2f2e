"""`fedcare certs`: layout, permissions, certificate chain and SANs, key formats Flower loads."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from fedcare.certs import DeploymentPaths, parse_hosts, parse_sites, server_cert_hosts, write_deployment_keys
from fedcare.cli import main
from shared.errors import InputError
from shared.privacy.keys import load_private_key, load_public_key


@pytest.fixture
def keys(tmp_path):
    write_deployment_keys(tmp_path / "certs", ["localhost", "fl.center.example.org"], ["hospital_a", "hospital_b"])
    return DeploymentPaths(tmp_path / "certs")


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_and_private_keys_are_0600(keys):
    files = {p.relative_to(keys.root).as_posix() for p in keys.root.rglob("*") if p.is_file()}
    assert files == {
        "center/ca.crt", "center/ca.key", "center/server.crt", "center/server.key",
        "center/supernode_keys/hospital_a_auth.pub", "center/supernode_keys/hospital_b_auth.pub",
        "center/ledger_keys/hospital_a_ledger.pub", "center/ledger_keys/hospital_b_ledger.pub",
        *(f"sites/{s}/{f}" for s in ("hospital_a", "hospital_b")
          for f in ("ca.crt", f"{s}_auth.key", f"{s}_auth.pub", f"{s}_ledger.key", f"{s}_ledger.pub")),
    }
    for path in keys.root.rglob("*.key"):
        assert _mode(path) == 0o600, path
    for path in list(keys.root.rglob("*.pub")) + list(keys.root.rglob("*.crt")):
        assert _mode(path) == 0o644, path


def test_server_certificate_is_signed_by_the_ca_for_every_host(keys):
    ca = x509.load_pem_x509_certificate(keys.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(keys.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "fl.center.example.org"}
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert server_cert_hosts(keys.server_cert) == ["localhost", "fl.center.example.org", "127.0.0.1"]
    assert (keys.site_dir("hospital_a") / "ca.crt").read_bytes() == keys.ca_cert.read_bytes()


def test_supernode_keys_are_in_the_format_flower_loads(keys):
    private = load_ssh_private_key(keys.auth_key("hospital_a").read_bytes(), None)  # what flower-supernode does
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    center_copy = keys.supernode_keys / "hospital_a_auth.pub"
    assert center_copy.read_bytes() == keys.auth_key("hospital_a").with_suffix(".pub").read_bytes()
    # what `flwr supernode register` sends is the public half of the SuperNode's private key
    assert try_load_public_key(center_copy) == public_key_to_bytes(private.public_key())
    assert isinstance(load_ssh_public_key(center_copy.read_bytes()), ec.EllipticCurvePublicKey)


def test_ledger_keys_are_ed25519_site_keys(keys):
    private = load_private_key(keys.ledger_key("hospital_b"))
    public = load_public_key(keys.ledger_keys / "hospital_b_ledger.pub")
    assert private.public_key() == public


def test_running_again_keeps_keys_and_adds_a_site_with_the_same_ca(keys):
    before = {p: p.read_bytes() for p in keys.root.rglob("*") if p.is_file()}
    report = write_deployment_keys(keys.root, ["localhost"], ["hospital_a", "hospital_c"])
    for path, data in before.items():
        assert path.read_bytes() == data
    assert keys.auth_key("hospital_c") in report.written and keys.auth_key("hospital_a") in report.kept
    assert (keys.site_dir("hospital_c") / "ca.crt").read_bytes() == keys.ca_cert.read_bytes()


def test_a_new_host_for_an_existing_server_certificate_is_refused(keys):
    with pytest.raises(InputError, match="server.crt: --server-host: exists without other.example.org"):
        write_deployment_keys(keys.root, ["other.example.org"], ["hospital_a"])


@pytest.mark.parametrize("text, problem", [("", "needs at least one"), ("a,a", "unique"), ("../x", "not a valid site")])
def test_bad_site_lists(text, problem):
    with pytest.raises(InputError, match=problem):
        parse_sites(text)


def test_hosts_are_split_on_commas():
    assert parse_hosts(" localhost, fl.example.org ,") == ["localhost", "fl.example.org"]


def test_cli_writes_the_layout(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path / "k"), "--sites", "h1,h2", "--server-host", "localhost"]) == 0
    assert (tmp_path / "k" / "sites" / "h2" / "h2_auth.key").is_file()
    assert main(["certs", "--out", str(tmp_path / "k"), "--sites", "bad name"]) == 2
    assert "--sites: 'bad name' is not a valid site name" in capsys.readouterr().out
