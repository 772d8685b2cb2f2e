"""Global model checkpoints: one file per round, written atomically (shared.io)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shared.errors import InputError
from shared.io import atomic_file


def checkpoint_path(run_dir: Path, server_round: int) -> Path:
    return run_dir / "checkpoints" / f"round_{server_round:03d}.pt"


def save_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    with atomic_file(path) as handle:
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **meta}, handle)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        raise InputError(path, None, f"not a readable fedcare checkpoint ({type(err).__name__})") from None
    for key in ("state_dict", "config", "round"):
        if key not in ckpt:
            raise InputError(path, key, "missing from checkpoint")
    return ckpt


def _round_files(run_dir: Path) -> list[Path]:
    """Checkpoint files, highest round first."""
    found = [p for p in (Path(run_dir) / "checkpoints").glob("round_*.pt") if p.stem[6:].isdigit()]
    return sorted(found, key=lambda p: int(p.stem[6:]), reverse=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint file of the highest round (every file there was complete when written: by rename)."""
    files = _round_files(run_dir)
    return files[0] if files else None


def latest_loadable_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any], list[InputError]] | None:
    """The checkpoint of the highest round that loads, with the problems of the newer ones it skipped
    (a disk error or a file damaged after it was written); None when none loads."""
    skipped: list[InputError] = []
    for path in _round_files(run_dir):
        try:
            return path, load_checkpoint(path), skipped
        except InputError as err:
            skipped.append(err)
    return None
