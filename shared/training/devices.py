"""Device and precision resolution shared by training and inference."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
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


# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def keep_freed_memory() -> bool:
    """glibc only, once per process: keep freed heap memory for the next training step instead of
    handing it back to the OS. A training step allocates and frees the same tens of MB every time;
    by default glibc serves blocks above a moving threshold with mmap and trims the heap top, so
    each step page-faults its memory back (system time: it made the book-keeping DP step of the
    SetTransformer ~1.6x a plain step on CPU against ~1.2x with this). Blocks up to 32 MB (glibc's
    ceiling) come from the heap, and up to 1 GB of free heap is kept; the process's RSS then stays
    near its peak. -> whether it was applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
