"""Reading a site's CSV tables strictly: one reader, one column check and one bad-value message for
every loader (events, visits, omics), so each rejects malformed files the same way."""

from __future__ import annotations

import csv
import gzip
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from shared.errors import InputError

UNREADABLE = (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError, gzip.BadGzipFile, zlib.error, EOFError,
              OSError)


def find_site_table(site_dir: Path, name: str) -> Path:
    """`site_dir/name.csv` or `site_dir/name.csv.gz`, whichever exists (exactly one must)."""
    plain, packed = site_dir / f"{name}.csv", site_dir / f"{name}.csv.gz"
    if plain.is_file() and packed.is_file():
        raise InputError(plain, None, f"both {plain.name} and {packed.name} exist; keep one")
    if packed.is_file():
        return packed
    if not plain.is_file():
        raise InputError(plain, None, f"missing file (expected {plain.name} or {packed.name})")
    return plain


def read_csv_as_text(path: Path) -> pd.DataFrame:
    """Every column as str, only empty fields missing, header names stripped; unreadable files and rows
    with another number of fields than the header raise InputError(path)."""
    try:
        with warnings.catch_warnings():
            # a row with more fields than the header: pandas warns (index_col=False) and drops data
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(
                path, dtype=str, keep_default_na=False, na_values=[""], index_col=False, compression="infer"
            )
    except pd.errors.EmptyDataError:
        raise InputError(path, None, "file is empty (no header row)") from None
    except UNREADABLE as err:
        if isinstance(err, pd.errors.ParserWarning):
            check_row_lengths(path)  # names the row
        raise InputError(path, None, f"not a readable CSV file: {type(err).__name__}: {err}") from None
    check_row_lengths(path)
    df.columns = [str(c).strip() for c in df.columns]
    return df


def check_row_lengths(path: Path) -> None:
    """Every non-blank row must have as many fields as the header: pandas would silently pad a short
    row with missing values."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            n_header = len(next(reader, []))
            rows = (row for row in reader if row)
            for i, row in enumerate(rows, start=1):
                if len(row) != n_header:
                    raise InputError(path, None, f"not a readable CSV file: data row {i} (line {reader.line_num}) has "
                                                 f"{len(row)} fields, "
                                                 f"the header has {n_header}")
    except csv.Error as err:
        raise InputError(path, None, f"not a readable CSV file: {err}") from None


def require_columns(df: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    for col in columns:
        if col not in df.columns:
            shown = ", ".join(map(str, df.columns[:12])) + (", ..." if len(df.columns) > 12 else "")
            raise InputError(path, col, f"missing required column (columns found: {shown})")


def first_bad(path: Path, col: str, raw: pd.Series, bad: np.ndarray | pd.Series, problem: str) -> InputError:
    """The error naming the first row where `bad` holds (data row n is line n + 1, after the header)."""
    pos = int(np.flatnonzero(np.asarray(bad))[0])
    value = raw.iloc[pos]
    shown = "an empty field" if pd.isna(value) else repr(value.item() if isinstance(value, np.generic) else value)
    return InputError(path, col, f"data row {pos + 1} (line {pos + 2}): {shown} {problem}")
