"""The ICU-event task's schema: event types, static features and their fixed category levels.

Levels are fixed here, not learned from the data, so every hospital builds the same one-hot
layout and model weights line up across sites. The strings are MIMIC-IV's own values
(hosp/admissions, hosp/patients, icu/icustays). A value outside a column's levels (including
the loader's "unknown" for a missing value) goes to the implicit "other" slot that the
feature encoder appends after each level list.
"""

from __future__ import annotations

EVENT_TYPES: tuple[str, ...] = ("prescription", "procedure", "lab", "microbiology", "ingredient")

LABEL = "hospital_expire_flag"

STATIC_NUMERIC: tuple[str, ...] = ("age", "los_hours")

STATIC_CATEGORICAL: dict[str, tuple[str, ...]] = {
    "gender": ("F", "M"),
    "admission_type": (
        "EW EMER.",
        "URGENT",
        "DIRECT EMER.",
        "EU OBSERVATION",
        "OBSERVATION ADMIT",
        "ELECTIVE",
        "SURGICAL SAME DAY ADMISSION",
        "DIRECT OBSERVATION",
        "AMBULATORY OBSERVATION",
    ),
    "first_careunit": (
        "Medical Intensive Care Unit (MICU)",
        "Surgical Intensive Care Unit (SICU)",
        "Medical/Surgical Intensive Care Unit (MICU/SICU)",
        "Cardiac Vascular Intensive Care Unit (CVICU)",
        "Coronary Care Unit (CCU)",
        "Trauma SICU (TSICU)",
        "Neuro Intermediate",
        "Neuro Surgical Intensive Care Unit (Neuro SICU)",
        "Neuro Stepdown",
    ),
    "race": (
        "WHITE",
        "WHITE - OTHER EUROPEAN",
        "WHITE - RUSSIAN",
        "WHITE - BRAZILIAN",
        "BLACK/AFRICAN AMERICAN",
        "BLACK/CAPE VERDEAN",
        "BLACK/CARIBBEAN ISLAND",
        "HISPANIC OR LATINO",
        "HISPANIC/LATINO - PUERTO RICAN",
        "HISPANIC/LATINO - DOMINICAN",
        "ASIAN",
        "ASIAN - CHINESE",
        "AMERICAN INDIAN/ALASKA NATIVE",
        "NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER",
        "PORTUGUESE",
        "UNKNOWN",
        "UNABLE TO OBTAIN",
        "PATIENT DECLINED TO ANSWER",
        "OTHER",
    ),
    "marital_status": ("MARRIED", "SINGLE", "WIDOWED", "DIVORCED"),
    "insurance": ("Medicare", "Medicaid", "Other", "Private", "No charge"),
    "admission_location": (
        "EMERGENCY ROOM",
        "PHYSICIAN REFERRAL",
        "TRANSFER FROM HOSPITAL",
        "WALK-IN/SELF REFERRAL",
        "CLINIC REFERRAL",
        "PROCEDURE SITE",
        "PACU",
        "TRANSFER FROM SKILLED NURSING FACILITY",
        "INTERNAL TRANSFER TO OR FROM PSYCH",
        "AMBULATORY SURGERY TRANSFER",
        "INFORMATION NOT AVAILABLE",
    ),
}

# Admission types MIMIC-IV uses for unplanned (emergency) admissions.
EMERGENCY_ADMISSION_TYPES: tuple[str, ...] = ("EW EMER.", "URGENT", "DIRECT EMER.")

# On-disk columns of one site (see shared/data/events.py for the full format).
STAY_REQUIRED_COLUMNS: tuple[str, ...] = (
    "stay_id",
    "intime",
    "outtime",
    "age",
    "gender",
    "admission_type",
    "first_careunit",
    LABEL,
)
STAY_OPTIONAL_COLUMNS: tuple[str, ...] = (
    "subject_id",
    "split",  # a fixed train / val / test split (shared/data/splits.py)
    "race",
    "marital_status",
    "insurance",
    "admission_location",
)
EVENT_REQUIRED_COLUMNS: tuple[str, ...] = ("stay_id", "charttime", "event_type", "event_text")
EVENT_OPTIONAL_COLUMNS: tuple[str, ...] = ("value",)

# Filled into a categorical column where the value (or the whole optional column) is missing.
UNKNOWN_CATEGORY = "unknown"

# Events are kept from this long before intime to this long after outtime (ED labs before the
# ICU transfer, charting lag after it); events outside are dropped and counted.
EVENT_HOURS_BEFORE_INTIME = 24.0
EVENT_HOURS_AFTER_OUTTIME = 1.0

# The site folder's two tables (each .csv or .csv.gz) and the event columns in load order.
STAYS_FILE = "stays"
EVENTS_FILE = "events"
EVENT_COLUMNS: tuple[str, ...] = ("stay_id", "charttime", "event_type", "event_text", "value")
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
