"""site.yaml validation: a good file gives SiteSettings; each bad field is one InputError naming it."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from client.site_config import load_site_config, load_site_deployment
from fedcare.certs import DeploymentPaths, write_deployment_keys
from fedcare.site_keys import init_site_keys
from shared.errors import InputError


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    write_deployment_keys(root, ["localhost"])
    center = DeploymentPaths(root)
    paths = SimpleNamespace(root=root, ca_cert=center.ca_cert, ca_key=center.ca_key,
                            hospital_a=init_site_keys("hospital_a", root / "hospital_a").paths)  # keys made at the hospital
    other = root / "other"
    other.mkdir()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (other / "rsa_openssh.key").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    (other / "rsa.pem").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ed = ed25519.Ed25519PrivateKey.generate()
    (other / "ed25519_openssh.key").write_bytes(ed.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    return paths


@pytest.fixture
def site_yaml(tmp_path, certs):
    (tmp_path / "data").mkdir()

    def write(**changes) -> Path:
        raw = {
            "site": "hospital_a",
            "data_dir": "data",  # relative: to the folder of site.yaml
            "state_dir": "state",
            "budget": {"lifetime_epsilon": 10.0, "delta": 1.0e-5},
            "key": str(certs.hospital_a.identity_key),
            "auth_key": str(certs.hospital_a.auth_key),
            "superlink": "fl.center.example.org:9092",
            "root_certificates": str(certs.ca_cert),
            "device": "cpu",
            "precision": "fp32",
        }
        for key, value in changes.items():
            if value is None:
                raw.pop(key, None)
            else:
                raw[key] = value
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


def test_a_good_site_yaml(site_yaml, certs, tmp_path):
    dep = load_site_deployment(site_yaml())
    s = dep.settings
    assert (s.site, s.data_dir, s.state_dir) == ("hospital_a", tmp_path / "data", tmp_path / "state")
    assert (s.lifetime_epsilon, s.delta, s.device, s.precision) == (10.0, 1.0e-5, "cpu", "fp32")
    assert s.signing_key == certs.hospital_a.identity_key and s.source == str(tmp_path / "site.yaml")
    assert dep.superlink == "fl.center.example.org:9092" and dep.auth_key == certs.hospital_a.auth_key
    assert not dep.insecure
    assert load_site_config(site_yaml()).site == "hospital_a"


def test_optional_keys(site_yaml):
    s = load_site_config(site_yaml(budget=None, device=None, precision=None))
    assert (s.lifetime_epsilon, s.delta, s.device, s.precision) == (None, None, None, None)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"site": None}, "site.yaml: site: missing"),
        ({"site": "a/b"}, "site: 'a/b' is not a valid site name"),
        ({"data_dir": "nowhere"}, "data_dir: .*nowhere is not a folder"),
        ({"state_dir": "site.yaml"}, "state_dir: .*exists and is not a folder"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"budget": {"lifetime_epsilon": -1}}, "budget.lifetime_epsilon: must be > 0"),
        ({"budget": {"delta": 2}}, r"budget.delta: must be in \(0, 1\)"),
        ({"budget": {"epsilon": 1}}, "budget.epsilon: unknown key"),
        ({"superlink": "fl.center.example.org"}, "superlink: expected host:port"),
        ({"superlink": "host:99999"}, "superlink: expected host:port"),
        ({"device": "tpu"}, "device: expected auto, cpu, cuda"),
        ({"precision": "fp8"}, "precision: one of fp32, tf32, bf16"),
        ({"root_certificates": None}, "root_certificates: missing"),
        ({"auth_key": None}, "auth_key: missing"),
        ({"key": "missing.key"}, "key: .*missing.key: file not found"),
        ({"insecure": "yes"}, "insecure: expected true or false"),
        ({"insecure": True}, "auth_key: node authentication needs TLS"),
    ],
)
def test_bad_fields(site_yaml, changes, message):
    with pytest.raises(InputError, match=message) as err:
        load_site_config(site_yaml(**changes))
    assert "\n" not in str(err.value) and str(err.value).startswith(str(site_yaml().parent / "site.yaml"))


def test_wrong_key_types(site_yaml, certs):
    other = certs.root / "other"
    cases = [
        # the SuperNode (SSH) key given as the ledger key
        ({"key": str(certs.hospital_a.auth_key)}, "key: .*not a readable unencrypted PEM private key"),
        ({"key": str(other / "rsa.pem")}, "key: .*expected an Ed25519 private key, got .*RSA"),
        ({"auth_key": str(certs.hospital_a.identity_key)}, "auth_key: .*not an unencrypted OpenSSH private key"),
        ({"auth_key": str(other / "rsa_openssh.key")}, "auth_key: .*expected an EC key on a NIST curve .*got .*RSA"),
        ({"auth_key": str(other / "ed25519_openssh.key")}, "auth_key: .*expected an EC key .*got Ed25519PrivateKey"),
        ({"root_certificates": str(certs.ca_key)}, "root_certificates: .*not a PEM certificate"),
    ]
    for changes, message in cases:
        with pytest.raises(InputError, match=message):
            load_site_config(site_yaml(**changes))


def test_insecure_development_site_needs_no_keys_but_the_ledger_key(site_yaml):
    dep = load_site_deployment(site_yaml(insecure=True, auth_key=None, root_certificates=None))
    assert dep.insecure and dep.auth_key is None and dep.root_certificates is None


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="site.yaml: site config not found"):
        load_site_config(tmp_path / "site.yaml")
    (tmp_path / "site.yaml").write_text("site: [unclosed\n")
    with pytest.raises(InputError, match="site.yaml: line 2: not valid YAML"):
        load_site_config(tmp_path / "site.yaml")
    (tmp_path / "site.yaml").write_text("- just\n- a list\n")
    with pytest.raises(InputError, match="expected a mapping of settings, got list"):
        load_site_config(tmp_path / "site.yaml")


def test_the_example_site_yaml_uses_only_known_keys():
    from client.site_config import KEYS

    example = Path(__file__).resolve().parents[2] / "fedcare" / "configs" / "site.example.yaml"
    raw = yaml.safe_load(example.read_text())
    assert set(raw) <= set(KEYS) and set(raw["budget"]) == {"lifetime_epsilon", "delta"}


def test_policy_and_roster_in_site_yaml(site_yaml, certs, tmp_path):
    from shared.privacy.keys import load_public_key
    from shared.privacy.roster import roster_from_keys, save_roster
    from shared.privacy.site_policy import SitePolicy, save_site_policy

    save_site_policy(SitePolicy(source="p"), tmp_path / "policy.yaml")
    save_roster(roster_from_keys({"hospital_a": load_public_key(certs.hospital_a.identity_public)}),
                tmp_path / "roster.yaml")
    s = load_site_config(site_yaml(policy="policy.yaml", roster="roster.yaml"))
    assert (s.policy, s.roster, s.deployment) == (tmp_path / "policy.yaml", tmp_path / "roster.yaml", True)
    assert load_site_config(site_yaml()).policy is None  # allowed: the site then refuses every run (no_policy)


@pytest.mark.parametrize("field, content, problem", [
    ("policy", None, "site policy file not found"),
    ("policy", "approved_runs: 3\n", "approved_runs"),
    ("roster", None, "roster file not found"),
    ("roster", "sites: {}\n", "a roster is a mapping"),
])
def test_a_bad_policy_or_roster_is_one_line_naming_the_field(site_yaml, tmp_path, field, content, problem):
    if content is not None:
        (tmp_path / f"{field}.yaml").write_text(content)
    with pytest.raises(InputError) as err:
        load_site_config(site_yaml(**{field: f"{field}.yaml"}))
    assert err.value.field == field and problem in str(err.value) and "\n" not in str(err.value)
