"""The PSG format's names shared by the loader (shared/data/psg.py), the writer and the simulator."""

from __future__ import annotations

EPOCH_SECONDS = 30  # one scored epoch
RECORDINGS_FILE = "recordings.csv"
