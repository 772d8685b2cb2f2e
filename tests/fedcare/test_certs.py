"""Key material of a deployment: `fedcare certs` (CA offline, SuperLink certificate), `fedcare client
init` (a hospital's keys, born at the hospital), `fedcare roster` (the center assembles the hospitals'
public keys). The center's runtime folder never holds a hospital private key or the CA key."""

import ipaddress
import stat

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from fedcare.certs import (
    DeploymentPaths,
    assemble_roster,
    holds_private_key,
    parse_hosts,
    server_cert_hosts,
    write_deployment_keys,
)
from fedcare.cli import main
from fedcare.site_keys import init_site_keys
from shared.errors import InputError
from shared.privacy.keys import load_private_key, load_public_key
from shared.privacy.roster import load_roster

SITES = ("hospital_a", "hospital_b")


@pytest.fixture
def deployment(tmp_path):
    """The operator's certs, each hospital's own init (in its own folder), the center's roster."""
    write_deployment_keys(tmp_path / "certs", ["localhost", "fl.center.example.org"])
    hospitals = {s: init_site_keys(s, tmp_path / "hospitals" / s).paths for s in SITES}
    assemble_roster(tmp_path / "certs", [h.public for h in hospitals.values()])
    return DeploymentPaths(tmp_path / "certs"), hospitals


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def _private_keys_in(folder):
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sorted(p.relative_to(folder).as_posix() for p in files if holds_private_key(p.read_bytes()))


def test_the_center_holds_no_hospital_private_key_and_not_the_ca_key(deployment):
    paths, hospitals = deployment
    # every file of the center's runtime folder, scanned for any private key material
    assert _private_keys_in(paths.center) == ["server.key"]
    server_key = serialization.load_pem_private_key(paths.server_key.read_bytes(), None)
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), None)
    assert server_key.public_key() != ca_key.public_key()
    assert not paths.ca_key.is_relative_to(paths.center) and _private_keys_in(paths.ca_dir) == ["ca.key"]
    # the hospitals' private halves exist only in their own folders
    for site, h in hospitals.items():
        assert _private_keys_in(h.root) == sorted([h.auth_key.name, h.identity_key.name])
        assert _private_keys_in(h.public) == []
        identity = load_private_key(h.identity_key).public_key()
        assert load_public_key(paths.identity_key(site)) == identity
        for center_file in paths.center.rglob("*"):
            if center_file.is_file():
                assert h.identity_key.read_bytes() not in center_file.read_bytes()
                assert h.auth_key.read_bytes() not in center_file.read_bytes()
    assert sorted(p.relative_to(paths.root).as_posix() for p in paths.root.rglob("*") if p.is_file()) == sorted([
        "ca/ca.key", "center/ca.crt", "center/server.crt", "center/server.key", "center/roster.yaml",
        *(f"center/supernode_keys/{s}_auth.pub" for s in SITES), *(f"center/identity_keys/{s}_identity.pub" for s in SITES),
    ])


def test_private_keys_are_0600_and_their_folders_private(deployment):
    paths, hospitals = deployment
    for h in hospitals.values():
        assert _mode(h.root) == 0o700 and _mode(h.auth_key) == 0o600 and _mode(h.identity_key) == 0o600
        assert _mode(h.auth_public) == 0o644 and _mode(h.identity_public) == 0o644
    assert _mode(paths.ca_dir) == 0o700 and _mode(paths.ca_key) == 0o600 and _mode(paths.server_key) == 0o600
    for path in [*paths.center.rglob("*.pub"), *paths.center.rglob("*.crt")]:
        assert _mode(path) == 0o644, path


def test_the_roster_holds_the_keys_the_hospitals_created(deployment):
    paths, hospitals = deployment
    roster = load_roster(paths.roster)
    assert sorted(roster.sites) == list(SITES)
    for site, h in hospitals.items():
        assert roster.identity_key(site) == load_private_key(h.identity_key).public_key()
        auth = load_ssh_private_key(h.auth_key.read_bytes(), None)
        assert load_ssh_public_key(roster.sites[site].supernode_key.encode()) == auth.public_key()


def test_server_certificate_is_signed_by_the_ca_for_every_host(deployment):
    keys, _ = deployment
    ca = x509.load_pem_x509_certificate(keys.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(keys.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "fl.center.example.org"}
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert server_cert_hosts(keys.server_cert) == ["localhost", "fl.center.example.org", "127.0.0.1"]


def test_supernode_keys_are_in_the_format_flower_loads(deployment):
    keys, hospitals = deployment
    private = load_ssh_private_key(hospitals["hospital_a"].auth_key.read_bytes(), None)  # what flower-supernode does
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    center_copy = keys.supernode_keys / "hospital_a_auth.pub"
    # what `flwr supernode register` sends is the public half of the SuperNode's private key
    assert try_load_public_key(center_copy) == public_key_to_bytes(private.public_key())


def test_running_again_keeps_every_key(deployment, tmp_path):
    paths, hospitals = deployment
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    write_deployment_keys(paths.root, ["localhost"])
    for h in hospitals.values():
        h.auth_public.unlink()  # a lost public file comes back from its private key
        report = init_site_keys(h.site, h.root)
        assert report.kept == [h.auth_key, h.identity_key] and report.written == [h.auth_public]
    for path, data in before.items():
        assert path.read_bytes() == data


def test_a_ca_key_of_the_old_layout_is_moved_out_of_the_center(tmp_path):
    paths = DeploymentPaths(tmp_path)
    write_deployment_keys(tmp_path, ["localhost"])
    key = paths.ca_key.read_bytes()
    paths.ca_key.replace(paths.center / "ca.key")  # where earlier versions kept it
    report = write_deployment_keys(tmp_path, ["localhost"])
    assert report.moved == [(paths.center / "ca.key", paths.ca_key)] and paths.ca_key.read_bytes() == key
    assert _private_keys_in(paths.center) == ["server.key"]


def test_the_roster_refuses_private_keys_duplicates_and_wrong_key_types(tmp_path):
    write_deployment_keys(tmp_path / "certs", ["localhost"])
    a = init_site_keys("hospital_a", tmp_path / "a").paths
    careless = tmp_path / "careless"  # a hospital that sent its whole key folder
    careless.mkdir()
    for path in (a.auth_key, a.auth_public, a.identity_public):
        (careless / path.name).write_bytes(path.read_bytes())
    with pytest.raises(InputError, match="hospital_a_auth.key: holds a private key"):
        assemble_roster(tmp_path / "certs", [careless])
    assert not (tmp_path / "certs" / "center" / "roster.yaml").exists()
    # a folder with public/ inside is read as its public/ folder
    assert sorted(assemble_roster(tmp_path / "certs", [a.root])[0].sites) == ["hospital_a"]
    with pytest.raises(InputError, match="hospital_a is given twice"):
        assemble_roster(tmp_path / "certs", [a.public, a.public])
    stolen = tmp_path / "stolen" / "public"
    stolen.mkdir(parents=True)
    (stolen / "hospital_x_identity.pub").write_bytes(a.identity_public.read_bytes())
    (stolen / "hospital_x_auth.pub").write_bytes(init_site_keys("y", tmp_path / "y").paths.auth_public.read_bytes())
    with pytest.raises(InputError, match="two sites share one identity key"):
        assemble_roster(tmp_path / "certs", [a.public, stolen])
    (stolen / "hospital_x_auth.pub").write_bytes(a.identity_public.read_bytes())
    with pytest.raises(InputError, match="hospital_x_auth.pub: not an OpenSSH public key"):
        assemble_roster(tmp_path / "certs", [stolen])
    (stolen / "hospital_x_auth.pub").unlink()
    with pytest.raises(InputError, match="hospital_x_auth.pub is missing"):
        assemble_roster(tmp_path / "certs", [stolen])


def test_a_site_left_off_the_roster_loses_its_center_copies(deployment, tmp_path):
    paths, hospitals = deployment
    _, report = assemble_roster(paths.root, [hospitals["hospital_a"].public])
    assert sorted(p.name for p in report.removed) == ["hospital_b_auth.pub", "hospital_b_identity.pub"]
    assert sorted(p.name for p in paths.supernode_keys.iterdir()) == ["hospital_a_auth.pub"]
    assert sorted(yaml.safe_load(paths.roster.read_text())["sites"]) == ["hospital_a"]


def test_a_new_host_for_an_existing_server_certificate_is_refused(deployment):
    keys, _ = deployment
    with pytest.raises(InputError, match="server.crt: --server-host: exists without other.example.org"):
        write_deployment_keys(keys.root, ["other.example.org"])


def test_hosts_are_split_on_commas():
    assert parse_hosts(" localhost, fl.example.org ,") == ["localhost", "fl.example.org"]


def test_the_commands_in_order(tmp_path, capsys):
    certs = tmp_path / "certs"
    assert main(["certs", "--out", str(certs), "--server-host", "localhost"]) == 0
    for site in ("h1", "h2"):
        assert main(["client", "init", "--site", site, "--out", str(tmp_path / site)]) == 0
    assert main(["roster", "--certs", str(certs), "--public-keys", str(tmp_path / "h1" / "public"),
                 str(tmp_path / "h2" / "public")]) == 0
    assert sorted(load_roster(certs / "center" / "roster.yaml").sites) == ["h1", "h2"]
    assert main(["client", "init", "--site", "bad name", "--out", str(tmp_path / "x")]) == 2
    assert "--site: 'bad name' is not a valid site name" in capsys.readouterr().out
