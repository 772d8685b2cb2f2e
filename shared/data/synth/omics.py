"""Synthetic multimodal (omics + clinical notes) sites in the format shared/data/omics.py reads; both
modalities carry planted signal."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.omics_schema import EVENT, LABEL, LABEL_TYPES, NOTE_TEXT, PATIENT_ID, TIME
from shared.data.writers import write_csv, write_multimodal_site
from shared.errors import InputError
from shared.io import write_text

SYNTHETIC_GENES: tuple[str, ...] = tuple(f"GENE{k:03d}" for k in range(1, 101))
PANEL_SEED = (2027, 999)
# Informative genes: loading of the omics risk factor on log expression.
_INFORMATIVE_GENES = {
    "GENE007": 0.9, "GENE013": -0.8, "GENE021": 0.7, "GENE034": 0.8, "GENE046": 0.6,
    "GENE058": -0.7, "GENE063": 0.6, "GENE072": 0.7, "GENE085": -0.6, "GENE091": 0.8,
}  # fmt: skip
_RISK_FINDINGS = (
    "metastatic disease", "poorly differentiated tumour", "lymph node involvement", "lymphovascular invasion",
    "high mitotic rate", "tumour necrosis", "unintentional weight loss", "rising tumour markers",
)  # fmt: skip
_FAVOURABLE_FINDINGS = (
    "well differentiated tumour", "clear surgical margins", "no nodal disease", "low grade histology",
    "good performance status", "stable disease on imaging", "normal tumour markers", "complete response to therapy",
)  # fmt: skip
_SOURCES = ("CT", "MRI", "biopsy", "PET-CT", "ultrasound", "pathology review")
_FINDING_TEMPLATES = (
    "Pathology: {f}.", "{src} shows {f}.", "Impression: {f}.", "Findings consistent with {f}.",
    "Assessment notable for {f}.", "{f} documented on {src}.",
)  # fmt: skip
_FILLER_SENTENCES = (
    "Patient seen in oncology clinic.", "Vital signs stable.", "Medications reviewed and reconciled.",
    "Discussed plan with patient and family.", "Follow-up in four weeks.", "Tolerating oral intake.",
    "No acute distress.", "Labs reviewed.", "Consent obtained for next cycle.", "Social work referral placed.",
)  # fmt: skip
_OMICS_WEIGHT, _TEXT_WEIGHT, _NOISE_SD = 2.0, 2.0, 0.5  # true logit = intercept + these x the two factors + noise


@dataclass(frozen=True)
class _MultimodalSiteProfile:
    """How one synthetic hospital differs: case mix, assay batch, documentation, missingness."""

    prevalence: float  # binary labels
    baseline_median_days: float  # survival labels: median time to event at zero risk
    library_shift: float  # log-scale sequencing depth of the site's assay
    batch_sd: float  # sd of the site's per-gene log offsets
    value_missing: float  # fraction of omics values left empty
    notes_missing: float  # fraction of patients without notes
    omics_missing: float  # fraction of patients without a profile
    notes_per_patient: float  # mean extra notes (1 + Poisson)
    extra_columns: tuple[str, ...] = ()  # omics columns outside the panel
    unknown_patient_rows: int = 0  # omics rows and notes of patients absent from labels.csv


_DEFAULT_MULTIMODAL_PROFILES = (
    _MultimodalSiteProfile(0.25, 1400.0, 0.0, 0.25, 0.01, 0.12, 0.06, 0.8),
    _MultimodalSiteProfile(0.35, 1100.0, 0.6, 0.35, 0.02, 0.18, 0.09, 1.2, unknown_patient_rows=3),
    _MultimodalSiteProfile(0.45, 900.0, -0.5, 0.30, 0.015, 0.15, 0.07, 0.5, extra_columns=("GENE101", "assay_plate")),
)
_DEFAULT_MULTIMODAL_SIZES = (300, 200, 120)


def synthesize_multimodal_sites(
    out_dir: Path, n_sites: int = 3, sizes: list[int] | None = None, seed: int = 0, label: str = "binary"
) -> list[Path]:
    """Write `n_sites` synthetic omics + notes sites (hospital_a, ...) under `out_dir`.

    Default sizes 300 / 200 / 120 patients, then 100, 80, ... (never below 60). Each patient has
    two hidden risk factors, one expressed in the omics and one in the notes, so both modalities
    carry signal; the true logit is
        site intercept + 1.3 omics factor + 1.3 text factor + noise (sd 0.6).
    Omics: counts of the 100 panel genes (SYNTHETIC_GENES, Poisson around log-normal means),
    ten informative genes loading on the omics factor, three co-expression modules of noise genes,
    and per-site batch effects (sequencing depth, per-gene offsets), 1-2 % empty values.
    Notes: 1 + Poisson notes per patient of templated sentences mixing findings (risk findings such
    as "lymph node involvement" more likely with a high text factor, favourable ones such as "clear
    surgical margins" otherwise) with routine sentences. Sites differ in prevalence (25 / 35 / 45 %
    for binary labels), baseline hazard (survival labels: exponential times, administrative
    censoring after 1-8 years), assay batch, how many notes they write, and missingness: 12-18 %
    of patients without notes, 6-9 % without omics (never both). hospital_b also holds omics rows
    and notes of 3 patients absent from labels.csv, hospital_c two extra omics columns.
    With label="survival" labels.csv holds time (days) and event instead of label.
    Deterministic for a seed; site k's data do not depend on how many sites are written. Writes
    README.txt and synthetic_truth.csv (site, patient_id, true_logit) beside the site folders.
    """
    if label not in LABEL_TYPES:
        raise InputError(None, "label", f"must be one of {', '.join(LABEL_TYPES)}, got {label!r}")
    if not 1 <= n_sites <= 26:
        raise InputError(None, "n_sites", f"must be 1-26, got {n_sites}")
    if sizes is None:
        sizes = [
            _DEFAULT_MULTIMODAL_SIZES[k] if k < 3 else max(60, round(120 * 0.8 ** (k - 2))) for k in range(n_sites)
        ]
    if len(sizes) != n_sites or any(int(s) < 1 for s in sizes):
        raise InputError(None, "sizes", f"need {n_sites} positive site sizes, got {sizes}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panel = _gene_panel(np.random.default_rng(PANEL_SEED))  # the genes' biology: the same for every seed
    site_dirs, truths = [], []
    for k in range(n_sites):
        name = f"hospital_{string.ascii_lowercase[k]}"
        rng = np.random.default_rng([seed, k])
        profile = _DEFAULT_MULTIMODAL_PROFILES[k] if k < len(_DEFAULT_MULTIMODAL_PROFILES) else _random_profile(rng)
        labels, omics, notes, truth = _simulate_multimodal_site(profile, panel, int(sizes[k]), k, label, rng)
        site_dirs.append(write_multimodal_site(out_dir / name, labels, omics, notes))
        truths.append(truth.assign(site=name)[["site", PATIENT_ID, "true_logit"]])
    write_csv(pd.concat(truths, ignore_index=True), out_dir / "synthetic_truth.csv", float_format="%.6g")
    write_text(out_dir / "README.txt", _SYNTHETIC_README.format(seed=seed, n_sites=n_sites, sizes=sizes, label=label))
    return site_dirs


_SYNTHETIC_README = """\
SYNTHETIC DATA - NOT REAL PATIENTS.

Written by fedcare's synthesize_multimodal_sites (seed {seed}, {n_sites} sites, sizes {sizes},
{label} labels). Every patient, gene count, note and outcome here is simulated. The site folders
(hospital_a, ...) follow the multimodal site format documented in shared/data/omics.py; the omics
panel is GENE001-GENE100. Labels come from two hidden risk factors, one expressed in ten genes
and one in the findings the notes mention, plus noise; synthetic_truth.csv holds the true logit
per patient for oracle comparisons and must not be used for training.
"""


@dataclass(frozen=True)
class _GenePanel:
    log_mean: np.ndarray  # (G,) log expression at zero factors
    module: np.ndarray  # (G,) co-expression module 0-2 of a noise gene, -1 = none
    loading: np.ndarray  # (G,) loading on the omics risk factor


def _gene_panel(rng: np.random.Generator) -> _GenePanel:
    """Baseline expression, co-expression modules and outcome loadings of the panel genes. Fixed (PANEL_SEED):
    a public reference of the panel (shared/data/omics.py REFERENCE_OMICS) describes every synthetic draw."""
    n = len(SYNTHETIC_GENES)
    module = np.full(n, -1)
    noise_genes = [g for g, name in enumerate(SYNTHETIC_GENES) if name not in _INFORMATIVE_GENES]
    module[rng.choice(noise_genes, size=45, replace=False)] = np.repeat(np.arange(3), 15)
    loading = np.array([_INFORMATIVE_GENES.get(name, 0.0) for name in SYNTHETIC_GENES])
    log_mean = rng.uniform(1.5, 7.0, n)
    log_mean[loading != 0] = rng.uniform(4.0, 7.0, int((loading != 0).sum()))  # informative genes are well expressed
    return _GenePanel(log_mean, module, loading)


def _random_profile(rng: np.random.Generator) -> _MultimodalSiteProfile:
    return _MultimodalSiteProfile(
        prevalence=float(rng.uniform(0.2, 0.45)),
        baseline_median_days=float(rng.uniform(900.0, 1500.0)),
        library_shift=float(rng.normal(0.0, 0.5)),
        batch_sd=float(rng.uniform(0.2, 0.4)),
        value_missing=float(rng.uniform(0.005, 0.02)),
        notes_missing=float(rng.uniform(0.10, 0.20)),
        omics_missing=float(rng.uniform(0.05, 0.10)),
        notes_per_patient=float(rng.uniform(0.5, 1.2)),
    )


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))


def _intercept_for_prevalence(logit: np.ndarray, prevalence: float) -> float:
    low, high = -12.0, 12.0
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if _sigmoid(logit + middle).mean() < prevalence else (low, middle)
    return 0.5 * (low + high)


def _simulate_multimodal_site(
    profile: _MultimodalSiteProfile, panel: _GenePanel, n: int, site_index: int, label: str, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """labels, omics, notes and the truth (patient_id, true_logit) of one synthetic site."""
    letter = string.ascii_uppercase[site_index]
    ids = np.array([f"{letter}-{i:04d}" for i in range(1, n + 1)], dtype=object)
    omics_factor, text_factor = rng.normal(size=n), rng.normal(size=n)
    risk = _OMICS_WEIGHT * omics_factor + _TEXT_WEIGHT * text_factor + rng.normal(0.0, _NOISE_SD, n)
    if label == "binary":
        intercept = _intercept_for_prevalence(risk, profile.prevalence)
        labels = pd.DataFrame({PATIENT_ID: ids, LABEL: rng.binomial(1, _sigmoid(intercept + risk))})
    else:
        intercept = 0.0
        hazard = np.log(2.0) / profile.baseline_median_days * np.exp(0.6 * risk)
        event_time = rng.exponential(1.0 / hazard)
        censor_time = rng.uniform(365.0, 8 * 365.0, n)
        time = np.round(np.minimum(event_time, censor_time), 1)
        labels = pd.DataFrame({PATIENT_ID: ids, TIME: time, EVENT: (event_time <= censor_time).astype(int)})
    no_notes = rng.random(n) < profile.notes_missing
    no_omics = ~no_notes & (rng.random(n) < profile.omics_missing / max(1e-9, 1.0 - profile.notes_missing))
    counts = _simulate_counts(profile, panel, omics_factor, rng)
    omics = pd.DataFrame(counts, columns=list(SYNTHETIC_GENES))
    omics.insert(0, PATIENT_ID, ids)
    omics = omics[~no_omics]
    written = [(pid, note) for pid, t in zip(ids[~no_notes], text_factor[~no_notes]) for note in _simulate_notes(t, profile, rng)]
    notes = pd.DataFrame(written, columns=[PATIENT_ID, NOTE_TEXT])
    if profile.unknown_patient_rows:
        strangers = np.array([f"{letter}-X{i:03d}" for i in range(profile.unknown_patient_rows)], dtype=object)
        stranger_counts = _simulate_counts(profile, panel, rng.normal(size=len(strangers)), rng)
        stranger_omics = pd.DataFrame(stranger_counts, columns=list(SYNTHETIC_GENES))
        stranger_omics.insert(0, PATIENT_ID, strangers)
        omics = pd.concat([omics, stranger_omics], ignore_index=True)
        stranger_notes = [(p, note) for p in strangers for note in _simulate_notes(float(rng.normal()), profile, rng)]
        notes = pd.concat([notes, pd.DataFrame(stranger_notes, columns=[PATIENT_ID, NOTE_TEXT])], ignore_index=True)
    for col in profile.extra_columns:
        omics[col] = rng.poisson(50.0, len(omics)) if col.startswith("GENE") else rng.choice(["P1", "P2", "P3"], len(omics))
    truth = pd.DataFrame({PATIENT_ID: ids, "true_logit": intercept + risk})
    return labels, omics, notes, truth


def _simulate_counts(
    profile: _MultimodalSiteProfile, panel: _GenePanel, omics_factor: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(n, G) gene counts with this site's batch effects; NaN = value left empty."""
    n, g = len(omics_factor), len(panel.log_mean)
    modules = rng.normal(size=(n, 3))
    module_effect = np.where(panel.module >= 0, 0.5 * modules[:, np.clip(panel.module, 0, None)], 0.0)  # (n, G)
    batch = rng.normal(0.0, profile.batch_sd, g)  # the site's per-gene offsets
    depth = profile.library_shift + rng.normal(0.0, 0.15, (n, 1))  # per-sample sequencing depth
    log_expr = panel.log_mean + batch + depth + module_effect + np.outer(omics_factor, panel.loading) + rng.normal(0, 0.3, (n, g))
    counts = rng.poisson(np.exp(log_expr)).astype(float)
    counts[rng.random((n, g)) < profile.value_missing] = np.nan
    return counts


def _simulate_notes(text_factor: float, profile: _MultimodalSiteProfile, rng: np.random.Generator) -> list[str]:
    """1 + Poisson notes; each finding is a risk finding with probability sigmoid(3 x factor)."""
    n_notes = 1 + min(3, int(rng.poisson(profile.notes_per_patient)))
    n_findings = 3 + int(rng.poisson(2.0))
    sentences: list[list[str]] = [[] for _ in range(n_notes)]
    for _ in range(n_findings):
        pool = _RISK_FINDINGS if rng.random() < _sigmoid(3.0 * text_factor) else _FAVOURABLE_FINDINGS
        template = str(rng.choice(_FINDING_TEMPLATES))
        sentence = template.format(f=str(rng.choice(pool)), src=str(rng.choice(_SOURCES)))
        sentences[int(rng.integers(n_notes))].append(sentence[0].upper() + sentence[1:])
    notes = []
    for note in sentences:
        note += [str(s) for s in rng.choice(_FILLER_SENTENCES, size=int(rng.integers(1, 3)), replace=False)]
        notes.append(" ".join(note[i] for i in rng.permutation(len(note))))
    return notes
