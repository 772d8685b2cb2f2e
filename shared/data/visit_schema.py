"""The AKI visit format's names: files, columns, the lab features in model order and their accepted
ranges (shared by the loader, shared/data/visits.py, the writer and the simulator)."""

from __future__ import annotations

VISITS_FILE = "visits"
LABELS_FILE = "labels"
LABEL = "aki"
# lab name -> unit; the model's input features, in this order
LAB_FEATURES: dict[str, str] = {
    "creatinine": "mg/dL",
    "bun": "mg/dL",
    "egfr": "mL/min/1.73m2",
    "potassium": "mmol/L",
    "sodium": "mmol/L",
    "bicarbonate": "mmol/L",
    "hemoglobin": "g/dL",
    "urine_output": "mL/kg/h",
}
FEATURES: tuple[str, ...] = tuple(LAB_FEATURES)
# lab name -> (lowest, highest) value accepted, in the unit above (documented in shared/data/visits.py)
LAB_RANGES: dict[str, tuple[float, float]] = {
    "creatinine": (0.0, 40.0),
    "bun": (0.0, 400.0),
    "egfr": (0.0, 250.0),
    "potassium": (0.5, 15.0),
    "sodium": (80.0, 220.0),
    "bicarbonate": (0.0, 80.0),
    "hemoglobin": (0.0, 30.0),
    "urine_output": (0.0, 50.0),
}
VISIT_COLUMNS: tuple[str, ...] = ("patient_id", "visit_id", "timestamp", *FEATURES)
LABEL_COLUMNS: tuple[str, ...] = ("patient_id", LABEL)
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
