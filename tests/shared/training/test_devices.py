"""`device: auto` picks CUDA when the machine has it and the CPU otherwise (the CUDA branch is
exercised on CPU-only machines by patching torch.cuda.is_available)."""

from pathlib import Path

import pytest
import torch
import yaml

from shared.errors import InputError
from shared.training import devices
from shared.training.devices import resolve_device

SITES = Path(__file__).resolve().parents[3] / "docker" / "sites"


def test_auto_picks_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device("cuda", "site.yaml", "device")


def test_auto_picks_cuda_when_present(monkeypatch):
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices.torch.cuda, "device_count", lambda: 1)
    device = resolve_device("auto")
    assert device.type == "cuda" and device.index is None
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(InputError, match="only 1 CUDA device"):
        resolve_device("cuda:1", "site.yaml", "device")


def test_auto_matches_this_machine():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("cuda", [False, True])
def test_container_site_files_follow_the_machine(monkeypatch, cuda):
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: cuda)
    files = sorted(SITES.glob("*.yaml"))
    assert len(files) == 3
    for path in files:
        site = yaml.safe_load(path.read_text())
        assert resolve_device(site["device"], str(path), "device").type == ("cuda" if cuda else "cpu")


def test_freed_memory_is_kept_for_the_next_step_on_glibc():
    import platform

    from shared.training.devices import keep_freed_memory

    applied = keep_freed_memory()
    assert keep_freed_memory() is applied  # once per process
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied
