"""Polysomnography (PSG) sites: the on-disk format, a strict loader and a hypnogram reader (EDF
writers: writers.py; synthetic sites with real EDF files: synth/psg.py).

On-disk format of one site
==========================
One folder per hospital (e.g. ``data/synthetic/sleep/hospital_a/``) holding ``recordings.csv``
and the recordings it names (paths relative to the site folder, or absolute; sub-folders allowed).

``recordings.csv`` - one row per recording (night), comma-separated with a header row.

=====================  =========  ====================================================================
column                 required   content
=====================  =========  ====================================================================
record_id              yes        text, unique in the file (the id column of ``fedcare predict``)
psg_file               yes        the signals: an EDF or EDF+ file (``.edf``)
hypnogram_file         training   the stage labels, 30-s epochs: an EDF+ annotation file (Sleep-EDF
                                  ``*-Hypnogram.edf`` style) or a CSV hypnogram (``.csv``, see below);
                                  optional for ``fedcare predict`` (epochs then start at the PSG start)
age                    yes        years, 0-120
sex                    yes        ``M`` or ``F`` (case ignored)
time_<outcome>         diagnosis  days from the recording to the event or censoring, >= 0
event_<outcome>        diagnosis  1 = the event happened at time_<outcome>, 0 = censored then
split                  no         ``train`` / ``val`` / ``test``: a fixed split (shared/data/splits.py)
=====================  =========  ====================================================================

One ``time_<outcome>`` / ``event_<outcome>`` pair per outcome of the diagnosis task
(``data.outcomes``, default ``cvd`` and ``death``); the staging task ignores them. Other columns
are ignored.

Hypnograms. Epochs are 30 s. Stage labels map to classes (case and surrounding spaces ignored;
in EDF+ annotations an optional ``Sleep stage`` prefix is stripped first):

====================================================  =====================================
label                                                 class
====================================================  =====================================
``W``, ``Wake``                                       0  Wake
``N1``, ``1``, ``S1``                                 1  N1
``N2``, ``2``, ``S2``                                 2  N2
``N3``, ``3``, ``4``, ``S3``, ``S4``, ``N4``          3  N3 (R&K stages 3 and 4 merge)
``R``, ``REM``                                        4  REM
``?``, ``Movement time``, ``M``, ``MT``, ``Unknown``,   -100  unscored: the epoch is kept as model
``U``, ``Unscored``, ``Artifact``                           input, ignored by loss and metrics, counted
====================================================  =====================================

* EDF+ annotation hypnogram: annotations with such a label are stage annotations; an annotation
  of D seconds covers D / 30 epochs (Sleep-EDF merges runs of one stage). Other annotations
  (``Lights off``, arousals, ...) are ignored; a ``Sleep stage X`` annotation with an unknown X is
  an error. The epoch grid starts at the first stage annotation, placed on the PSG timeline by the
  two files' start date-times.
* CSV hypnogram: columns ``onset_s`` (seconds from the PSG start), ``duration_s`` (a multiple of
  30) and ``stage`` (a label above; anything else is an error).
* Every stage annotation must start on the 30-s grid (within 0.5 s) and last a whole number of
  epochs; stage annotations may not overlap; a gap between them is unscored (counted).

Signals. EDF channel labels are matched (case and spaces ignored) against a channel map
(``DEFAULT_CHANNEL_MAP``, extended/overridden by ``data.channel_map``) that assigns each label a
*channel slot*. The slots (``data.channel_slots``, default ``DEFAULT_CHANNEL_SLOTS``) fix the
tensor layout every site shares; a slot is named ``<modality><optional index>`` with modality one
of BAS (EEG/EOG), RESP, EKG, EMG:

=====  ========  ===================================================================================
slot   modality  default EDF labels (first match in file order wins)
=====  ========  ===================================================================================
BAS1   BAS       central/frontal EEG: ``EEG Fpz-Cz``, ``EEG C4-A1``, ``EEG C3-A2``, ``C4-M1``, ...
BAS2   BAS       occipital/parietal EEG: ``EEG Pz-Oz``, ``EEG O2-A1``, ``O1-M2``, ...
BAS3   BAS       EOG: ``EOG horizontal``, ``EOG``, ``E1-M2``, ``LOC``, ...
RESP   RESP      ``Resp oro-nasal``, ``RESP``, ``Airflow``, ``Flow``, ``Thor``, ``Abdo``, ...
EKG    EKG       ``ECG``, ``EKG``, ``ECG II``, ...
EMG    EMG       ``EMG submental``, ``EMG``, ``EMG chin``, ``Chin1-Chin2``, ...
=====  ========  ===================================================================================

Each used channel is cut to the epochs kept, resampled to 128 Hz (``scipy.signal.resample_poly``;
any rate, e.g. 100, 256 or 1 Hz), robustly standardised on its own ((x - median) / (IQR / 1.349),
clipped to +-20) and cut into 30-s epochs of 6 patches of 640 samples (5 s). A slot without a
channel, or whose channel is flat, is zeros with ``channel_valid`` False.

Nights. The kept window starts ``data.lead_wake_epochs`` epochs (default 20 = 10 min) before the
first sleep epoch (or at the first epoch) and holds at most ``data.max_epochs`` epochs (default 10
= 5 min, sized for CPU runs; a full night is ~960, and memory grows with it: C x 3840 float32
values per epoch): longer nights are cut (counted), shorter ones padded with ``epoch_valid``
False. One recording is one sample, the DP privacy unit (a night is never split into several
samples, which would weaken the per-recording guarantee).

Loading rejects, with an ``InputError`` naming the file and field: a missing recordings.csv,
column or file; a duplicate or empty record_id; an age outside 0-120; a sex other than M/F; a
negative/missing time or a non-0/1 event; a PSG file that pyedflib cannot read (corrupt EDF); a
recording none of whose channels maps to a slot; a hypnogram that cannot be read, has no stage
annotation, an unknown stage label, an off-grid or overlapping stage annotation, starts before
the PSG, or scores epochs beyond the end of the signal (trailing unscored epochs there are
dropped, not an error). A signal longer than its hypnogram is truncated to the hypnogram
(counted: ``signal_epochs_without_stage``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.psg_schema import EPOCH_SECONDS, RECORDINGS_FILE
from shared.data.splits import parse_split
from shared.data.tables import read_csv_as_text, require_columns
from shared.errors import InputError

TARGET_HZ = 128
PATCH_SAMPLES = 640  # 5 s at 128 Hz
PATCHES_PER_EPOCH = EPOCH_SECONDS * TARGET_HZ // PATCH_SAMPLES  # 6
EPOCH_SAMPLES = EPOCH_SECONDS * TARGET_HZ  # 3840
STAGE_NAMES = ("W", "N1", "N2", "N3", "R")
UNSCORED = -100  # label of an unscored or padded epoch (the losses' ignore_index)
MODALITIES = ("BAS", "RESP", "EKG", "EMG")
DEFAULT_CHANNEL_SLOTS = ("BAS1", "BAS2", "BAS3", "RESP", "EKG", "EMG")
DEFAULT_MAX_EPOCHS = 10
DEFAULT_LEAD_WAKE_EPOCHS = 20
CLIP_SD = 20.0
GRID_TOLERANCE_S = 0.5

_SLOT_LABELS = {
    "BAS1": (
        "EEG Fpz-Cz", "EEG C4-A1", "EEG C3-A2", "EEG C4-M1", "EEG C3-M2", "C4-M1", "C3-M2", "C4-A1", "C3-A2",
        "EEG F4-M1", "EEG F3-M2", "F4-M1", "F3-M2", "EEG Fpz", "EEG", "EEG1",
    ),
    "BAS2": ("EEG Pz-Oz", "EEG O2-A1", "EEG O1-A2", "EEG O2-M1", "EEG O1-M2", "O2-M1", "O1-M2", "O2-A1", "O1-A2", "EEG2"),
    "BAS3": ("EOG horizontal", "EOG", "EOG left", "EOG right", "E1-M2", "E2-M1", "LOC", "ROC", "EOG(L)", "EOG(R)"),
    "RESP": (
        "Resp oro-nasal", "RESP", "Resp", "Airflow", "Flow", "Nasal pressure", "Thor", "Abdo", "Resp thoracic",
        "Resp abdominal", "Thorax", "Abdomen",
    ),
    "EKG": ("ECG", "EKG", "ECG II", "ECG1", "EKG1", "ECG L-R"),
    "EMG": ("EMG submental", "EMG", "EMG chin", "Chin", "Chin1-Chin2", "Chin EMG", "EMG1"),
}
DEFAULT_CHANNEL_MAP: dict[str, str] = {label: slot for slot, labels in _SLOT_LABELS.items() for label in labels}

_STAGE_CODES = {
    "w": 0, "wake": 0,
    "n1": 1, "1": 1, "s1": 1,
    "n2": 2, "2": 2, "s2": 2,
    "n3": 3, "3": 3, "4": 3, "s3": 3, "s4": 3, "n4": 3,
    "r": 4, "rem": 4,
}  # fmt: skip
_UNSCORED_LABELS = {"?", "movement time", "m", "mt", "movement", "unknown", "u", "unscored", "artifact"}
_STAGE_PREFIX = "sleep stage"


def normalized_label(label: str) -> str:
    """Lower case, single spaces, no surrounding spaces: how labels and channel names are compared."""
    return " ".join(str(label).split()).lower()


def slot_modality(slot: str) -> str:
    """`BAS2` -> `BAS`: the modality a channel slot belongs to (raises ValueError if none)."""
    modality = re.sub(r"\d+$", "", slot)
    if modality not in MODALITIES:
        raise ValueError(f"channel slot {slot!r} is not <modality><index> with modality one of {', '.join(MODALITIES)}")
    return modality


def stage_code(label: str) -> int | None:
    """Class of a stage label (0..4), UNSCORED for a known unscored label, None if unknown."""
    key = normalized_label(label)
    if key.startswith(_STAGE_PREFIX):
        key = key[len(_STAGE_PREFIX) :].strip()
    if key in _STAGE_CODES:
        return _STAGE_CODES[key]
    if key in _UNSCORED_LABELS:
        return UNSCORED
    return None


# ---------------------------------------------------------------------------------------------
# Hypnograms
# ---------------------------------------------------------------------------------------------


@dataclass
class Hypnogram:
    """Stages per 30-s epoch from the first stage annotation on.

    stages: (E,) int64, 0..4 or UNSCORED. labels: (E,) the normalised label of each epoch
    (``gap`` between annotations). onset_s: where epoch 0 starts, in seconds from the hypnogram
    file's start (EDF+) or from the PSG start (CSV). start: the EDF+ file's start date-time (None
    for CSV).
    """

    stages: np.ndarray
    labels: np.ndarray
    onset_s: float
    start: datetime | None = None

    def unscored_counts(self, n_epochs: int | None = None) -> Counter:
        """Unscored epochs among the first `n_epochs` (all by default), by label."""
        stages, labels = self.stages[:n_epochs], self.labels[:n_epochs]
        names = [str(label).removeprefix(_STAGE_PREFIX).strip() for label in labels[stages == UNSCORED]]
        return Counter(names)


def read_hypnogram(path: Path) -> Hypnogram:
    """An EDF+ annotation hypnogram, or a CSV one (``.csv``): format in the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "hypnogram_file", "file not found")
    if path.suffix.lower() == ".csv":
        return _read_csv_hypnogram(path)
    return _read_edf_hypnogram(path)


def _read_edf_hypnogram(path: Path) -> Hypnogram:
    import pyedflib

    try:
        with pyedflib.EdfReader(str(path)) as reader:
            onsets, durations, labels = reader.readAnnotations()
            start = reader.getStartdatetime()
    except Exception as err:  # pyedflib raises OSError and others on corrupt files
        raise InputError(path, "hypnogram_file", f"not a readable EDF+ annotation file ({err})") from None
    rows = []
    for onset, duration, label in zip(onsets, durations, labels):
        code = stage_code(label)
        if code is None:
            if normalized_label(label).startswith(_STAGE_PREFIX):
                raise InputError(path, "annotation", f"unknown sleep stage label {str(label)!r} at {onset:g} s; {_KNOWN}")
            continue  # lights off/on, arousals, ...: not a stage annotation
        rows.append((float(onset), float(duration), str(label), code))
    return _hypnogram_from_rows(rows, path, start)


_KNOWN = "known: W, N1/1, N2/2, N3/3/4, R/REM; unscored: ?, Movement time, Unknown"


def _read_csv_hypnogram(path: Path) -> Hypnogram:
    df = read_csv_as_text(path).fillna("")
    require_columns(df, path, ("onset_s", "duration_s", "stage"))
    rows = []
    for i, (onset, duration, label) in enumerate(zip(df["onset_s"], df["duration_s"], df["stage"])):
        try:
            onset_s, duration_s = float(onset), float(duration)
        except ValueError:
            raise InputError(path, "onset_s/duration_s", f"data row {i + 1}: {onset!r}, {duration!r} are not numbers") from None
        code = stage_code(label)
        if code is None:
            raise InputError(path, "stage", f"data row {i + 1}: unknown sleep stage label {label!r}; {_KNOWN}")
        rows.append((onset_s, duration_s, str(label), code))
    return _hypnogram_from_rows(rows, path, None)


def _hypnogram_from_rows(rows: list[tuple[float, float, str, int]], path: Path, start: datetime | None) -> Hypnogram:
    if not rows:
        raise InputError(path, "hypnogram_file", "no sleep stage annotation in the file")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    spans = []
    for onset, duration, label, code in rows:
        first = (onset - t0) / EPOCH_SECONDS
        # a missing duration (EDF+ -1 or 0) means one epoch
        count = duration / EPOCH_SECONDS if duration > 0 else 1.0
        if abs(first - round(first)) * EPOCH_SECONDS > GRID_TOLERANCE_S:
            problem = f"stage {label!r} at {onset:g} s is not on the 30-s epoch grid starting at {t0:g} s"
            raise InputError(path, "annotation", problem)
        if abs(count - round(count)) * EPOCH_SECONDS > GRID_TOLERANCE_S or round(count) < 1:
            raise InputError(path, "annotation", f"stage {label!r} at {onset:g} s lasts {duration:g} s, not a multiple of 30 s")
        spans.append((round(first), round(count), label, code))
    n_epochs = max(first + count for first, count, _, _ in spans)
    stages = np.full(n_epochs, UNSCORED, dtype=np.int64)
    epoch_labels = np.full(n_epochs, "gap", dtype=object)
    scored = np.zeros(n_epochs, dtype=bool)
    for first, count, label, code in spans:
        if scored[first : first + count].any():
            raise InputError(path, "annotation", f"stage {label!r} at epoch {first} overlaps an earlier stage annotation")
        scored[first : first + count] = True
        stages[first : first + count] = code
        epoch_labels[first : first + count] = normalized_label(label)
    return Hypnogram(stages, epoch_labels, t0, start)


# ---------------------------------------------------------------------------------------------
# Recordings
# ---------------------------------------------------------------------------------------------


@dataclass
class PSGRecord:
    """One recording's kept window, in the shared slot layout.

    signals: (C, max_epochs * 6, 640) float32, standardised, zeros where invalid.
    channel_valid: (C,) bool. epoch_valid: (max_epochs,) bool, a prefix.
    stages: (max_epochs,) int64, 0..4 or UNSCORED (unscored, padding, no hypnogram).
    epoch_onset_s: (max_epochs,) float64 seconds from the PSG start, NaN on padding.
    info: counts for the site's report (never leaves the site).
    """

    signals: np.ndarray
    channel_valid: np.ndarray
    epoch_valid: np.ndarray
    stages: np.ndarray
    epoch_onset_s: np.ndarray
    info: dict = field(default_factory=dict)


def resolve_channel_map(channel_slots: tuple[str, ...] | list[str], overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Normalised EDF label -> slot: DEFAULT_CHANNEL_MAP updated with `overrides`, keeping only
    entries whose slot is one of `channel_slots` (callers validate overrides' slots first)."""
    merged = {normalized_label(k): v for k, v in DEFAULT_CHANNEL_MAP.items()}
    merged.update({normalized_label(k): v for k, v in (overrides or {}).items()})
    return {k: v for k, v in merged.items() if v in channel_slots}


def _resample(x: np.ndarray, fs: float, n_out: int) -> np.ndarray:
    """Resample to TARGET_HZ and return exactly n_out samples."""
    from scipy.signal import resample_poly

    ratio = Fraction(TARGET_HZ) / Fraction(fs).limit_denominator(1000)
    if ratio != 1:
        x = resample_poly(x, ratio.numerator, ratio.denominator)
    if len(x) < n_out:  # rounding of a fractional rate: repeat the last sample
        x = np.pad(x, (0, n_out - len(x)), mode="edge")
    return x[:n_out]


def _standardise(x: np.ndarray) -> np.ndarray | None:
    """Robust z-score clipped to +-CLIP_SD; None for a flat channel."""
    median = float(np.median(x))
    q25, q75 = np.percentile(x, [25, 75])
    scale = (q75 - q25) / 1.349
    if not np.isfinite(scale) or scale <= 1e-8 * max(1.0, abs(median)):
        scale = float(np.std(x))
        if not np.isfinite(scale) or scale <= 1e-8 * max(1.0, abs(median)):
            return None
    return np.clip((x - median) / scale, -CLIP_SD, CLIP_SD)


def load_psg_record(
    psg_file: Path,
    hypnogram_file: Path | None,
    channel_slots: tuple[str, ...] | list[str] = DEFAULT_CHANNEL_SLOTS,
    channel_map: dict[str, str] | None = None,
    max_epochs: int = DEFAULT_MAX_EPOCHS,
    lead_wake_epochs: int = DEFAULT_LEAD_WAKE_EPOCHS,
) -> PSGRecord:
    """Read one recording (format in the module docstring). `channel_map`: normalised label ->
    slot, as `resolve_channel_map` returns (None = the defaults for `channel_slots`)."""
    import pyedflib

    psg_file = Path(psg_file)
    channel_map = resolve_channel_map(channel_slots) if channel_map is None else channel_map
    if not psg_file.is_file():
        raise InputError(psg_file, "psg_file", "file not found")
    hypnogram = read_hypnogram(hypnogram_file) if hypnogram_file is not None else None
    try:
        reader = pyedflib.EdfReader(str(psg_file))
    except Exception as err:  # pyedflib raises OSError and others on corrupt files
        raise InputError(psg_file, "psg_file", f"not a readable EDF/EDF+ file ({err})") from None
    with reader:
        labels = reader.getSignalLabels()
        chosen: dict[str, int] = {}  # slot -> channel index (first match in file order)
        unmapped = []
        for i, label in enumerate(labels):
            slot = channel_map.get(normalized_label(label))
            if slot is None:
                unmapped.append(label)
            elif slot not in chosen:
                chosen[slot] = i
        if not chosen:
            raise InputError(
                psg_file, "channels",
                f"no channel maps to a slot ({', '.join(labels) or 'no signals'}); add its label to data.channel_map",
            )
        rates = {i: float(reader.getSampleFrequency(i)) for i in chosen.values()}
        lengths = reader.getNSamples()
        duration_s = min(lengths[i] / rates[i] for i in chosen.values())

        info: dict = {"unmapped_channels": unmapped, "missing_slots": [s for s in channel_slots if s not in chosen]}
        if hypnogram is None:
            offset_s = 0.0
            stages = np.full(int(duration_s // EPOCH_SECONDS), UNSCORED, dtype=np.int64)
            info["unscored"] = Counter()
            info["signal_epochs_without_stage"] = 0
        else:
            offset_s = hypnogram.onset_s
            if hypnogram.start is not None:
                offset_s += (hypnogram.start - reader.getStartdatetime()).total_seconds()
            if offset_s < -GRID_TOLERANCE_S:
                raise InputError(hypnogram_file, "hypnogram_file", f"starts {-offset_s:g} s before the PSG recording")
            offset_s = max(offset_s, 0.0)
            stages = _fit_to_signal(hypnogram, duration_s - offset_s, hypnogram_file, info)

        sleep = np.flatnonzero((stages >= 1) & (stages <= 4))
        start = max(0, int(sleep[0]) - lead_wake_epochs) if sleep.size else 0
        kept = min(max_epochs, len(stages) - start)
        info["epochs_cut"] = len(stages) - start - kept
        info["epochs_kept"] = kept
        window_s = offset_s + start * EPOCH_SECONDS

        signals = np.zeros((len(channel_slots), max_epochs * PATCHES_PER_EPOCH, PATCH_SAMPLES), dtype=np.float32)
        channel_valid = np.zeros(len(channel_slots), dtype=bool)
        info["flat_channels"] = []
        for c, slot in enumerate(channel_slots):
            if slot not in chosen or kept == 0:
                continue
            i, fs = chosen[slot], rates[chosen[slot]]
            first = int(round(window_s * fs))
            count = min(int(math.ceil(kept * EPOCH_SECONDS * fs)), lengths[i] - first)
            raw = reader.readSignal(i, start=first, n=count).astype(np.float64)
            x = None if np.ptp(raw) == 0 else _standardise(_resample(raw, fs, kept * EPOCH_SAMPLES))
            if x is None:  # a flat (disconnected) channel
                info["flat_channels"].append(labels[i])
                continue
            signals[c, : kept * PATCHES_PER_EPOCH] = x.reshape(kept * PATCHES_PER_EPOCH, PATCH_SAMPLES)
            channel_valid[c] = True

    epoch_valid = np.arange(max_epochs) < kept
    out_stages = np.full(max_epochs, UNSCORED, dtype=np.int64)
    out_stages[:kept] = stages[start : start + kept]
    onsets = np.where(epoch_valid, window_s + EPOCH_SECONDS * np.arange(max_epochs), np.nan)
    return PSGRecord(signals, channel_valid, epoch_valid, out_stages, onsets, info)


def _fit_to_signal(hypnogram: Hypnogram, signal_s: float, path: Path | None, info: dict) -> np.ndarray:
    """Stages limited to the signal: trailing unscored epochs beyond it are dropped, scored ones
    beyond it are an error; a signal longer than the hypnogram is truncated (counted)."""
    n_signal = int((signal_s + GRID_TOLERANCE_S) // EPOCH_SECONDS)
    stages = hypnogram.stages
    unscored = hypnogram.unscored_counts(n_signal)
    beyond = stages[n_signal:]
    if (beyond != UNSCORED).any():
        raise InputError(
            path, "hypnogram_file",
            f"scores {len(stages)} epochs ({len(stages) * EPOCH_SECONDS} s) but the signal holds only {n_signal} "
            f"whole epochs from the hypnogram's start",
        )
    if beyond.size:
        unscored["beyond_signal"] += int(beyond.size)
    info["unscored"] = unscored
    info["signal_epochs_without_stage"] = max(0, n_signal - len(stages))
    return stages[:n_signal]


# ---------------------------------------------------------------------------------------------
# Sites
# ---------------------------------------------------------------------------------------------


@dataclass
class PSGSite:
    """One site's recordings in the shared layout (R recordings, C slots, N = max_epochs).

    signals (R, C, N*6, 640) float32; channel_valid (R, C); epoch_valid (R, N); stages (R, N);
    epoch_onset_s (R, N); age (R,) years; male (R,) 0/1; times (R, K) days and events (R, K) 0/1
    for `outcomes` (K = 0 when not loaded); counts: what was dropped/cut/missing, for the site's
    own report; split: each recording's fixed split (recordings.csv's ``split`` column,
    shared/data/splits.py), None without one.
    """

    record_ids: np.ndarray
    signals: np.ndarray
    channel_valid: np.ndarray
    epoch_valid: np.ndarray
    stages: np.ndarray
    epoch_onset_s: np.ndarray
    age: np.ndarray
    male: np.ndarray
    times: np.ndarray
    events: np.ndarray
    outcomes: tuple[str, ...] = ()
    counts: dict = field(default_factory=dict)
    split: np.ndarray | None = None


def _numbers(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(df[col].str.strip(), errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(path, col, f"data row {row + 1}: {df[col].iloc[row]!r} is not a number")
    return values.to_numpy(dtype=float)


def _read_recordings(path: Path, require_hypnogram: bool, outcomes: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, None, "missing file")
    df = read_csv_as_text(path).fillna("")
    required = ["record_id", "psg_file", "age", "sex"] + (["hypnogram_file"] if require_hypnogram else [])
    required += [f"{kind}_{o}" for o in outcomes for kind in ("time", "event")]
    require_columns(df, path, tuple(required))
    if df.empty:
        raise InputError(path, None, "no recordings")
    ids = df["record_id"].str.strip()
    if (ids == "").any():
        raise InputError(path, "record_id", f"data row {int(np.flatnonzero(ids == '')[0]) + 1}: empty record_id")
    if ids.duplicated().any():
        raise InputError(path, "record_id", f"duplicate record_id {ids[ids.duplicated()].iloc[0]!r}")
    df["record_id"] = ids
    return df


def load_psg_site(
    site_dir: Path,
    channel_slots: tuple[str, ...] | list[str] = DEFAULT_CHANNEL_SLOTS,
    channel_map: dict[str, str] | None = None,
    max_epochs: int = DEFAULT_MAX_EPOCHS,
    lead_wake_epochs: int = DEFAULT_LEAD_WAKE_EPOCHS,
    outcomes: tuple[str, ...] | list[str] = (),
    require_hypnogram: bool = True,
) -> PSGSite:
    """Load every recording of a site folder (format in the module docstring).

    `channel_map` holds additions/overrides of DEFAULT_CHANNEL_MAP (EDF label -> slot). `outcomes`
    names the time_/event_ column pairs to load (empty for staging). Without `require_hypnogram`
    the hypnogram_file column may be missing or empty (prediction)."""
    site_dir = Path(site_dir)
    path = site_dir / RECORDINGS_FILE
    outcomes = tuple(outcomes)
    df = _read_recordings(path, require_hypnogram, outcomes)
    age = _numbers(df, "age", path)
    if ((age < 0) | (age > 120)).any():
        raise InputError(path, "age", f"data row {int(np.flatnonzero((age < 0) | (age > 120))[0]) + 1}: must be 0-120 years")
    sex = df["sex"].str.strip().str.upper()
    if (~sex.isin(["M", "F"])).any():
        row = int(np.flatnonzero(~sex.isin(["M", "F"]).to_numpy())[0])
        raise InputError(path, "sex", f"data row {row + 1}: {df['sex'].iloc[row]!r} is not M or F")
    times = np.zeros((len(df), len(outcomes)))
    events = np.zeros((len(df), len(outcomes)))
    for k, outcome in enumerate(outcomes):
        times[:, k] = _numbers(df, f"time_{outcome}", path)
        events[:, k] = _numbers(df, f"event_{outcome}", path)
        if (times[:, k] < 0).any():
            row = int(np.flatnonzero(times[:, k] < 0)[0])
            raise InputError(path, f"time_{outcome}", f"data row {row + 1}: must be >= 0 days")
        if (~np.isin(events[:, k], (0, 1))).any():
            row = int(np.flatnonzero(~np.isin(events[:, k], (0, 1)))[0])
            raise InputError(path, f"event_{outcome}", f"data row {row + 1}: must be 0 or 1")

    resolved = resolve_channel_map(channel_slots, channel_map)
    records = []
    hyp_col = df["hypnogram_file"].str.strip() if "hypnogram_file" in df.columns else pd.Series([""] * len(df))
    for i, (psg_name, hyp_name) in enumerate(zip(df["psg_file"].str.strip(), hyp_col)):
        if not psg_name:
            raise InputError(path, "psg_file", f"data row {i + 1}: empty")
        if require_hypnogram and not hyp_name:
            raise InputError(path, "hypnogram_file", f"data row {i + 1}: empty")
        records.append(
            load_psg_record(
                site_dir / psg_name, site_dir / hyp_name if hyp_name else None, channel_slots, resolved,
                max_epochs, lead_wake_epochs,
            )
        )
    return PSGSite(
        record_ids=df["record_id"].to_numpy(dtype=object),
        signals=np.stack([r.signals for r in records]),
        channel_valid=np.stack([r.channel_valid for r in records]),
        epoch_valid=np.stack([r.epoch_valid for r in records]),
        stages=np.stack([r.stages for r in records]),
        epoch_onset_s=np.stack([r.epoch_onset_s for r in records]),
        age=age,
        male=(sex == "M").to_numpy(dtype=float),
        times=times,
        events=events,
        outcomes=outcomes,
        split=parse_split(df, path, require_train=require_hypnogram),
        counts=_site_counts(records, channel_slots),
    )


def _site_counts(records: list[PSGRecord], channel_slots: tuple[str, ...] | list[str]) -> dict:
    unscored: Counter = Counter()
    for r in records:
        unscored.update(r.info["unscored"])
    return {
        "recordings": len(records),
        "unscored_epochs": dict(unscored),
        "signal_epochs_without_stage": int(sum(r.info.get("signal_epochs_without_stage", 0) for r in records)),
        "recordings_truncated_to_hypnogram": int(sum(r.info.get("signal_epochs_without_stage", 0) > 0 for r in records)),
        "epochs_cut": int(sum(r.info["epochs_cut"] for r in records)),
        "epochs_kept": int(sum(r.info["epochs_kept"] for r in records)),
        "missing_slots": {s: int(sum(s in r.info["missing_slots"] for r in records)) for s in channel_slots},
        "flat_channels": int(sum(len(r.info["flat_channels"]) for r in records)),
        "unmapped_channels": sorted({c for r in records for c in r.info["unmapped_channels"]}),
    }
