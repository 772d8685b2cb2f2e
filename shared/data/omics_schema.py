"""The multimodal (omics + notes) format's names: tables and columns (shared by the loader,
shared/data/omics.py, the writer and the simulator)."""

from __future__ import annotations

PATIENT_ID = "patient_id"
LABEL, TIME, EVENT = "label", "time", "event"
LABEL_TYPES = ("binary", "survival")
LABELS_TABLE, OMICS_TABLE, NOTES_TABLE = "labels", "omics", "notes"
NOTE_TEXT = "text"
