"""Synthetic ICU-event sites in the format shared/data/events.py reads (MIMIC-IV-like names and
values, planted mortality signal)."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.event_schema import EMERGENCY_ADMISSION_TYPES, EVENT_COLUMNS, LABEL, STATIC_CATEGORICAL
from shared.data.writers import write_csv, write_event_site
from shared.errors import InputError
from shared.io import write_text

# Lab items: label -> (median, spread, log-normal?) of the value. Names are MIMIC-IV d_labitems labels.
_LABS: dict[str, tuple[float, float, bool]] = {
    "Glucose": (125.0, 0.30, True),
    "Potassium": (4.1, 0.5, False),
    "Sodium": (139.0, 4.0, False),
    "Creatinine": (1.0, 0.55, True),
    "Chloride": (103.0, 5.0, False),
    "Urea Nitrogen": (20.0, 0.6, True),
    "Bicarbonate": (24.0, 4.0, False),
    "Anion Gap": (13.0, 3.0, False),
    "Hemoglobin": (10.2, 2.0, False),
    "Hematocrit": (31.0, 5.5, False),
    "Platelet Count": (200.0, 0.5, True),
    "White Blood Cells": (9.5, 0.45, True),
    "Magnesium": (2.0, 0.3, False),
    "Phosphate": (3.5, 0.9, False),
    "Calcium, Total": (8.6, 0.6, False),
    "PTT": (32.0, 0.25, True),
    "INR(PT)": (1.3, 0.25, True),
    "pH": (7.38, 0.06, False),
    "pO2": (105.0, 0.45, True),
    "pCO2": (41.0, 8.0, False),
    "Alanine Aminotransferase (ALT)": (30.0, 0.8, True),
    "Asparate Aminotransferase (AST)": (35.0, 0.8, True),
    "Bilirubin, Total": (0.8, 0.8, True),
    "Albumin": (3.2, 0.5, False),
}
_LAB_WEIGHTS = np.array([10, 9, 9, 9, 9, 9, 9, 8, 9, 9, 8, 8, 7, 7, 7, 5, 5, 4, 4, 4, 3, 3, 3, 2], float)

# Neutral prescriptions (MIMIC-IV prescriptions.drug spellings, tall-man lettering included).
_DRUGS = (
    "Insulin", "0.9% Sodium Chloride", "Potassium Chloride", "Sodium Chloride 0.9%  Flush", "Furosemide",
    "5% Dextrose", "Magnesium Sulfate", "Metoprolol Tartrate", "Acetaminophen", "HYDROmorphone (Dilaudid)",
    "Heparin", "Calcium Gluconate", "Vancomycin", "Docusate Sodium", "Senna", "Lactated Ringers",
    "Ondansetron", "Bisacodyl", "Lorazepam", "Aspirin", "Pantoprazole", "OxyCODONE (Immediate Release)",
    "Famotidine", "Atorvastatin", "Propofol", "Fentanyl Citrate", "Piperacillin-Tazobactam", "CefePIME",
    "Albuterol 0.083% Neb Soln", "Polyethylene Glycol", "Amiodarone", "PHENYLEPHrine",
)  # fmt: skip
_DRUG_WEIGHTS = np.array(
    [12, 11, 9, 9, 7, 7, 6, 6, 6, 5, 5, 4, 4, 4, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2], float
)
# Site-specific names for the same drug (brand names, local order-set spellings).
_DRUG_ALIASES: tuple[dict[str, str], ...] = (
    {},
    {"Furosemide": "Lasix", "Piperacillin-Tazobactam": "Zosyn", "Pantoprazole": "Protonix",
     "Lorazepam": "LORazepam", "Norepinephrine": "NORepinephrine"},
    {"Acetaminophen": "Acetaminophen IV", "Heparin": "Heparin Sodium", "Metoprolol Tartrate": "Lopressor",
     "Fentanyl Citrate": "Fentanyl", "Vancomycin": "Vancomycin HCl"},
)  # fmt: skip

# Neutral procedures (MIMIC-IV d_items labels of procedureevents).
_PROCEDURES = (
    "20 Gauge", "Chest X-Ray", "18 Gauge", "Arterial Line", "EKG", "CT scan", "Multi Lumen",
    "Family updated by RN", "PICC Line", "Foley Catheter", "Transthoracic Echo", "Ultrasound", "Nasal Swab",
    "Blood Cultured", "Urine Culture",
)  # fmt: skip
_PROCEDURE_WEIGHTS = np.array([10, 10, 7, 5, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 2], float)

# Ingredients (MIMIC-IV d_items labels of ingredientevents) -> (median amount, log spread).
_INGREDIENTS: dict[str, tuple[float, float]] = {
    "Water": (100.0, 0.7),
    "IVF ingredient": (250.0, 0.9),
    "Calories": (250.0, 0.6),
    "Oral/Gastric Ingredient": (120.0, 0.6),
    "Protein": (15.0, 0.6),
    "Enteral Nutrition Ingredient": (50.0, 0.5),
    "Blood Ingredient": (300.0, 0.15),
    "Calcium (ingr)": (1.0, 0.4),
    "Glucose (ingr)": (25.0, 0.5),
}
_INGREDIENT_WEIGHTS = np.array([40, 30, 14, 9, 2, 2, 1.5, 1, 0.5], float)

# Microbiology texts in the MIMIC-IV converter's format "<specimen> - <test>: <organism | no growth>".
_BLOOD_CULTURE = "BLOOD CULTURE - Blood Culture, Routine"
_MICRO_NEUTRAL = (
    f"{_BLOOD_CULTURE}: no growth",
    "URINE - URINE CULTURE: no growth",
    "URINE - URINE CULTURE: ESCHERICHIA COLI",
    "MRSA SCREEN: no growth",
    "SPUTUM - RESPIRATORY CULTURE: no growth",
    "SPUTUM - RESPIRATORY CULTURE: STAPH AUREUS COAG +",
    "STOOL - C. difficile PCR: no growth",
    f"{_BLOOD_CULTURE}: STAPHYLOCOCCUS, COAGULASE NEGATIVE",  # a skin contaminant, not a signal
)
_MICRO_WEIGHTS = np.array([30, 20, 6, 14, 10, 3, 6, 2], float)
_BLOOD_PATHOGENS = ("ESCHERICHIA COLI", "STAPH AUREUS COAG +", "KLEBSIELLA PNEUMONIAE", "ENTEROCOCCUS SP.")

# the schema's own levels, so a synthetic value is never "other"
_CAREUNITS = STATIC_CATEGORICAL["first_careunit"]
_CAREUNIT_LOGIT = np.array([0.3, 0.0, 0.2, -0.6, 0.1, 0.0, 0.2, 0.2, 0.2])
_ADMISSION_TYPES = STATIC_CATEGORICAL["admission_type"]
_PLANNED_ADMISSION_TYPES = ("ELECTIVE", "SURGICAL SAME DAY ADMISSION")
_RACES = (
    "WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN", "WHITE - OTHER EUROPEAN",
    "OTHER", "UNKNOWN", "PORTUGUESE",
)  # fmt: skip
_MARITAL = STATIC_CATEGORICAL["marital_status"]


@dataclass(frozen=True)
class _SiteProfile:
    """How one synthetic hospital differs: case mix, documentation habits, baseline risk."""

    prevalence: float
    age_mean: float
    careunit_p: tuple[float, ...]
    admission_p: tuple[float, ...]
    race_p: tuple[float, ...]
    events_median: float  # neutral events per 48 h stay
    type_mix: tuple[float, ...]  # neutral event share: prescription, procedure, lab, microbiology, ingredient
    lactate_rate: float  # share of stays with a lactate measured
    vasopressor_shift: float  # local practice: more or fewer vasopressor orders at equal severity
    drug_aliases: dict[str, str]
    omitted_columns: tuple[str, ...] = ()


_DEFAULT_PROFILES = (
    _SiteProfile(  # academic centre: cardiac surgery, many planned admissions, heavy documentation
        prevalence=0.10,
        age_mean=61.0,
        careunit_p=(0.20, 0.18, 0.12, 0.25, 0.10, 0.10, 0.01, 0.03, 0.01),
        admission_p=(0.35, 0.10, 0.05, 0.08, 0.12, 0.12, 0.15, 0.02, 0.01),
        race_p=(0.62, 0.14, 0.05, 0.06, 0.04, 0.04, 0.04, 0.01),
        events_median=70.0,
        type_mix=(0.28, 0.07, 0.42, 0.03, 0.20),
        lactate_rate=0.6,
        vasopressor_shift=0.2,
        drug_aliases=_DRUG_ALIASES[0],
    ),
    _SiteProfile(  # community hospital: medical units, mostly emergency admissions, sparse charting
        prevalence=0.18,
        age_mean=66.0,
        careunit_p=(0.35, 0.10, 0.30, 0.05, 0.15, 0.05, 0.0, 0.0, 0.0),
        admission_p=(0.50, 0.12, 0.06, 0.10, 0.12, 0.04, 0.04, 0.01, 0.01),
        race_p=(0.70, 0.10, 0.08, 0.02, 0.04, 0.02, 0.03, 0.01),
        events_median=48.0,
        type_mix=(0.34, 0.05, 0.40, 0.04, 0.17),
        lactate_rate=0.45,
        vasopressor_shift=-0.2,
        drug_aliases=_DRUG_ALIASES[1],
    ),
    _SiteProfile(  # safety-net hospital: older, sicker, medical ICU, no marital status recorded
        prevalence=0.28,
        age_mean=70.0,
        careunit_p=(0.45, 0.12, 0.20, 0.0, 0.12, 0.08, 0.0, 0.03, 0.0),
        admission_p=(0.60, 0.15, 0.06, 0.08, 0.07, 0.02, 0.01, 0.005, 0.005),
        race_p=(0.40, 0.30, 0.15, 0.03, 0.02, 0.04, 0.05, 0.01),
        events_median=90.0,
        type_mix=(0.25, 0.08, 0.45, 0.04, 0.18),
        lactate_rate=0.7,
        vasopressor_shift=0.0,
        drug_aliases=_DRUG_ALIASES[2],
        omitted_columns=("marital_status",),
    ),
)
_DEFAULT_SIZES = (400, 250, 120)
TRUTH_FILE = "synthetic_truth"  # .csv, beside the site folders


def synthesize_event_sites(
    out_dir: Path, n_sites: int = 3, sizes: list[int] | None = None, seed: int = 0
) -> list[Path]:
    """Write `n_sites` synthetic ICU-event sites (hospital_a, hospital_b, ...) under `out_dir`.

    Default sizes 400 / 250 / 120 stays, then 90, 68, ... (never below 40). Sites differ the
    way real hospitals do: mortality (about 10 %, 18 %, 28 %; later sites drawn in 8-30 %),
    age, care-unit and admission-type mix, charting density, local drug names and, at
    hospital_c, a missing optional column (marital_status). Each stay has 20-200 events
    (log-normal count). The in-hospital mortality logit is
        site intercept + 0.04 (age - 65) + 0.7 [emergency] - 0.4 [planned] + care-unit term
        + vasopressor (Norepinephrine / Vasopressin) 1.8 if ordered in the last 24 h, else 0.5
        + Invasive Ventilation 1.4 if charted in the last 24 h, else 0.4
        + Lactate > 4 mmol/L 1.4 in the last 24 h, else 0.4
        + positive blood culture (a pathogen, not a skin contaminant) 1.2
        + unobserved severity and noise (sd about 0.85),
    whose spread keeps an oracle on the true logit near AUROC 0.88 and a model on the observed
    events below it; site intercepts are solved to hit each site's mortality. Deterministic for
    a seed; site k's data do not depend on how many sites are written. Also writes README.txt
    and the ground truth (`synthetic_truth.csv`: site, stay_id, true_logit) beside, not inside,
    the site folders. Returns the site folders.
    """
    if not 1 <= n_sites <= 26:
        raise InputError(None, "n_sites", f"must be 1-26, got {n_sites}")
    if sizes is None:
        sizes = [
            _DEFAULT_SIZES[k] if k < 3 else max(40, round(120 * 0.75 ** (k - 2))) for k in range(n_sites)
        ]
    if len(sizes) != n_sites or any(int(s) < 1 for s in sizes):
        raise InputError(None, "sizes", f"need {n_sites} positive site sizes, got {sizes}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    site_dirs, truths = [], []
    for k in range(n_sites):
        name = f"hospital_{string.ascii_lowercase[k]}"
        rng = np.random.default_rng([seed, k])
        profile = _DEFAULT_PROFILES[k] if k < len(_DEFAULT_PROFILES) else _random_profile(rng)
        stays, events, true_logit = _simulate_site(profile, int(sizes[k]), k, rng)
        site_dirs.append(
            write_event_site(out_dir / name, stays.drop(columns=list(profile.omitted_columns)), events)
        )
        truths.append(pd.DataFrame({"site": name, "stay_id": stays["stay_id"], "true_logit": true_logit}))
    write_csv(pd.concat(truths, ignore_index=True), out_dir / f"{TRUTH_FILE}.csv")
    write_text(out_dir / "README.txt", _SYNTHETIC_README.format(seed=seed, n_sites=n_sites, sizes=sizes))
    return site_dirs


_SYNTHETIC_README = """\
SYNTHETIC DATA - NOT REAL PATIENTS.

Written by fedcare's synthesize_event_sites (seed {seed}, {n_sites} sites, sizes {sizes}).
Every stay, event, date and outcome here is simulated; nothing comes from a real hospital.
The site folders (hospital_a, ...) follow the ICU-event site format documented in
shared/data/events.py. Labels come from a known logit over age, admission type, care unit and
planted event signals (recent vasopressors, invasive ventilation, high lactate, a positive blood
culture) plus unobserved noise; synthetic_truth.csv holds that true logit per stay for
oracle comparisons and must not be used for training.
"""


def _random_profile(rng: np.random.Generator) -> _SiteProfile:
    alias_pool = {**_DRUG_ALIASES[1], **_DRUG_ALIASES[2]}
    chosen = rng.choice(sorted(alias_pool), size=3, replace=False)
    return _SiteProfile(
        prevalence=float(rng.uniform(0.08, 0.30)),
        age_mean=float(rng.uniform(58.0, 72.0)),
        careunit_p=tuple(rng.dirichlet(np.full(len(_CAREUNITS), 1.0))),
        admission_p=tuple(rng.dirichlet(np.array([8, 2, 1, 1.5, 2, 1.5, 1.5, 0.3, 0.2]))),
        race_p=tuple(rng.dirichlet(np.array([10, 3, 1.5, 1, 1, 0.8, 0.8, 0.3]))),
        events_median=float(rng.uniform(45.0, 90.0)),
        type_mix=tuple(rng.dirichlet(60 * np.array([0.28, 0.07, 0.42, 0.03, 0.20]))),
        lactate_rate=float(rng.uniform(0.4, 0.7)),
        vasopressor_shift=float(rng.uniform(-0.3, 0.3)),
        drug_aliases={str(name): alias_pool[str(name)] for name in chosen},
    )


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))


def _simulate_site(
    profile: _SiteProfile, n: int, site_index: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Statics, events and the true mortality logit of one synthetic site."""
    stays = _simulate_statics(profile, n, site_index, rng)
    los_hours = (stays["outtime"] - stays["intime"]).dt.total_seconds().to_numpy() / 3600.0
    severity = rng.normal(size=n)  # unobserved
    event_tables, signal_logit = [], np.zeros(n)
    for i in range(n):
        table, signal_logit[i] = _simulate_stay_events(profile, los_hours[i], severity[i], rng)
        table["stay_id"] = stays["stay_id"].iat[i]
        table["charttime"] = stays["intime"].iat[i] + pd.to_timedelta(table.pop("hours"), unit="h")
        event_tables.append(table)
    events = pd.concat(event_tables, ignore_index=True)
    events["charttime"] = events["charttime"].dt.floor("min")
    events = events.sort_values(["stay_id", "charttime"], kind="stable")[list(EVENT_COLUMNS)]

    admission = stays["admission_type"].to_numpy()
    unit_logit = _CAREUNIT_LOGIT[pd.Index(_CAREUNITS).get_indexer(stays["first_careunit"])]
    observed = (
        0.04 * (stays["age"].to_numpy() - 65.0)
        + 0.7 * np.isin(admission, EMERGENCY_ADMISSION_TYPES)
        - 0.4 * np.isin(admission, _PLANNED_ADMISSION_TYPES)
        + unit_logit
        + signal_logit
    )
    hidden = 0.6 * severity + rng.normal(scale=0.6, size=n)
    logit = observed + hidden
    logit += _intercept_for_prevalence(logit, profile.prevalence)
    stays[LABEL] = (rng.uniform(size=n) < _sigmoid(logit)).astype(np.int64)
    return stays, events, logit


def _intercept_for_prevalence(logit: np.ndarray, prevalence: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < prevalence else (lo, mid)
    return (lo + hi) / 2


def _simulate_statics(
    profile: _SiteProfile, n: int, site_index: int, rng: np.random.Generator
) -> pd.DataFrame:
    block = 1_000_000 * (site_index + 1)
    stay_id = 30_000_000 + block + np.sort(rng.choice(900_000, size=n, replace=False))
    subject_id = 10_000_000 + block + rng.choice(900_000, size=n, replace=False)
    age = np.clip(rng.normal(profile.age_mean, 16.0, size=n), 18.0, 91.0).round()
    admission = rng.choice(_ADMISSION_TYPES, size=n, p=_normalized(profile.admission_p))
    emergency = np.isin(admission, EMERGENCY_ADMISSION_TYPES)
    planned = np.isin(admission, _PLANNED_ADMISSION_TYPES)
    location = np.where(
        emergency,
        rng.choice(
            ["EMERGENCY ROOM", "TRANSFER FROM HOSPITAL", "WALK-IN/SELF REFERRAL"], size=n, p=[0.75, 0.2, 0.05]
        ),
        np.where(
            planned,
            rng.choice(
                ["PHYSICIAN REFERRAL", "PROCEDURE SITE", "CLINIC REFERRAL"], size=n, p=[0.8, 0.1, 0.1]
            ),
            rng.choice(["EMERGENCY ROOM", "PHYSICIAN REFERRAL", "PACU"], size=n, p=[0.6, 0.3, 0.1]),
        ),
    )
    insurance = np.where(
        age >= 65,
        rng.choice(["Medicare", "Private", "Other"], size=n, p=[0.8, 0.1, 0.1]),
        rng.choice(["Private", "Medicaid", "Other", "No charge"], size=n, p=[0.45, 0.3, 0.23, 0.02]),
    )
    marital = rng.choice(_MARITAL, size=n, p=[0.42, 0.3, 0.16, 0.12]).astype(object)
    marital[rng.uniform(size=n) < 0.05] = ""  # not recorded
    intime = pd.Timestamp("2130-01-01") + pd.to_timedelta(rng.uniform(0, 70 * 365.25 * 24, size=n), unit="h")
    los_hours = np.clip(rng.lognormal(np.log(50.0), 0.8, size=n), 8.0, 24.0 * 30)
    intime = intime.floor("min")
    return pd.DataFrame(
        {
            "stay_id": stay_id,
            "subject_id": subject_id,
            "intime": intime,
            "outtime": (intime + pd.to_timedelta(los_hours, unit="h")).floor("min"),
            "age": age,
            "gender": rng.choice(["M", "F"], size=n, p=[0.56, 0.44]),
            "admission_type": admission,
            "first_careunit": rng.choice(_CAREUNITS, size=n, p=_normalized(profile.careunit_p)),
            "race": rng.choice(_RACES, size=n, p=_normalized(profile.race_p)),
            "marital_status": marital,
            "insurance": insurance,
            "admission_location": location,
        }
    )


def _normalized(p: tuple[float, ...]) -> np.ndarray:
    arr = np.asarray(p, float)
    return arr / arr.sum()


def _simulate_stay_events(
    profile: _SiteProfile, los: float, severity: float, rng: np.random.Generator
) -> tuple[pd.DataFrame, float]:
    """One stay's events (hours after intime) and the logit its planted signals contribute."""
    recent_from = max(0.0, los - 24.0)
    parts: list[tuple[np.ndarray, str, np.ndarray, np.ndarray]] = []  # (hours, type, texts, values)
    logit = 0.0

    def add(hours: np.ndarray, event_type: str, texts: np.ndarray, values: np.ndarray | None = None) -> None:
        parts.append((hours, event_type, texts, np.full(len(hours), np.nan) if values is None else values))

    def signal_hours(count: int, p_recent: float) -> np.ndarray:
        if recent_from == 0.0 or rng.uniform() < p_recent:
            return rng.uniform(recent_from, los, size=count)
        return rng.uniform(0.0, recent_from, size=count)

    # Planted signals, each more likely (and more likely to persist to the end) when sicker.
    if rng.uniform() < _sigmoid(-1.6 + 1.1 * severity + profile.vasopressor_shift):
        count = int(rng.integers(1, 4))
        hours = signal_hours(count, float(_sigmoid(0.8 * severity)))
        drugs = np.where(rng.uniform(size=count) < 0.7, "Norepinephrine", "Vasopressin")
        add(hours, "prescription", _aliased(drugs, profile.drug_aliases))
        logit += 1.8 if (hours >= recent_from).any() else 0.5
    if rng.uniform() < _sigmoid(-1.0 + 0.9 * severity):
        start = rng.uniform(0.0, max(recent_from, 0.5) * 0.7)
        ongoing = rng.uniform() < _sigmoid(0.2 + 0.8 * severity)
        end = los if ongoing else rng.uniform(start, max(start + 1.0, recent_from))
        vent_hours = np.arange(start, end, 24.0)  # re-charted once a day while ventilated
        add(np.array([start]), "procedure", np.array(["Intubation"]))
        add(vent_hours, "procedure", np.full(len(vent_hours), "Invasive Ventilation"))
        if not ongoing:
            add(np.array([end]), "procedure", np.array(["Extubation"]))
        logit += 1.4 if (vent_hours >= recent_from).any() else 0.4
    if rng.uniform() < profile.lactate_rate * (0.7 + 0.3 * _sigmoid(severity)):
        count = int(rng.integers(1, 5))
        hours = np.sort(rng.uniform(0.0, los, size=count))
        high = rng.uniform() < _sigmoid(-1.3 + 1.0 * severity)
        values = rng.lognormal(np.log(5.5 if high else 1.6), 0.3, size=count).round(1)
        add(hours, "lab", np.full(count, "Lactate"), values)
        elevated = values > 4.0
        logit += 1.4 if (elevated & (hours >= recent_from)).any() else 0.4 if elevated.any() else 0.0
    if rng.uniform() < _sigmoid(-2.6 + 0.8 * severity):
        organism = _BLOOD_PATHOGENS[int(rng.integers(len(_BLOOD_PATHOGENS)))]
        add(rng.uniform(0.0, los, size=1), "microbiology", np.array([f"{_BLOOD_CULTURE}: {organism}"]))
        logit += 1.2
    planted = sum(len(part[0]) for part in parts)

    # Neutral background: routine labs in draws, orders, fluids, procedures, screening cultures.
    scale = profile.events_median * (los / 48.0) ** 0.35
    n_neutral = int(np.clip(rng.lognormal(np.log(scale), 0.5), 20, 200 - planted))
    n_rx, n_proc, n_lab, n_micro, n_ingr = rng.multinomial(
        n_neutral, _normalized(profile.type_mix)
    )  # EVENT_TYPES
    if n_lab:
        ed_draw = rng.uniform(-6.0, 0.0, size=int(rng.uniform() < 0.3))  # labs drawn in the ED before intime
        draws = np.concatenate([ed_draw, rng.uniform(0.0, los, size=max(1, n_lab // 7))])
        names = rng.choice(list(_LABS), size=n_lab, p=_normalized(_LAB_WEIGHTS))
        add(rng.choice(draws, size=n_lab), "lab", names, _lab_values(names, rng))
    drugs = rng.choice(_DRUGS, size=n_rx, p=_normalized(_DRUG_WEIGHTS))
    add(np.floor(rng.uniform(0.0, los, size=n_rx)), "prescription", _aliased(drugs, profile.drug_aliases))
    procedures = rng.choice(_PROCEDURES, size=n_proc, p=_normalized(_PROCEDURE_WEIGHTS))
    add(rng.uniform(0.0, los, size=n_proc), "procedure", procedures)
    cultures = rng.choice(_MICRO_NEUTRAL, size=n_micro, p=_normalized(_MICRO_WEIGHTS))
    add(rng.uniform(0.0, los, size=n_micro), "microbiology", cultures)
    items = rng.choice(list(_INGREDIENTS), size=n_ingr, p=_normalized(_INGREDIENT_WEIGHTS))
    median = np.array([_INGREDIENTS[i][0] for i in items])
    spread = np.array([_INGREDIENTS[i][1] for i in items])
    amounts = (median * np.exp(spread * rng.normal(size=n_ingr))).round(1)
    add(np.floor(rng.uniform(0.0, los, size=n_ingr)), "ingredient", items, amounts)
    table = pd.DataFrame(
        {
            "hours": np.concatenate([part[0] for part in parts]),
            "event_type": np.concatenate([np.full(len(part[0]), part[1]) for part in parts]),
            "event_text": np.concatenate([part[2] for part in parts]).astype(object),
            "value": np.concatenate([part[3] for part in parts]),
        }
    )
    return table, logit


def _aliased(names: np.ndarray, aliases: dict[str, str]) -> np.ndarray:
    return np.array([aliases.get(str(name), str(name)) for name in names], dtype=object)


def _lab_values(names: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    median = np.array([_LABS[n][0] for n in names])
    spread = np.array([_LABS[n][1] for n in names])
    lognormal = np.array([_LABS[n][2] for n in names])
    noise = rng.normal(size=len(names))
    values = np.where(lognormal, median * np.exp(spread * noise), median + spread * noise)
    return np.round(values, 2)
