"""The one error type for bad user input: names the file and the field, prints as one line."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input (config, data file, key, ledger). `str()` is a single line naming file and field."""

    def __init__(self, source: str | Path | None, field: str | None, problem: str) -> None:
        self.source = str(source) if source is not None else None
        self.field = field
        self.problem = " ".join(str(problem).split())  # always one line
        where = ": ".join(p for p in (self.source, self.field) if p)
        super().__init__(f"{where}: {self.problem}" if where else self.problem)
