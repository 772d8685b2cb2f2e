"""The site's security log: one JSON line per security event in state_dir/security_log.jsonl.

Minimal on purpose (append, flush, fsync); a hash-chained, signed log can replace this function
without changing its callers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

SECURITY_LOG_FILE = "security_log.jsonl"


def log_security_event(state_dir: Path, event: dict[str, Any]) -> None:
    """Append `{"time": <unix seconds>, **event}` as one line to state_dir/security_log.jsonl."""
    path = Path(state_dir) / SECURITY_LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": round(time.time(), 3), **event}, sort_keys=True, default=str)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_security_log(state_dir: Path) -> list[dict[str, Any]]:
    path = Path(state_dir) / SECURITY_LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
