"""Device and precision resolution shared by training and inference."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from shared.errors import InputError


def resolve_device(requested: str, source: str = "<config>", field: str = "device") -> torch.device:
    """auto -> CUDA when present, else CPU; cuda asked for without CUDA -> one-line InputError."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(source, field, f"{requested!r} asked for, but this machine has no CUDA device")
        dev = torch.device(requested)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(source, field, f"{requested!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise InputError(source, field, f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")


def configure_precision(precision: str) -> None:
    """tf32 only changes matmul precision on CUDA; fp32 keeps it exact."""
    on = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


@contextlib.contextmanager
def autocast_for(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 = autocast for forward/backward; parameters, loss and optimizer state stay fp32."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
