"""Tabular sites (tasks `tabular_binary`, `tabular_survival`): the on-disk format, the covariate
schema declared in the run config, and a strict loader that turns one site's table into model inputs.

On-disk format of one site
==========================
One folder per hospital under ``data.root`` holding one table, ``<root>/<site>/table.csv`` (or
``table.csv.gz``; exactly one of the two), header row first, comma separated, UTF-8:

==============  ========  ==========================================================================
column          required  content
==============  ========  ==========================================================================
``data.id_column``   yes  text, non-empty, unique in the file (default name ``id``)
covariates           yes  one column per covariate declared in ``data.covariates`` (same names,
                          any order; spaces and punctuation are fine: the CSV header must quote a
                          name holding a comma)
``data.label_column``     tabular_binary: 0 or 1 (default name ``label``)
``data.time_column``      tabular_survival: follow-up time, a finite number >= 0 (default ``time``)
``data.event_column``     tabular_survival: 1 = the event happened at the time, 0 = censored (``event``)
``split``            no   ``train``, ``val`` or ``test``: a fixed split agreed in advance
==============  ========  ==========================================================================

Other columns are ignored. Without a ``split`` column the site's rows are split at random into
training and validation (``data.val_fraction``, stratified by label / event, ``data.split_seed``)
and there is no test split. With it, ``train`` rows train, ``val`` rows are the per-round validation
(when no row says ``val``, ``data.val_fraction`` of the ``train`` rows are set aside instead) and
``test`` rows are used only by the final test evaluation (``fedcare simulate`` / ``fedcare evaluate``).
A site may instead (or as well) keep its test rows in a subfolder, ``<root>/<site>/test/table.csv``
(same columns; every row there is a test row, whatever its ``split`` says; ids unique across both).

Covariates (run config)
=======================
``data.covariates`` lists every covariate: ``{name, type: numeric}`` or ``{name, type: categorical,
levels: [...]}``. The level list is fixed in the config so every site builds the same one-hot layout:
the first level is the reference (all indicators 0), every other level gets one 0/1 input named
``<name>=<level>``. Values are compared as text after stripping spaces (a level written ``1`` in YAML
matches the cell ``1``, not ``1.0``). The model's inputs are the covariates in config order; the
resolved config (``config.yaml`` of a run) shows each covariate's inputs (``inputs:``, derived,
recomputed on load).

Standardisation is DP-safe by construction: every numeric covariate needs ``data.standardize:
{<name>: {mean: m, sd: s}}`` and enters the model as ``(value - m) / s``. The statistics come from
the config (published reference values, or agreed by the consortium), never from a site's rows, so
no site statistic leaves a hospital outside its privacy budget. A DP estimate of the statistics
(a Gaussian mechanism counted in the site's ledger) would be the alternative; it is not implemented.

Errors
======
Config errors name the config file and the field (``data.covariates[2].levels``). Loading raises an
``InputError`` naming the table and the column, with the first bad data row, for: a missing table or
column, an unreadable file, a site without rows, an empty or duplicate id, a missing value (empty
field, ``NA``, ``NaN``) in a covariate or outcome column, a non-numeric or infinite numeric value, a
categorical value not among the declared levels, a label or event other than 0/1, a negative time, a
``split`` value other than train/val/test, and a site without ``train`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shared.data.public_stats import parse_public_stats
from shared.data.splits import SPLIT_COLUMN, parse_split
from shared.data.tables import find_site_table, first_bad, read_csv_as_text, require_columns
from shared.errors import InputError

TABLE_NAME = "table"  # <root>/<site>/table.csv or table.csv.gz
TEST_FOLDER = "test"  # optional <root>/<site>/test/table.csv: test rows kept apart
COVARIATE_TYPES = ("numeric", "categorical")
COVARIATE_KEYS = ("name", "type", "levels", "inputs")  # inputs: derived, shown in the resolved config
MISSING_TEXT = frozenset({"na", "nan", "n/a", "null", "none"})  # read as missing (then rejected)


@dataclass(frozen=True)
class Covariate:
    name: str
    type: str  # numeric | categorical
    levels: tuple[str, ...] = ()  # categorical: the fixed level list; levels[0] is the reference

    def input_names(self) -> list[str]:
        if self.type == "numeric":
            return [self.name]
        return [f"{self.name}={level}" for level in self.levels[1:]]


@dataclass(frozen=True)
class TabularSchema:
    """What every site reads and how its rows become model inputs (from the run config alone)."""

    covariates: tuple[Covariate, ...]
    standardize: dict[str, tuple[float, float]]  # numeric covariate -> (mean, sd)
    outcome: str  # binary | survival
    id_column: str = "id"
    label_column: str = "label"
    time_column: str = "time"
    event_column: str = "event"

    @property
    def input_names(self) -> list[str]:
        return [name for c in self.covariates for name in c.input_names()]

    @property
    def n_inputs(self) -> int:
        return len(self.input_names)

    @property
    def outcome_columns(self) -> tuple[str, ...]:
        return (self.label_column,) if self.outcome == "binary" else (self.time_column, self.event_column)

    def input_descriptions(self) -> list[list[str]]:
        """Per covariate, what each of its model inputs is, e.g. ``x[0] = (age - 60) / 12``, ``x[3] = 1 if sex is male``."""
        out, k = [], 0
        for c in self.covariates:
            if c.type == "numeric":
                mean, sd = self.standardize[c.name]
                out.append([f"x[{k}] = ({c.name} - {mean:g}) / {sd:g}"])
                k += 1
                continue
            lines = [f"x[{k + i}] = 1 if {c.name} is {level}" for i, level in enumerate(c.levels[1:])]
            out.append(lines + [f"(reference level {c.levels[0]}: all 0)"])
            k += len(c.levels) - 1
        return out


def _level_text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = str(value).strip()
    return text or None


def schema_from_config(cfg: Any) -> TabularSchema:
    """The schema of a tabular run config; raises InputError(config, data.<field>) for a bad declaration."""
    d, source = cfg.data, cfg.source
    outcome = "survival" if cfg.task == "tabular_survival" else "binary"
    if not d.covariates:
        raise InputError(source, "data.covariates", "a tabular task needs at least one covariate: [{name, type, levels}]")
    # each task's data section has only its own outcome columns (shared/config_schema.py)
    label, time, event = (getattr(d, f, None) or default for f, default in
                          (("label_column", "label"), ("time_column", "time"), ("event_column", "event")))
    outcome_cols = (label,) if outcome == "binary" else (time, event)
    reserved = {d.id_column, SPLIT_COLUMN, *outcome_cols}
    if len(reserved) != 2 + len(outcome_cols):
        raise InputError(source, "data.id_column", "the id, outcome and split columns must have different names")
    covariates, seen = [], set()
    for i, raw in enumerate(d.covariates):
        where = f"data.covariates[{i}]"
        unknown = sorted(set(raw) - set(COVARIATE_KEYS))
        if unknown:
            raise InputError(source, where, f"unknown key {unknown[0]!r}; allowed: {', '.join(COVARIATE_KEYS[:3])}")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise InputError(source, f"{where}.name", f"a non-empty column name without leading/trailing spaces, got {name!r}")
        if name in seen:
            raise InputError(source, f"{where}.name", f"{name!r} is declared twice")
        if name in reserved:
            raise InputError(source, f"{where}.name", f"{name!r} is the id, outcome or split column")
        seen.add(name)
        kind = raw.get("type")
        if kind not in COVARIATE_TYPES:
            raise InputError(source, f"{where}.type", f"one of {', '.join(COVARIATE_TYPES)}, got {kind!r}")
        if kind == "numeric":
            if "levels" in raw:
                raise InputError(source, f"{where}.levels", "only categorical covariates have levels")
            covariates.append(Covariate(name, kind))
            continue
        levels = raw.get("levels")
        texts = [_level_text(v) for v in levels] if isinstance(levels, list) else []
        if len(texts) < 2 or None in texts:
            raise InputError(source, f"{where}.levels", "a categorical covariate needs a list of at least 2 non-empty levels "
                                                       "(the first is the reference)")
        if len(set(texts)) != len(texts):
            raise InputError(source, f"{where}.levels", "levels must be unique")
        covariates.append(Covariate(name, kind, tuple(texts)))  # type: ignore[arg-type]
    numeric = {c.name for c in covariates if c.type == "numeric"}
    standardize = parse_public_stats(d.standardize, source, numeric.__contains__, "not a numeric covariate of data.covariates")
    for c in covariates:
        if c.type == "numeric" and c.name not in standardize:
            raise InputError(source, f"data.standardize.{c.name}", "missing: every numeric covariate needs {mean, sd} "
                                                                  "given in the config (public or agreed values; statistics "
                                                                  "fitted at a site would leave it outside the DP budget)")
    return TabularSchema(tuple(covariates), standardize, outcome, d.id_column, label, time, event)


def check_tabular_config(cfg: Any) -> TabularSchema:
    """Validate the tabular declaration of `cfg` and write each covariate's model inputs into it
    (``inputs``), so the resolved config shows the mapping from column names to model inputs."""
    schema = schema_from_config(cfg)
    # new dicts: the caller's declaration (e.g. a module-level constant) is not modified
    cfg.data.covariates = [{**raw, "inputs": lines} for raw, lines in zip(cfg.data.covariates, schema.input_descriptions())]
    return schema


@dataclass
class TabularSite:
    path: Path  # the table read
    ids: np.ndarray  # (N,) str
    x: np.ndarray  # (N, n_inputs) float32, standardised / one-hot
    outcome: np.ndarray | None  # binary: (N,) float32 labels; survival: (N, 2) float32 [time, event]; None if not read
    split: np.ndarray | None  # (N,) str in SPLITS, None without a split column


def _missing(raw: pd.Series) -> np.ndarray:
    return (raw.isna() | raw.str.strip().str.lower().isin(MISSING_TEXT | {""})).to_numpy()


def _numeric(path: Path, col: str, raw: pd.Series) -> np.ndarray:
    missing = _missing(raw)
    if missing.any():
        raise first_bad(path, col, raw, missing, "is a missing value (fill it or drop the row)")
    values = pd.to_numeric(raw.str.strip(), errors="coerce").to_numpy(dtype=float)
    if np.isnan(values).any():
        raise first_bad(path, col, raw, np.isnan(values), "is not a number")
    if not np.isfinite(values).all():
        raise first_bad(path, col, raw, ~np.isfinite(values), "is not a finite number")
    return values


def _zero_one(path: Path, col: str, raw: pd.Series) -> np.ndarray:
    values = _numeric(path, col, raw)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise first_bad(path, col, raw, bad, "must be 0 or 1")
    return values


def encode_covariates(frame: pd.DataFrame, path: Path, schema: TabularSchema) -> np.ndarray:
    """(N, n_inputs) float32 model inputs of the covariate columns of `frame` (text cells)."""
    blocks = []
    for c in schema.covariates:
        raw = frame[c.name]
        if c.type == "numeric":
            mean, sd = schema.standardize[c.name]
            blocks.append(((_numeric(path, c.name, raw) - mean) / sd)[:, None])
            continue
        missing = _missing(raw)
        if missing.any():
            raise first_bad(path, c.name, raw, missing, "is a missing value (fill it or drop the row)")
        text = raw.str.strip().to_numpy()
        known = np.isin(text, c.levels)
        if not known.all():
            shown = ", ".join(c.levels)
            raise first_bad(path, c.name, raw, ~known, f"is not one of the declared levels ({shown}; data.covariates)")
        blocks.append((text[:, None] == np.asarray(c.levels[1:])[None, :]).astype(float))
    return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((len(frame), 0), np.float32)


def load_tabular_site(
    site_dir: Path, schema: TabularSchema, require_outcome: bool = True, require_train: bool = True
) -> TabularSite:
    """Read and check ``<site_dir>/table.csv`` (see the module docstring). With `require_outcome` False
    (new patients for `fedcare predict`) the outcome columns are not read and may be absent; with
    `require_train` False (a ``test/`` folder) a split column need not name a train row."""
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise InputError(site_dir, None, "site folder not found")
    path = find_site_table(site_dir, TABLE_NAME)
    frame = read_csv_as_text(path)
    wanted = (schema.id_column, *(c.name for c in schema.covariates), *(schema.outcome_columns if require_outcome else ()))
    require_columns(frame, path, wanted)
    if len(frame) == 0:
        raise InputError(path, None, "no data rows: an empty site")
    ids_raw = frame[schema.id_column]
    empty = _missing(ids_raw)
    if empty.any():
        raise first_bad(path, schema.id_column, ids_raw, empty, "is an empty id")
    ids = ids_raw.str.strip().to_numpy(dtype=str)
    duplicated = pd.Series(ids).duplicated().to_numpy()
    if duplicated.any():
        raise first_bad(path, schema.id_column, ids_raw, duplicated, "is a duplicate id")
    x = encode_covariates(frame, path, schema)
    outcome = None
    if require_outcome:
        if schema.outcome == "binary":
            outcome = _zero_one(path, schema.label_column, frame[schema.label_column]).astype(np.float32)
        else:
            time = _numeric(path, schema.time_column, frame[schema.time_column])
            if (time < 0).any():
                raise first_bad(path, schema.time_column, frame[schema.time_column], time < 0, "is negative (times must be >= 0)")
            event = _zero_one(path, schema.event_column, frame[schema.event_column])
            outcome = np.stack([time, event], axis=1).astype(np.float32)
    split = parse_split(frame, path, require_train=require_outcome and require_train)
    return TabularSite(path, ids, x, outcome, split)
