"""PSG sites: synthetic EDF round trip, resampling, masks, hypnogram rules, the real annotation file."""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.data.psg import (
    EPOCH_SAMPLES,
    UNSCORED,
    load_psg_record,
    load_psg_site,
    read_hypnogram,
    resolve_channel_map,
    slot_modality,
    stage_code,
)
from shared.data.synth.psg import synthesize_psg_sites
from shared.data.writers import write_edf, write_hypnogram
from shared.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[3]
START = datetime(2021, 3, 4, 23, 0, 0)
SLOTS = ("BAS1", "BAS2", "BAS3", "RESP", "EKG", "EMG")


def _annotation_file() -> Path | None:
    """The shared real EDF+ hypnogram: beside the repository (main checkout) or beside the worktrees."""
    candidates = [Path(os.environ["FEDCARE_EDF_SAMPLE"])] if "FEDCARE_EDF_SAMPLE" in os.environ else []
    candidates += [REPO_ROOT / ".." / "shared" / "data" / "edf-sample" / "test_edfann.edf",
                   REPO_ROOT / ".." / ".." / "shared" / "data" / "edf-sample" / "test_edfann.edf"]  # fmt: skip
    return next((p.resolve() for p in candidates if p.is_file()), None)


def _sine(freq: float, fs: int, seconds: float, amplitude: float = 50.0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * fs)) / fs)


def _aasm(stages: list[str]) -> list[tuple[float, float, str]]:
    return [(30.0 * i, 30.0, f"Sleep stage {s}") for i, s in enumerate(stages)]


@pytest.fixture(scope="module")
def synthetic_sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthesize_psg_sites(tmp_path_factory.mktemp("psg"), n_sites=3, sizes=[4, 3, 3], seed=1, minutes=2.0)


def test_synthetic_round_trip_shapes_masks_and_outcomes(synthetic_sites: list[Path]) -> None:
    sites = [load_psg_site(d, max_epochs=6, outcomes=("cvd", "death")) for d in synthetic_sites]
    a, b, c = sites
    assert a.signals.shape == (4, 6, 6 * 6, 640) and a.signals.dtype == np.float32
    assert a.epoch_valid.shape == (4, 6)
    # 2-min recordings = 4 epochs of 6: a prefix is valid, the rest padding (zeros, unscored, NaN onset)
    assert a.epoch_valid[:, :4].all() and not a.epoch_valid[:, 4:].any()
    assert (a.signals[:, :, 4 * 6 :] == 0).all() and (a.stages[:, 4:] == UNSCORED).all()
    assert np.isnan(a.epoch_onset_s[:, 4:]).all()
    # site a has every slot; b lacks EMG; c lacks RESP and a second EEG: those slots are zeros/False
    assert a.channel_valid.all()
    assert b.channel_valid[:, SLOTS.index("EMG")].sum() == 0 and b.channel_valid[:, :5].all()
    for slot in ("BAS2", "RESP"):
        assert not c.channel_valid[:, SLOTS.index(slot)].any()
        assert (c.signals[:, SLOTS.index(slot)] == 0).all()
    assert c.counts["missing_slots"]["RESP"] == 3
    # robust standardisation per channel: median ~0 over the valid part
    valid = a.signals[0, 0, : 4 * 6]
    assert abs(float(np.median(valid))) < 0.05 and np.abs(valid).max() <= 20.0
    scored = np.concatenate([s.stages[s.epoch_valid] for s in sites])
    assert set(np.unique(scored)) <= {UNSCORED, 0, 1, 2, 3, 4}
    # Sleep-EDF style site a: its trailing "Sleep stage ?" stretch past the signal is dropped and counted
    assert a.counts["unscored_epochs"]["beyond_signal"] == 4 * 20
    # site b's hypnograms start 60 s after the PSG: epochs are placed on the PSG timeline
    assert np.allclose(b.epoch_onset_s[:, 0], 60.0)
    assert a.times.shape == (4, 2) and set(np.unique(a.events)) <= {0.0, 1.0} and (a.times >= 0).all()
    assert set(a.male) <= {0.0, 1.0} and ((a.age >= 20) & (a.age <= 90)).all()


def test_synthesis_is_deterministic(tmp_path: Path) -> None:
    one = synthesize_psg_sites(tmp_path / "one", n_sites=1, sizes=[2], seed=3, minutes=1.0)[0]
    two = synthesize_psg_sites(tmp_path / "two", n_sites=1, sizes=[2], seed=3, minutes=1.0)[0]
    assert (one / "recordings.csv").read_text() == (two / "recordings.csv").read_text()
    assert np.array_equal(load_psg_site(one).signals, load_psg_site(two).signals)


@pytest.mark.parametrize("fs", [100, 256, 25])
def test_resampling_to_128_hz_keeps_exact_length_and_frequency(tmp_path: Path, fs: int) -> None:
    psg, hyp = tmp_path / "r.edf", tmp_path / "r-hyp.edf"
    write_edf(psg, START, ["EEG Fpz-Cz"], [_sine(3.0, fs, 90)], [fs])
    write_hypnogram(hyp, START, _aasm(["W", "N1", "N2"]))
    record = load_psg_record(psg, hyp, ("BAS1",), max_epochs=3)
    x = record.signals[0].reshape(-1)
    assert x.size == 3 * EPOCH_SAMPLES  # 90 s at 128 Hz exactly
    t = np.arange(x.size) / 128.0
    reference = np.sin(2 * np.pi * 3.0 * t)
    core = slice(256, -256)  # away from the filter's edges
    assert np.corrcoef(x[core], reference[core])[0, 1] > 0.99
    assert list(record.stages) == [0, 1, 2]


def test_window_starts_before_first_sleep_and_cuts_long_nights(tmp_path: Path) -> None:
    stages = ["W"] * 8 + ["N1", "N2", "N2", "N3", "R", "R", "W", "N2"]
    psg, hyp = tmp_path / "n.edf", tmp_path / "n.csv"
    # each epoch's EEG is a sine whose frequency tells which epoch it is
    signal = np.concatenate([_sine(1.0 + i, 100, 30) for i in range(len(stages))])
    write_edf(psg, START, ["EEG C4-A1"], [signal], [100])
    onsets = [30.0 * i for i in range(len(stages))]
    pd.DataFrame({"onset_s": onsets, "duration_s": 30.0, "stage": stages}).to_csv(hyp, index=False)
    record = load_psg_record(psg, hyp, SLOTS, max_epochs=5, lead_wake_epochs=2)
    assert list(record.stages) == [0, 0, 1, 2, 2]  # from 2 epochs before the first N1
    assert list(record.epoch_onset_s) == [180.0, 210.0, 240.0, 270.0, 300.0]
    assert record.info["epochs_cut"] == len(stages) - 6 - 5
    epoch0 = record.signals[0, :6].reshape(-1)
    spectrum = np.abs(np.fft.rfft(epoch0))
    assert np.fft.rfftfreq(epoch0.size, 1 / 128)[spectrum.argmax()] == pytest.approx(7.0, abs=0.05)  # epoch 6
    assert record.channel_valid.tolist() == [True, False, False, False, False, False]


def test_signal_longer_than_hypnogram_is_truncated_and_counted(tmp_path: Path) -> None:
    psg, hyp = tmp_path / "l.edf", tmp_path / "l-hyp.edf"
    write_edf(psg, START, ["EEG Fpz-Cz", "EMG submental"], [_sine(2, 100, 150), _sine(30, 100, 150)], [100, 100])
    write_hypnogram(hyp, START, _aasm(["W", "N2", "N3"]))
    record = load_psg_record(psg, hyp, SLOTS, max_epochs=8)
    assert record.info["signal_epochs_without_stage"] == 2
    assert record.epoch_valid.tolist() == [True] * 3 + [False] * 5


def test_hypnogram_longer_than_signal_is_an_error_unless_unscored(tmp_path: Path) -> None:
    psg = tmp_path / "s.edf"
    write_edf(psg, START, ["EEG Fpz-Cz"], [_sine(2, 100, 60)], [100])
    too_long = tmp_path / "long.edf"
    write_hypnogram(too_long, START, _aasm(["W", "N1", "N2"]))
    with pytest.raises(InputError, match=r"long\.edf: hypnogram_file: scores 3 epochs .* only 2"):
        load_psg_record(psg, too_long)
    trailing = tmp_path / "trailing.edf"
    write_hypnogram(trailing, START, _aasm(["W", "N1"]) + [(60.0, 300.0, "Sleep stage ?")])
    record = load_psg_record(psg, trailing, max_epochs=2)
    assert record.info["unscored"] == Counter({"beyond_signal": 10})
    assert list(record.stages) == [0, 1]


def test_unknown_stage_label_is_an_error_and_unscored_labels_are_counted(tmp_path: Path) -> None:
    bad = tmp_path / "bad.edf"
    write_hypnogram(bad, START, _aasm(["W", "N2", "X"]))
    with pytest.raises(InputError, match=r"bad\.edf: annotation: unknown sleep stage label 'Sleep stage X'"):
        read_hypnogram(bad)
    bad_csv = tmp_path / "bad.csv"
    pd.DataFrame({"onset_s": [0, 30], "duration_s": [30, 30], "stage": ["N2", "deep"]}).to_csv(bad_csv, index=False)
    with pytest.raises(InputError, match=r"bad\.csv: stage: data row 2: unknown sleep stage label 'deep'"):
        read_hypnogram(bad_csv)
    ok = tmp_path / "ok.edf"
    write_hypnogram(ok, START, [(0, 60, "Sleep stage W"), (60, 30, "Movement time"), (90, 30, "Sleep stage 4"),
                                (150, 30, "Sleep stage ?"), (200.0, 0.0, "Lights on")])  # fmt: skip
    hypnogram = read_hypnogram(ok)
    assert hypnogram.stages.tolist() == [0, 0, UNSCORED, 3, UNSCORED, UNSCORED]  # epoch 4 is a gap
    assert hypnogram.unscored_counts() == Counter({"movement time": 1, "gap": 1, "?": 1})


def test_off_grid_and_overlapping_annotations_are_errors(tmp_path: Path) -> None:
    off = tmp_path / "off.csv"
    pd.DataFrame({"onset_s": [0, 45], "duration_s": [30, 30], "stage": ["W", "N1"]}).to_csv(off, index=False)
    with pytest.raises(InputError, match="not on the 30-s epoch grid"):
        read_hypnogram(off)
    overlap = tmp_path / "overlap.csv"
    pd.DataFrame({"onset_s": [0, 30], "duration_s": [60, 30], "stage": ["W", "N1"]}).to_csv(overlap, index=False)
    with pytest.raises(InputError, match="overlaps"):
        read_hypnogram(overlap)


def test_corrupt_edf_and_unmapped_channels_are_errors(tmp_path: Path) -> None:
    hyp = tmp_path / "h.edf"
    write_hypnogram(hyp, START, _aasm(["W"]))
    corrupt = tmp_path / "corrupt.edf"
    write_edf(corrupt, START, ["EEG Fpz-Cz"], [_sine(2, 100, 60)], [100])
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    with pytest.raises(InputError, match=r"corrupt\.edf: psg_file: not a readable EDF/EDF\+ file"):
        load_psg_record(corrupt, hyp)
    odd = tmp_path / "odd.edf"
    write_edf(odd, START, ["Mystery"], [_sine(2, 100, 60)], [100])
    with pytest.raises(InputError, match=r"odd\.edf: channels: no channel maps to a slot \(Mystery\)"):
        load_psg_record(odd, hyp)
    record = load_psg_record(odd, hyp, SLOTS, resolve_channel_map(SLOTS, {"Mystery": "EKG"}), max_epochs=2)
    assert record.channel_valid.tolist() == [False, False, False, False, True, False]


def test_flat_channel_is_marked_missing(tmp_path: Path) -> None:
    psg, hyp = tmp_path / "f.edf", tmp_path / "f-hyp.edf"
    write_edf(psg, START, ["EEG Fpz-Cz", "ECG"], [_sine(2, 100, 60), np.zeros(6000)], [100, 100])
    write_hypnogram(hyp, START, _aasm(["W", "N1"]))
    record = load_psg_record(psg, hyp, SLOTS, max_epochs=2)
    assert record.channel_valid.tolist() == [True, False, False, False, False, False]
    assert record.info["flat_channels"] == ["ECG"]


def test_recordings_csv_is_validated(synthetic_sites: list[Path], tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    frame = pd.read_csv(synthetic_sites[0] / "recordings.csv")
    frame["psg_file"] = [str(synthetic_sites[0] / p) for p in frame["psg_file"]]
    frame["hypnogram_file"] = [str(synthetic_sites[0] / p) for p in frame["hypnogram_file"]]
    frame.loc[2, "sex"] = "X"
    frame.to_csv(site / "recordings.csv", index=False)
    with pytest.raises(InputError, match=r"recordings\.csv: sex: data row 3: 'X' is not M or F"):
        load_psg_site(site)
    frame.loc[2, "sex"] = "f"
    frame.drop(columns=["event_cvd"]).to_csv(site / "recordings.csv", index=False)
    with pytest.raises(InputError, match="event_cvd: missing required column"):
        load_psg_site(site, outcomes=("cvd",))
    # prediction: no hypnogram column needed; epochs then start at the PSG start
    frame.drop(columns=["hypnogram_file"]).to_csv(site / "recordings.csv", index=False)
    loaded = load_psg_site(site, require_hypnogram=False, max_epochs=4)
    assert (loaded.stages == UNSCORED).all() and loaded.epoch_valid.all() and loaded.male[2] == 0.0
    assert np.allclose(loaded.epoch_onset_s[0], [0, 30, 60, 90])


def test_label_and_slot_helpers() -> None:
    assert [stage_code(s) for s in ("Sleep stage W", "sleep stage 1", " N2 ", "Sleep stage 3", "4", "REM", "R")] == [
        0, 1, 2, 3, 3, 4, 4,
    ]  # fmt: skip
    assert stage_code("Movement time") == UNSCORED and stage_code("Sleep stage ?") == UNSCORED
    assert stage_code("Sleep stage X") is None and stage_code("Lights off") is None
    assert [slot_modality(s) for s in SLOTS] == ["BAS", "BAS", "BAS", "RESP", "EKG", "EMG"]
    mapped = resolve_channel_map(("BAS1", "EMG"))
    assert mapped["eeg fpz-cz"] == "BAS1" and mapped["emg submental"] == "EMG" and "ecg" not in mapped


def test_real_sleep_edf_annotation_file() -> None:
    path = _annotation_file()
    if path is None:
        pytest.skip("shared/data/edf-sample/test_edfann.edf is not beside this checkout")
    hypnogram = read_hypnogram(path)
    assert len(hypnogram.stages) == 854  # 854 thirty-second AASM stage annotations; lights off/on ignored
    assert hypnogram.onset_s == 0.0 and hypnogram.start == datetime(2001, 1, 1, 23, 59, 30)
    assert np.bincount(hypnogram.stages, minlength=5).tolist() == [151, 109, 430, 23, 141]
    assert hypnogram.stages[:2].tolist() == [0, 0] and not hypnogram.unscored_counts()


def _site_copy(source: Path, dest: Path) -> pd.DataFrame:
    """recordings.csv of `source` with absolute file paths, written into the new folder `dest`."""
    dest.mkdir()
    frame = pd.read_csv(source / "recordings.csv")
    for col in ("psg_file", "hypnogram_file"):
        frame[col] = [str(source / p) for p in frame[col]]
    return frame


def _one_line_error(site: Path, **kwargs: object) -> str:
    with pytest.raises(InputError) as caught:
        load_psg_site(site, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_site_inputs_are_one_line_errors_naming_file_and_field(synthetic_sites: list[Path], tmp_path: Path) -> None:
    site = tmp_path / "site"
    frame = _site_copy(synthetic_sites[0], site)
    csv = site / "recordings.csv"
    missing = _one_line_error(site)
    assert missing == f"{csv}: missing file"

    frame.loc[1, "hypnogram_file"] = str(tmp_path / "nowhere-Hypnogram.edf")
    frame.to_csv(csv, index=False)
    assert _one_line_error(site) == f"{tmp_path / 'nowhere-Hypnogram.edf'}: hypnogram_file: file not found"

    frame.loc[1, "hypnogram_file"] = ""
    frame.to_csv(csv, index=False)
    assert _one_line_error(site) == f"{csv}: hypnogram_file: data row 2: empty"

    frame.drop(columns=["hypnogram_file"]).to_csv(csv, index=False)
    assert _one_line_error(site).startswith(f"{csv}: hypnogram_file: missing required column (columns found: record_id, ")
    frame.drop(columns=["record_id"]).to_csv(csv, index=False)
    assert _one_line_error(site).startswith(f"{csv}: record_id: missing required column")
    frame.drop(columns=["age"]).to_csv(csv, index=False)
    assert _one_line_error(site).startswith(f"{csv}: age: missing required column")

    frame = _site_copy(synthetic_sites[0], tmp_path / "site2")
    corrupt_hyp = tmp_path / "corrupt-Hypnogram.edf"
    corrupt_hyp.write_bytes(b"0       not an EDF header at all")
    frame.loc[0, "hypnogram_file"] = str(corrupt_hyp)
    frame.to_csv(tmp_path / "site2" / "recordings.csv", index=False)
    assert _one_line_error(tmp_path / "site2").startswith(f"{corrupt_hyp}: hypnogram_file: not a readable EDF+ annotation file")

    frame = _site_copy(synthetic_sites[0], tmp_path / "site3")
    corrupt_psg = tmp_path / "corrupt-PSG.edf"
    corrupt_psg.write_bytes(Path(frame.loc[2, "psg_file"]).read_bytes()[:1000])  # truncated mid-header
    frame.loc[2, "psg_file"] = str(corrupt_psg)
    frame.to_csv(tmp_path / "site3" / "recordings.csv", index=False)
    assert _one_line_error(tmp_path / "site3").startswith(f"{corrupt_psg}: psg_file: not a readable EDF/EDF+ file")
    frame.loc[2, "psg_file"] = str(tmp_path / "gone.edf")
    frame.to_csv(tmp_path / "site3" / "recordings.csv", index=False)
    assert _one_line_error(tmp_path / "site3") == f"{tmp_path / 'gone.edf'}: psg_file: file not found"


def test_real_hypnogram_with_a_synthetic_signal_loads_as_a_record(tmp_path: Path) -> None:
    path = _annotation_file()
    if path is None:
        pytest.skip("shared/data/edf-sample/test_edfann.edf is not beside this checkout")
    hypnogram = read_hypnogram(path)
    seconds = 30 * len(hypnogram.stages)
    psg = tmp_path / "SN001-PSG.edf"
    write_edf(psg, hypnogram.start, ["EEG C4-M1"], [_sine(1.5, 10, seconds)], [10])  # 10 Hz -> resampled to 128 Hz
    record = load_psg_record(psg, path, SLOTS, max_epochs=8, lead_wake_epochs=3)
    first_sleep = int(np.flatnonzero((hypnogram.stages >= 1) & (hypnogram.stages <= 4))[0])
    start = first_sleep - 3
    assert record.stages.tolist() == hypnogram.stages[start : start + 8].tolist()
    assert record.stages[:3].tolist() == [0, 0, 0] and record.stages[3] != 0  # three wake epochs lead in
    assert record.epoch_onset_s[0] == 30.0 * start and record.epoch_valid.all()
    assert record.channel_valid.tolist() == [True, False, False, False, False, False]
    assert record.info["epochs_cut"] == len(hypnogram.stages) - start - 8
