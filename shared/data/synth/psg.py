"""Synthetic polysomnography sites in the format shared/data/psg.py reads: real EDF signal files,
EDF+ hypnograms and recordings.csv with survival outcomes."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.psg_schema import EPOCH_SECONDS, RECORDINGS_FILE
from shared.data.writers import write_csv, write_edf, write_hypnogram

DEFAULT_SYNTH_SIZES = (200, 150, 100)
DEFAULT_SYNTH_MINUTES = 5.0
SYNTH_OUTCOMES = ("cvd", "death")
# 30-s stage transitions (rows: from W, N1, N2, N3, R): N2 most common, N1 rare and short
_TRANSITIONS = np.array(
    [
        [0.90, 0.07, 0.025, 0.0, 0.005],
        [0.08, 0.55, 0.33, 0.0, 0.04],
        [0.02, 0.02, 0.905, 0.04, 0.015],
        [0.01, 0.0, 0.06, 0.93, 0.0],
        [0.03, 0.02, 0.03, 0.0, 0.92],
    ]
)
# per-stage amplitudes (W, N1, N2, N3, R), microvolts unless noted
_EEG_BANDS = {  # band (Hz) -> amplitude per stage
    (0.5, 2.0): (6.0, 10.0, 18.0, 70.0, 8.0),  # delta
    (4.0, 7.5): (6.0, 20.0, 12.0, 10.0, 15.0),  # theta (N1; sawtooth-like in R)
    (8.5, 11.5): (24.0, 6.0, 3.0, 2.0, 5.0),  # alpha (relaxed wake)
    (16.0, 30.0): (7.0, 3.0, 2.0, 1.0, 4.0),  # beta
}
_SPINDLES_PER_EPOCH = (0.0, 0.2, 3.0, 0.8, 0.0)
_K_COMPLEXES_PER_EPOCH = (0.0, 0.1, 1.2, 0.3, 0.0)
_SLOW_EYE_MOVEMENT = (8.0, 35.0, 5.0, 3.0, 8.0)
_BLINKS_PER_EPOCH = (4.0, 0.5, 0.0, 0.0, 0.0)
_SACCADES_PER_EPOCH = (2.0, 0.2, 0.0, 0.0, 6.0)
_EMG_TONE = (20.0, 10.0, 7.0, 6.0, 2.0)
_HEART_RATE = (72.0, 66.0, 61.0, 57.0, 69.0)  # beats/min
_BREATH_RATE = (16.0, 15.0, 14.5, 13.5, 17.5)  # breaths/min
_BREATH_IRREGULARITY = (2.5, 1.5, 0.6, 0.4, 2.5)  # breaths/min, sd of the rate
_BREATH_AMPLITUDE = (1.0, 0.9, 1.0, 1.15, 0.8)


@dataclass(frozen=True)
class _SynthSite:
    channels: tuple[tuple[str, str, int], ...]  # (EDF label, kind, sampling rate Hz)
    labels: str  # "rk" (Sleep stage 1/2/3/4) or "aasm" (Sleep stage N1/N2/N3)
    merge_runs: bool  # Sleep-EDF style: one annotation per run of a stage
    unscored_label: str
    hypnogram_delay_s: int  # the hypnogram file starts this long after the PSG
    noise: float  # additive white noise, microvolts
    age_mean: float


_SYNTH_SITES = (
    _SynthSite(  # Sleep-EDF like: 100 Hz, slow respiration channel, R&K labels
        (("EEG Fpz-Cz", "eeg_central", 100), ("EEG Pz-Oz", "eeg_occipital", 100), ("EOG horizontal", "eog", 100),
         ("Resp oro-nasal", "resp", 25), ("ECG", "ecg", 100), ("EMG submental", "emg", 100)),
        "rk", True, "Movement time", 0, 3.0, 52.0,
    ),
    _SynthSite(  # 128 Hz, no EMG, AASM labels, hypnogram starting a minute late
        (("EEG C4-A1", "eeg_central", 128), ("EEG O2-A1", "eeg_occipital", 128), ("EOG", "eog", 128),
         ("RESP", "resp", 32), ("EKG", "ecg", 128)),
        "aasm", False, "Sleep stage ?", 60, 5.0, 58.0,
    ),
    _SynthSite(  # 256 Hz, no respiration, a single EEG, noisier
        (("EEG C3-A2", "eeg_central", 256), ("EOG left", "eog", 256), ("ECG II", "ecg", 256), ("EMG chin", "emg", 256)),
        "aasm", False, "Sleep stage ?", 0, 8.0, 62.0,
    ),
)  # fmt: skip


def synthesize_psg_sites(
    out_dir: Path,
    n_sites: int = 3,
    sizes: list[int] | tuple[int, ...] | None = None,
    seed: int = 0,
    minutes: float = DEFAULT_SYNTH_MINUTES,
) -> list[Path]:
    """Write `n_sites` site folders `site_<k>` (format: shared/data/psg.py) under `out_dir`:
    real EDF signal files and EDF+ annotation hypnograms, plus recordings.csv with age, sex and
    survival outcomes `cvd` and `death`. Returns the folders.

    Stages follow a Markov chain (N2 most common, N1 rare); EEG band power depends on the stage
    (alpha in W, theta in N1, spindles and K-complexes in N2, high delta in N3, low-voltage mixed
    with rapid eye movements in R), heart and breathing rate and EMG tone too. Sites differ in
    channel sets (one lacks EMG, one respiration), sampling rates (100 / 128 / 256 Hz), noise,
    label conventions (R&K vs AASM) and age mix. Older age, male sex, more wake and less N3 in
    the recording raise both outcomes' hazards; follow-up is censored at 1-10 years.
    """
    out_dir = Path(out_dir)
    sizes = list(sizes) if sizes is not None else [DEFAULT_SYNTH_SIZES[k % len(DEFAULT_SYNTH_SIZES)] for k in range(n_sites)]
    if len(sizes) != n_sites:
        raise ValueError(f"{len(sizes)} sizes for {n_sites} sites")
    n_epochs = max(1, int(round(minutes * 60 / EPOCH_SECONDS)))
    folders = []
    for k in range(n_sites):
        profile = _SYNTH_SITES[k % len(_SYNTH_SITES)]
        site_dir = out_dir / f"site_{k}"
        if site_dir.exists():
            shutil.rmtree(site_dir)
        (site_dir / "edf").mkdir(parents=True)
        rng = np.random.default_rng([seed, k])
        rows = [_synthesize_record(site_dir, f"s{k}r{i:04d}", profile, n_epochs, rng, i) for i in range(sizes[k])]
        frame = pd.DataFrame(rows)
        write_csv(frame, site_dir / RECORDINGS_FILE)
        folders.append(site_dir)
    return folders


def _stationary(p: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eig(p.T)
    v = np.abs(np.real(vectors[:, np.argmin(np.abs(values - 1.0))]))
    return v / v.sum()


def stage_sequence(rng: np.random.Generator, n_epochs: int, age: float, fragmentation: float) -> np.ndarray:
    """Markov chain of stages started in its stationary distribution (a window of a night):
    older age means less N3, higher `fragmentation` (a z-score) more awakenings."""
    p = _TRANSITIONS.copy()
    p[2, 3] *= math.exp(-0.04 * (age - 50.0))
    p[1:, 0] *= math.exp(0.7 * fragmentation)
    p /= p.sum(axis=1, keepdims=True)
    stages = np.empty(n_epochs, dtype=np.int64)
    stages[0] = rng.choice(5, p=_stationary(p))
    for i in range(1, n_epochs):
        stages[i] = rng.choice(5, p=p[stages[i - 1]])
    return stages


def _envelope(per_stage: tuple[float, ...], stages: np.ndarray, fs: int) -> np.ndarray:
    """Per-sample amplitude: the stage's value, smoothed over 2 s at the epoch boundaries."""
    x = np.repeat(np.asarray(per_stage, dtype=float)[stages], EPOCH_SECONDS * fs)
    width = 2 * fs
    sums = np.concatenate([[0.0], np.cumsum(np.pad(x, (width // 2, width - width // 2), mode="edge"))])
    return (sums[width:] - sums[:-width])[: len(x)] / width  # moving average over `width` samples


def _band_noise(rng: np.random.Generator, n: int, fs: int, low: float, high: float) -> np.ndarray:
    """Unit-variance Gaussian noise limited to [low, high] Hz."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / fs)
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    x = np.fft.irfft(spectrum, n)
    return x / (x.std() + 1e-12)


def _add_events(
    x: np.ndarray, rng: np.random.Generator, stages: np.ndarray, fs: int, rate: tuple[float, ...], template
) -> None:
    """Add `template(rng, fs)` at Poisson(rate[stage]) random times in each epoch."""
    for e, stage in enumerate(stages):
        for _ in range(rng.poisson(rate[stage])):
            wave = template(rng, fs)
            at = e * EPOCH_SECONDS * fs + rng.integers(0, EPOCH_SECONDS * fs)
            end = min(len(x), at + len(wave))
            x[at:end] += wave[: end - at]


def _spindle(rng: np.random.Generator, fs: int) -> np.ndarray:
    t = np.arange(int(rng.uniform(0.5, 1.5) * fs)) / fs
    return rng.uniform(20, 35) * np.hanning(len(t)) * np.sin(2 * np.pi * rng.uniform(12, 14) * t)


def _k_complex(rng: np.random.Generator, fs: int) -> np.ndarray:
    t = np.arange(int(1.2 * fs)) / fs
    a = rng.uniform(70, 110)
    return a * (-np.exp(-0.5 * ((t - 0.35) / 0.1) ** 2) + 0.6 * np.exp(-0.5 * ((t - 0.75) / 0.15) ** 2))


def _blink(rng: np.random.Generator, fs: int) -> np.ndarray:
    t = np.arange(int(0.6 * fs)) / fs
    return rng.uniform(80, 150) * np.exp(-0.5 * ((t - 0.3) / 0.08) ** 2)


def _saccade(rng: np.random.Generator, fs: int) -> np.ndarray:
    t = np.arange(int(1.5 * fs)) / fs
    return rng.choice([-1, 1]) * rng.uniform(60, 120) * (1 - np.exp(-t / 0.03)) * np.exp(-t / 0.5)


def _emg_twitch(rng: np.random.Generator, fs: int) -> np.ndarray:
    n = int(0.25 * fs)
    return rng.uniform(10, 20) * np.hanning(n) * rng.standard_normal(n)


def _eeg(rng: np.random.Generator, stages: np.ndarray, fs: int, occipital: bool) -> tuple[np.ndarray, np.ndarray]:
    """(EEG, its delta component) for one derivation."""
    n = len(stages) * EPOCH_SECONDS * fs
    weights = {(8.5, 11.5): 1.6 if occipital else 0.8, (0.5, 2.0): 0.8 if occipital else 1.2}
    x = np.zeros(n)
    delta = np.zeros(n)
    for band, amplitudes in _EEG_BANDS.items():
        part = weights.get(band, 1.0) * _envelope(amplitudes, stages, fs) * _band_noise(rng, n, fs, *band)
        x += part
        if band == (0.5, 2.0):
            delta = part
    x += 4.0 * _band_noise(rng, n, fs, 0.3, min(40.0, fs / 2 - 1))
    _add_events(x, rng, stages, fs, tuple(r * (0.6 if occipital else 1.0) for r in _SPINDLES_PER_EPOCH), _spindle)
    _add_events(x, rng, stages, fs, _K_COMPLEXES_PER_EPOCH, _k_complex)
    return x, delta


def _eog(rng: np.random.Generator, stages: np.ndarray, fs: int, eeg_delta: np.ndarray) -> np.ndarray:
    n = len(stages) * EPOCH_SECONDS * fs
    x = _envelope(_SLOW_EYE_MOVEMENT, stages, fs) * _band_noise(rng, n, fs, 0.1, 0.5) + 0.3 * eeg_delta
    _add_events(x, rng, stages, fs, _BLINKS_PER_EPOCH, _blink)
    _add_events(x, rng, stages, fs, _SACCADES_PER_EPOCH, _saccade)
    return x


def _emg(rng: np.random.Generator, stages: np.ndarray, fs: int, gain: float) -> np.ndarray:
    n = len(stages) * EPOCH_SECONDS * fs
    x = gain * _envelope(_EMG_TONE, stages, fs) * _band_noise(rng, n, fs, 10.0, min(100.0, fs / 2 - 1))
    _add_events(x, rng, stages, fs, (0.0, 0.0, 0.0, 0.0, 2.0), _emg_twitch)
    return x


def _rate_signal(
    rng: np.random.Generator, stages: np.ndarray, fs: int, rate: tuple[float, ...], irregularity: tuple[float, ...], offset: float
) -> np.ndarray:
    """Cycles completed since the start, for a per-minute rate set by the stage plus slow noise."""
    n = len(stages) * EPOCH_SECONDS * fs
    wobble = _envelope(irregularity, stages, fs) * _band_noise(rng, n, fs, 0.0, 0.1)
    per_minute = np.maximum(_envelope(rate, stages, fs) + offset + wobble, 1.0)
    return np.cumsum(per_minute / 60.0 / fs)


def _ecg(rng: np.random.Generator, stages: np.ndarray, fs: int, offset: float) -> np.ndarray:
    phase = _rate_signal(rng, stages, fs, _HEART_RATE, (2.0, 1.5, 1.0, 0.8, 3.0), offset) % 1.0
    waves = ((0.15, 0.025, 0.12), (0.26, 0.008, -0.1), (0.28, 0.01, 1.0), (0.30, 0.008, -0.25), (0.5, 0.04, 0.3))
    return 1000.0 * sum(a * np.exp(-0.5 * ((phase - c) / w) ** 2) for c, w, a in waves)


def _resp(rng: np.random.Generator, stages: np.ndarray, fs: int, offset: float) -> np.ndarray:
    phase = 2 * np.pi * _rate_signal(rng, stages, fs, _BREATH_RATE, _BREATH_IRREGULARITY, offset)
    amplitude = _envelope(_BREATH_AMPLITUDE, stages, fs) * (1 + 0.15 * _band_noise(rng, len(phase), fs, 0.0, 0.05))
    return 300.0 * amplitude * (np.sin(phase) + 0.2 * np.sin(2 * phase))


def _stage_label(stage: int, scheme: str, rng: np.random.Generator) -> str:
    if scheme == "rk":
        names = ("W", "1", "2", "4" if rng.random() < 0.4 else "3", "R")
    else:
        names = ("W", "N1", "N2", "N3", "R")
    return f"Sleep stage {names[stage]}"



def _synthesize_record(
    site_dir: Path, record_id: str, site: _SynthSite, n_epochs: int, rng: np.random.Generator, index: int
) -> dict:
    age = float(np.clip(rng.normal(site.age_mean, 12.0), 20, 90))
    male = bool(rng.random() < 0.5)
    fragmentation = float(rng.standard_normal())
    lead = site.hypnogram_delay_s // EPOCH_SECONDS
    stages = np.concatenate([np.zeros(lead, dtype=np.int64), stage_sequence(rng, n_epochs, age, fragmentation)])

    signals, rates, dims = [], [], []
    eeg_delta = None
    for _, kind, fs in site.channels:
        if kind.startswith("eeg"):
            x, delta = _eeg(rng, stages, fs, occipital=kind == "eeg_occipital")
            eeg_delta = delta if eeg_delta is None else eeg_delta
        elif kind == "eog":
            x = _eog(rng, stages, fs, eeg_delta if eeg_delta is not None else np.zeros(len(stages) * EPOCH_SECONDS * fs))
        elif kind == "emg":
            x = _emg(rng, stages, fs, gain=float(rng.lognormal(0.0, 0.2)))
        elif kind == "ecg":
            x = _ecg(rng, stages, fs, offset=float(rng.normal(0, 5)))
        else:
            x = _resp(rng, stages, fs, offset=float(rng.normal(0, 1.5)))
        noise = site.noise * (10.0 if kind in ("ecg", "resp") else 1.0)
        x = x * float(rng.lognormal(0.0, 0.2)) + noise * rng.standard_normal(len(x))
        signals.append(x)
        rates.append(fs)
        dims.append("uV")

    start = datetime(2020, 1, 1, 22, 0, 0) + timedelta(days=index)
    psg_name, hyp_name = f"edf/{record_id}-PSG.edf", f"edf/{record_id}-Hypnogram.edf"
    write_edf(site_dir / psg_name, start, [c[0] for c in site.channels], signals, rates, dims)

    scored = stages[lead:]
    labels = [
        site.unscored_label if rng.random() < 0.01 else _stage_label(int(s), site.labels, rng) for s in scored
    ]
    annotations: list[tuple[float, float, str]] = []
    for e, label in enumerate(labels):
        if site.merge_runs and annotations and annotations[-1][2] == label:
            onset, duration, _ = annotations[-1]
            annotations[-1] = (onset, duration + EPOCH_SECONDS, label)
        else:
            annotations.append((float(e * EPOCH_SECONDS), float(EPOCH_SECONDS), label))
    if site.merge_runs:  # Sleep-EDF hypnograms end with an unscored stretch past the signal
        annotations.append((float(len(labels) * EPOCH_SECONDS), 600.0, "Sleep stage ?"))
    write_hypnogram(site_dir / hyp_name, start + timedelta(seconds=site.hypnogram_delay_s), annotations)

    wake = float(np.mean(scored == 0))
    deep = float(np.mean(scored == 3))
    z_wake, z_deep = (wake - 0.2) / 0.25, (deep - 0.15) / 0.2
    row = {"record_id": record_id, "psg_file": psg_name, "hypnogram_file": hyp_name}
    row |= {"age": round(age, 1), "sex": "M" if male else "F"}
    hazards = {
        "cvd": 0.03 * math.exp(0.06 * (age - 55) + 0.5 * male + 0.45 * z_wake - 0.35 * z_deep),
        "death": 0.025 * math.exp(0.08 * (age - 55) + 0.3 * male + 0.2 * z_wake - 0.45 * z_deep),
    }
    for outcome in SYNTH_OUTCOMES:
        event_years = rng.exponential(1.0 / hazards[outcome])
        censor_years = rng.uniform(1.0, 10.0)
        row[f"time_{outcome}"] = round(min(event_years, censor_years) * 365.25, 1)
        row[f"event_{outcome}"] = int(event_years <= censor_years)
    return row
