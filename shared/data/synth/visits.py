"""Synthetic AKI visit sites in the format shared/data/visits.py reads (planted creatinine-trajectory
signal)."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.visit_schema import FEATURES, LABEL, VISIT_COLUMNS
from shared.data.writers import write_csv, write_visit_site
from shared.errors import InputError
from shared.io import write_text


@dataclass(frozen=True)
class _SiteProfile:
    """How one synthetic hospital differs: case mix, assay calibration, charting habits."""

    prevalence: float
    ckd_rate: float  # share of patients with chronic kidney disease (high baseline creatinine)
    creatinine_assay: float  # multiplicative calibration of the creatinine assay (Jaffe vs enzymatic)
    sodium_offset: float  # mmol/L, analyser offset
    missing_rate: float  # per lab value, urine output excepted
    urine_missing_rate: float
    visit_gap_days: float  # median days between visits
    integer_ids: bool  # patient and visit ids as numbers (else text like "P-000017")


_DEFAULT_PROFILES = (
    _SiteProfile(0.12, 0.15, 1.00, 0.0, 0.05, 0.25, 4.0, True),  # academic centre, enzymatic assay
    _SiteProfile(0.20, 0.22, 1.12, -2.0, 0.10, 0.45, 7.0, False),  # community hospital, Jaffe assay
    _SiteProfile(0.30, 0.32, 0.93, 1.5, 0.15, 0.65, 2.5, False),  # safety-net hospital, sparse charting
)
_DEFAULT_SIZES = (500, 300, 150)
MIN_VISITS, MAX_SYNTH_VISITS = 3, 20
TRUTH_FILE = "synthetic_truth.csv"  # beside the site folders


def synthesize_visit_sites(out_dir: Path, n_sites: int = 3, sizes: list[int] | None = None, seed: int = 0) -> list[Path]:
    """Write `n_sites` synthetic visit sites (hospital_a, hospital_b, ...) under `out_dir`.

    Default sizes 500 / 300 / 150 patients, then 110, 80, ... (never below 40); 3-20 visits per
    patient. Sites differ as hospitals do: AKI prevalence (12 %, 20 %, 30 %; later sites drawn in
    10-30 %), CKD case mix, creatinine assay calibration (x1.00, x1.12, x0.93), a sodium analyser
    offset, missing values (5-15 % per lab, 25-65 % for urine output), visit spacing and id style.

    Per patient, a hidden baseline creatinine (higher with CKD) and a hidden risk r drive the labs.
    With probability sigmoid(-1.2 + 1.2 r) an injury begins at one of the last three visits and
    creatinine climbs from there by 15-50 % of baseline per visit (BUN and potassium rise, urine
    output, bicarbonate and eGFR fall with it); with probability 0.35 an earlier, resolved episode
    of the same kind happens in the first half of the history (a decoy: it does not raise the risk).
    Labs carry 6-20 % measurement noise. The AKI logit is
        site intercept + 5.5 log(creatinine at the last visit / baseline) + 0.6 [CKD] + 0.4 r
        + 0.3 [baseline BUN-to-creatinine ratio above 20] + N(0, 0.5) unobserved noise,
    so recent rises matter and old ones do not. An oracle on the true logit reaches AUROC
    0.85-0.9 at the two larger sites; logistic regression on hand-made trajectory features of the
    observed labs, 0.8-0.87 (less at the small, sparsely charted hospital_c). Site intercepts are
    solved to hit each site's prevalence.
    Deterministic for a seed; site k does not depend on how many sites are written. Also writes
    README.txt and the ground truth (synthetic_truth.csv: site, patient_id, true_logit) beside,
    not inside, the site folders. Returns the site folders.
    """
    if not 1 <= n_sites <= 26:
        raise InputError(None, "n_sites", f"must be 1-26, got {n_sites}")
    if sizes is None:
        sizes = [_DEFAULT_SIZES[k] if k < 3 else max(40, round(150 * 0.75 ** (k - 2))) for k in range(n_sites)]
    if len(sizes) != n_sites or any(int(s) < 1 for s in sizes):
        raise InputError(None, "sizes", f"need {n_sites} positive site sizes, got {sizes}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    site_dirs, truths = [], []
    for k in range(n_sites):
        name = f"hospital_{string.ascii_lowercase[k]}"
        rng = np.random.default_rng([seed, k, 7])
        profile = _DEFAULT_PROFILES[k] if k < len(_DEFAULT_PROFILES) else _random_profile(rng)
        visits, labels, true_logit = _simulate_site(profile, int(sizes[k]), k, rng)
        site_dirs.append(write_visit_site(out_dir / name, visits, labels))
        truths.append(pd.DataFrame({"site": name, "patient_id": labels["patient_id"], "true_logit": true_logit}))
    write_csv(pd.concat(truths, ignore_index=True), out_dir / TRUTH_FILE, float_format="%.4g")
    write_text(out_dir / "README.txt", _SYNTHETIC_README.format(seed=seed, n_sites=n_sites, sizes=sizes))
    return site_dirs


_SYNTHETIC_README = """\
SYNTHETIC DATA - NOT REAL PATIENTS.

Written by fedcare's synthesize_visit_sites (seed {seed}, {n_sites} sites, sizes {sizes}).
Every patient, visit, lab value, date and outcome here is simulated; nothing comes from a real
hospital. The site folders (hospital_a, ...) follow the visit site format documented in
shared/data/visits.py. AKI labels come from a known logit over the recent creatinine trajectory,
chronic kidney disease and a hidden risk, plus unobserved noise; synthetic_truth.csv holds that
true logit per patient for oracle comparisons and must not be used for training.
"""


def _random_profile(rng: np.random.Generator) -> _SiteProfile:
    return _SiteProfile(
        prevalence=float(rng.uniform(0.10, 0.30)),
        ckd_rate=float(rng.uniform(0.12, 0.32)),
        creatinine_assay=float(rng.uniform(0.9, 1.15)),
        sodium_offset=float(rng.uniform(-2.0, 2.0)),
        missing_rate=float(rng.uniform(0.05, 0.15)),
        urine_missing_rate=float(rng.uniform(0.25, 0.65)),
        visit_gap_days=float(rng.uniform(2.0, 8.0)),
        integer_ids=bool(rng.uniform() < 0.5),
    )


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))


def _injury_curve(n_visits: int, onset: int, rate: float) -> np.ndarray:
    """Creatinine multiplier per visit: 1 before `onset`, then 1 + rate, 1 + 2 rate, ..."""
    steps = np.arange(n_visits) - onset + 1
    return 1.0 + rate * np.clip(steps, 0, None)


def _simulate_site(
    profile: _SiteProfile, n: int, site_index: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Visits, labels and the true AKI logit of one synthetic site."""
    n_visits = rng.integers(MIN_VISITS, MAX_SYNTH_VISITS + 1, size=n)
    ckd = rng.uniform(size=n) < profile.ckd_rate
    risk = rng.normal(size=n)  # hidden
    age = np.clip(rng.normal(64.0, 14.0, size=n), 18.0, 95.0)
    baseline_cr = rng.lognormal(np.log(np.where(ckd, 1.7, 0.85)), 0.2)
    prerenal = rng.uniform(size=n) < 0.25  # baseline BUN-to-creatinine ratio above 20
    injured = rng.uniform(size=n) < _sigmoid(-1.2 + 1.2 * risk)
    decoy = rng.uniform(size=n) < 0.35

    rows, final_multiplier = [], np.ones(n)
    start = pd.Timestamp("2140-01-01") + pd.to_timedelta(rng.uniform(0, 40 * 365.25, size=n), unit="D")
    for i in range(n):
        t = int(n_visits[i])
        multiplier = np.ones(t)
        if injured[i]:
            onset = t - int(rng.integers(1, min(3, t) + 1))  # one of the last three visits
            multiplier *= _injury_curve(t, onset, rng.uniform(0.15, 0.5))
        if decoy[i] and t >= 6:
            onset = int(rng.integers(0, t // 2 - 1))
            episode = _injury_curve(t, onset, rng.uniform(0.2, 0.5))
            episode[onset + int(rng.integers(1, 3)) :] = 1.0  # resolved one or two visits later
            multiplier *= episode
        final_multiplier[i] = multiplier[-1]
        gaps = rng.lognormal(np.log(profile.visit_gap_days), 0.7, size=t)
        times = start[i] + pd.to_timedelta(np.cumsum(gaps) - gaps[0], unit="D")
        labs = _simulate_labs(profile, baseline_cr[i] * multiplier, multiplier, ckd[i], prerenal[i], age[i], rng)
        rows.append(labs.assign(patient=i, timestamp=times.floor("min")))
    visits = pd.concat(rows, ignore_index=True)

    logit = 5.5 * np.log(final_multiplier) + 0.6 * ckd + 0.4 * risk + 0.3 * prerenal + rng.normal(0.0, 0.5, size=n)
    logit += _intercept_for_prevalence(logit, profile.prevalence)
    aki = (rng.uniform(size=n) < _sigmoid(logit)).astype(np.int64)

    patient_ids, visit_ids = _site_ids(profile, n, len(visits), site_index, rng)
    visits["patient_id"] = patient_ids[visits.pop("patient").to_numpy()]
    visits["visit_id"] = visit_ids
    visits = visits.sample(frac=1.0, random_state=int(rng.integers(2**31))).reset_index(drop=True)  # files are unordered
    return visits[list(VISIT_COLUMNS)], pd.DataFrame({"patient_id": patient_ids, LABEL: aki}), logit


def _simulate_labs(
    profile: _SiteProfile,
    creatinine: np.ndarray,
    multiplier: np.ndarray,
    ckd: bool,
    prerenal: bool,
    age: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """One patient's labs per visit from the true creatinine trajectory (mg/dL) and injury multiplier."""
    t = len(creatinine)

    def noise(scale: float) -> np.ndarray:
        return rng.normal(0.0, scale, size=t)

    log_rise = np.log(multiplier)
    measured_cr = creatinine * np.exp(noise(0.08))
    labs = {
        "creatinine": measured_cr * profile.creatinine_assay,
        "bun": 14.0 * creatinine**0.9 * (1.45 if prerenal else 1.0) * np.exp(0.4 * log_rise + noise(0.18)),
        # on the true creatinine: the site's lab reports eGFR from a calibrated method
        "egfr": _ckd_epi_2021(creatinine, age) * np.exp(noise(0.06)),
        "potassium": 4.1 + 0.25 * ckd + 0.8 * log_rise + noise(0.35),
        "sodium": 139.0 + profile.sodium_offset + noise(3.0),
        "bicarbonate": 24.5 - 1.5 * ckd - 3.0 * log_rise + noise(2.2),
        "hemoglobin": 12.8 - 1.4 * ckd + rng.normal(0.0, 1.2) + noise(0.6),
        "urine_output": np.exp(np.log(1.0) - 1.2 * log_rise + noise(0.35)),
    }
    frame = pd.DataFrame({name: np.clip(values, 0.0, None) for name, values in labs.items()})
    for name in FEATURES:
        rate = profile.urine_missing_rate if name == "urine_output" else profile.missing_rate
        if name == "creatinine":
            rate /= 3.0  # creatinine is almost always drawn
        frame.loc[rng.uniform(size=t) < rate, name] = np.nan
    return frame


def _ckd_epi_2021(creatinine: np.ndarray, age: float) -> np.ndarray:
    """eGFR (mL/min/1.73 m2) by the 2021 race-free CKD-EPI equation, female and male constants averaged."""
    ratio = creatinine / 0.8
    return 142.0 * np.minimum(ratio, 1.0) ** -0.3 * np.maximum(ratio, 1.0) ** -1.2 * 0.9938**age


def _site_ids(
    profile: _SiteProfile, n: int, n_rows: int, site_index: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    block = 1_000_000 * (site_index + 1)
    patients = block + rng.choice(900_000, size=n, replace=False)
    visits = 10 * block + rng.choice(9_000_000, size=n_rows, replace=False)
    if profile.integer_ids:
        return patients.astype(str), visits.astype(str)
    return np.array([f"P-{p:07d}" for p in patients]), np.array([f"V-{v:08d}" for v in visits])


def _intercept_for_prevalence(logit: np.ndarray, prevalence: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < prevalence else (lo, mid)
    return (lo + hi) / 2
