"""`fedcare server` / `fedcare client` without starting Flower: the app bundle they ship, the
SuperNode command line, key checks and one-line errors for bad input."""

import io
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import FAB_MAX_SIZE

from client.site_config import load_site_deployment
from fedcare.center import parse_address, project_dir, supernode_keys
from fedcare.certs import DeploymentPaths, assemble_roster, write_deployment_keys
from fedcare.cli import main
from fedcare.hospital import supernode_argv
from fedcare.site_keys import init_site_keys
from shared.errors import InputError


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    write_deployment_keys(root, ["localhost"])
    center = DeploymentPaths(root)
    hospitals = {s: init_site_keys(s, root / "hospitals" / s).paths for s in ("hospital_a", "hospital_b")}
    assemble_roster(root, [h.public for h in hospitals.values()])
    return SimpleNamespace(root=root, ca_cert=center.ca_cert, supernode_keys=center.supernode_keys,
                           hospital_a=hospitals["hospital_a"])


def test_the_app_bundle_holds_only_the_apps_code_deflated(monkeypatch):
    from flwr.cli import build

    from fedcare.flwr_cli import deflating_bundles
    from shared.privacy.code_bundle import fab_manifest, installed_manifest

    monkeypatch.setattr(build, "write_to_zip", build.write_to_zip)  # Flower's builder back after the test
    stored = build_fab_from_disk(project_dir())  # what the bare `flwr run <project>` builds
    deflating_bundles()
    deflating_bundles()  # once only
    fab = build_fab_from_disk(project_dir())  # what `fedcare server`'s `python -m fedcare.flwr_cli run` builds
    assert build_fab_from_disk(project_dir()) == fab  # the same files, the same bundle (and hash)
    assert len(fab) < len(stored) / 2 and len(fab) < FAB_MAX_SIZE / 20
    archive = zipfile.ZipFile(io.BytesIO(fab))
    assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    assert fab_manifest(fab) == fab_manifest(stored) == installed_manifest()  # the hospitals' check: files, not storage
    names = archive.namelist()
    assert {"pyproject.toml", "server/app.py", "client/app.py", "shared/config.py"} <= set(names)
    outside = [n for n in names if n not in ("pyproject.toml", ".info/CONTENT")
               and not (n.split("/")[0] in ("server", "client", "shared") and n.endswith(".py"))]
    assert outside == []  # no data/, runs/, tests/, docs, .venv/


def test_supernode_command_line(certs, tmp_path):
    (tmp_path / "data").mkdir()
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(yaml.safe_dump({
        "site": "hospital_a", "data_dir": "data", "state_dir": "state", "key": str(certs.hospital_a.identity_key),
        "auth_key": str(certs.hospital_a.auth_key), "superlink": "fl.example.org:9092",
        "root_certificates": str(certs.ca_cert),
    }))
    argv = supernode_argv(load_site_deployment(site_yaml), site_yaml, 9500)
    assert argv[:3] == [sys.executable, "-m", "fedcare.supernode_runner"]  # flower-supernode, shorter idle beat
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert flags["--superlink"] == "fl.example.org:9092" and flags["--port"] == "9500"
    assert flags["--node-config"] == f'site-config="{site_yaml.resolve()}"'
    assert flags["--root-certificates"] == str(certs.ca_cert)
    assert flags["--auth-supernode-private-key"] == str(certs.hospital_a.auth_key)
    # the SuperNode runs no app code: the site's own process answers on a local-only Runtime API
    assert flags["--isolation"] == "process" and flags["--host"] == "127.0.0.1"
    assert "--insecure" not in argv


def test_supernode_keys_of_the_configured_sites(certs):
    keys = supernode_keys(certs.root, ["hospital_a", "hospital_b", "hospital_x"])
    assert keys == {s: certs.supernode_keys / f"{s}_auth.pub" for s in ("hospital_a", "hospital_b")}
    with pytest.raises(InputError, match="no SuperNode key for any of hospital_x"):
        supernode_keys(certs.root, ["hospital_x"])
    with pytest.raises(InputError, match="center/ca.crt: missing"):
        supernode_keys(certs.root / "nowhere", ["hospital_a"])


def test_a_bad_public_key_is_refused(tmp_path):
    write_deployment_keys(tmp_path, ["localhost"])
    paths = DeploymentPaths(tmp_path)
    assemble_roster(tmp_path, [init_site_keys("h", tmp_path / "h").paths.public])
    (paths.supernode_keys / "h_auth.pub").write_bytes(paths.identity_key("h").read_bytes())
    with pytest.raises(InputError, match="h_auth.pub: not an OpenSSH public key"):
        supernode_keys(tmp_path, ["h"])


@pytest.mark.parametrize("text, parsed", [("127.0.0.1:9092", ("127.0.0.1", 9092)), ("[::]:80", ("::", 80))])
def test_parse_address(text, parsed):
    assert parse_address(text) == parsed


@pytest.mark.parametrize("text", ["9092", "host:", "host:70000", "host:x"])
def test_bad_address(text):
    with pytest.raises(InputError, match="--address: expected HOST:PORT"):
        parse_address(text)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["server", "--resume", str(tmp_path)]) == 2
    assert f"{tmp_path}/config.yaml: missing: not a fedcare deployment run folder" in capsys.readouterr().out
    (tmp_path / "config.yaml").write_text("task: event_mortality\n")
    (tmp_path / "run.json").write_text('{"run_id": "r", "starts": []}')
    assert main(["server", "--resume", str(tmp_path)]) == 2
    assert "checkpoints: nothing to resume" in capsys.readouterr().out
    config = Path(__file__).resolve().parents[2] / "fedcare" / "configs" / "event_mortality.yaml"
    assert main(["server", "--config", str(config), "--certs", str(tmp_path / "none")]) == 2
    assert "--certs: folder not found" in capsys.readouterr().out
    assert main(["client", "--site-config", str(tmp_path / "site.yaml")]) == 2
    assert "site.yaml: site config not found" in capsys.readouterr().out
