"""The PSG and multimodal loaders read their CSVs through the strict reader (shared/data/tables.py): a
short or long row, an empty file or a missing column is one InputError naming the file (and column)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from shared.data.omics import load_multimodal_site
from shared.data.psg import load_psg_site, read_hypnogram
from shared.data.writers import write_multimodal_site
from shared.errors import InputError

GENES = ["G1", "G2"]


def _one_line(err: pytest.ExceptionInfo[InputError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def _multimodal_site(tmp_path: Path) -> Path:
    return write_multimodal_site(
        tmp_path / "site",
        pd.DataFrame({"patient_id": ["p1", "p2"], "label": [0, 1]}),
        pd.DataFrame({"patient_id": ["p1", "p2"], "G1": [1.0, 2.0], "G2": [3.0, 4.0]}),
        pd.DataFrame({"patient_id": ["p1", "p2"], "text": ["Stable.", "Clear margins."]}),
    )


@pytest.mark.parametrize("table", ["labels", "omics", "notes"])
def test_multimodal_row_with_an_extra_field_names_file_and_row(tmp_path: Path, table: str):
    site = _multimodal_site(tmp_path)
    path = site / f"{table}.csv"
    lines = path.read_text().splitlines()
    lines[2] += ",surplus"  # pandas alone would shift or drop this field silently
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as err:
        load_multimodal_site(site, GENES, "binary")
    line = _one_line(err)
    assert line.startswith(f"{path}: not a readable CSV file") and "line 3" in line


def test_multimodal_short_row_and_empty_file(tmp_path: Path):
    site = _multimodal_site(tmp_path)
    (site / "omics.csv").write_text("patient_id,G1,G2\np1,1,3\np2,2\n")
    with pytest.raises(InputError) as err:
        load_multimodal_site(site, GENES, "binary")
    assert "omics.csv" in _one_line(err) and "2 fields, the header has 3" in _one_line(err)
    (site / "omics.csv").write_text("patient_id,G1,G2\np1,1,3\np2,2,NA\n")  # the missing marker still reads as missing
    assert load_multimodal_site(site, GENES, "binary").omics.loc["p2"].isna().tolist() == [False, True]
    (site / "labels.csv").write_text("")
    with pytest.raises(InputError) as err:
        load_multimodal_site(site, GENES, "binary")
    assert "labels.csv" in _one_line(err) and "file is empty" in _one_line(err)


def test_psg_recordings_csv_malformed_rows_are_one_line_errors(tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    recordings = site / "recordings.csv"
    recordings.write_text("record_id,psg_file,hypnogram_file,age,sex\nr1,a.edf,a.csv,50,M,extra\n")
    with pytest.raises(InputError) as err:
        load_psg_site(site)
    line = _one_line(err)
    assert str(recordings) in line and "data row 1 (line 2) has 6 fields, the header has 5" in line
    recordings.write_text("record_id,psg_file,age,sex\nr1,a.edf,50,M\n")
    with pytest.raises(InputError) as err:
        load_psg_site(site)
    assert "hypnogram_file: missing required column" in _one_line(err)
    recordings.write_bytes(b"record_id,psg_file\n\xff\xfe,x\n")
    with pytest.raises(InputError) as err:
        load_psg_site(site)
    assert "not a readable CSV file" in _one_line(err)


def test_csv_hypnogram_malformed_rows_are_one_line_errors(tmp_path: Path):
    hyp = tmp_path / "night.csv"
    hyp.write_text("onset_s,duration_s,stage\n0,30,W\n30,30\n")
    with pytest.raises(InputError) as err:
        read_hypnogram(hyp)
    assert str(hyp) in _one_line(err) and "data row 2 (line 3) has 2 fields" in _one_line(err)
    hyp.write_text("onset_s,stage\n0,W\n")
    with pytest.raises(InputError) as err:
        read_hypnogram(hyp)
    assert "duration_s: missing required column" in _one_line(err)
    hyp.write_text("onset_s,duration_s,stage\n0,30,W\n30,30,N2\n")
    assert read_hypnogram(hyp).stages.tolist() == [0, 2]
