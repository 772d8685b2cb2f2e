"""Round-by-round record of a run at the coordinating center: per-site status and whitelisted
metrics, printed as a table each round and saved as JSON (atomically) after each round.

The round's table and files are written by a background thread (`publish_round`, shared.io.SerialWriter)
while the next round runs; every method that changes the history first waits for them (`_settle`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from server.evaluation import is_calibration_key, weighted_mean
from shared.io import SerialWriter, load_json, write_json
from shared.privacy.dp_evaluation import EXACT_MARKER, RELEASE_KEYS, released_metrics

NOT_ASKED = "not asked"  # not sent a training request this round (not connected, or out of budget)
LEDGER_HEADS_FILE = "ledger_heads.json"  # site -> round -> ledger head hash its train reply carried


@dataclass
class RunHistory:
    run_dir: Path
    sites: list[str]
    primary_metric: str = "auroc"
    rounds: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)  # round -> site -> record
    events: list[str] = field(default_factory=list)  # human-readable notes (drops, refusals)
    site_level_dp: dict[int, dict[str, Any]] = field(default_factory=dict)  # round -> central DP accounting
    console: Console = field(default_factory=lambda: Console(highlight=False))
    writer: SerialWriter = field(default_factory=SerialWriter)  # the round's table and files, off the critical path

    @classmethod
    def resume(cls, run_dir: Path, sites: list[str], primary_metric: str, last_round: int) -> RunHistory:
        """The history of an interrupted run up to its last complete round (the last global
        checkpoint); rounds after it are dropped because they run again."""
        history = cls(run_dir, sites, primary_metric)
        path = run_dir / "metrics.json"
        if path.is_file():
            saved = load_json(path)
            history.rounds = {int(r): v for r, v in saved.get("rounds", {}).items() if int(r) <= last_round}
            history.events = [e for e in saved.get("events", []) if _event_round(e) is None or _event_round(e) <= last_round]
        history.note(f"resumed after round {last_round} (its global checkpoint); later rounds run again")
        return history

    def _settle(self) -> None:
        """Wait for the background writes (they read the history); a failed one raises here."""
        self.writer.settle()

    def site_record(self, server_round: int, site: str) -> dict[str, Any]:
        self._settle()
        return self.rounds.setdefault(server_round, {}).setdefault(site, {"status": NOT_ASKED})

    def record_train(self, server_round: int, site: str, status: str, reason: str, metrics: dict[str, Any],
                     ledger_head: str = "") -> None:
        """`ledger_head`: the hash of the last line of the site's privacy ledger after this round, as the site
        sent it; kept (when it is 64 hex digits) for `fedcare audit` to compare with the site's ledger."""
        rec = self.site_record(server_round, site)
        rec.update(status=status, reason=reason, train={k: float(v) for k, v in metrics.items()})
        if isinstance(ledger_head, str) and re.fullmatch(r"[0-9a-f]{64}", ledger_head):
            rec["ledger_head"] = ledger_head
        if status != "trained":
            self.note(f"round {server_round}: {site} did not train ({status}: {reason}); dropped from aggregation")

    def record_evaluate(self, server_round: int, site: str, metrics: dict[str, Any]) -> None:
        """A site's evaluation reply. A DP release (noisy histograms / confusion matrix) is kept under
        "release" and the metrics the center derives from it under "evaluate"; exact metrics (a site
        policy's `release.exact_metrics`) go to "evaluate" as sent."""
        values = {k: float(v) for k, v in metrics.items()}
        release = {k: v for k, v in values.items() if k in RELEASE_KEYS}
        rec = self.site_record(server_round, site)
        if release:
            rec["release"] = release
            rec["evaluate"] = released_metrics(release)
        else:
            rec["evaluate"] = values

    def record_failure(self, server_round: int, site: str, phase: str, reason: str) -> None:
        rec = self.site_record(server_round, site)
        if phase == "train":
            rec.update(status="failed", reason=reason)
        self.note(f"round {server_round}: {site} {phase} failed: {reason}")

    def record_site_level_dp(self, server_round: int, record: dict[str, Any]) -> None:
        self._settle()
        self.site_level_dp[server_round] = record

    def note(self, text: str) -> None:
        self._settle()
        self.events.append(text)
        self.console.print(f"[yellow]! {text}[/yellow]")

    def evaluations(self, server_round: int) -> dict[str, dict[str, float]]:
        """site -> the evaluation scalars it sent for this round's global model."""
        return {site: rec["evaluate"] for site, rec in self.rounds.get(server_round, {}).items() if "evaluate" in rec}

    def releases(self, server_round: int) -> dict[str, dict[str, float]]:
        """site -> the DP evaluation release it sent for this round's global model."""
        return {site: rec["release"] for site, rec in self.rounds.get(server_round, {}).items() if "release" in rec}

    def weighted(self, server_round: int, metric: str) -> float | None:
        return weighted_mean(self.evaluations(server_round), metric)

    def weighted_metrics(self) -> list[str]:
        """Metrics whose num-examples-weighted mean over sites means something (no CI bounds, no
        calibration bins: those are combined in server.evaluation)."""
        names = {m for sites in self.rounds.values() for rec in sites.values() for m in rec.get("evaluate", {})}
        return sorted(
            m for m in names
            if m not in ("num-examples", EXACT_MARKER) and not m.endswith(("_ci_low", "_ci_high")) and not is_calibration_key(m)
        )

    def print_round(self, server_round: int, total_rounds: int) -> None:
        table = Table(title=f"round {server_round}/{total_rounds}", title_justify="left")
        pm = self.primary_metric
        # no training loss: sites do not send it (an un-noised mean over their training data)
        for col in ("site", "status", "noise mult.", f"val {pm}", "val loss", "epsilon (cum.)", "n val"):
            table.add_column(col, justify="left" if col in ("site", "status") else "right")
        for site in self.sites:
            rec = self.rounds.get(server_round, {}).get(site, {"status": NOT_ASKED})
            tr, ev = rec.get("train", {}), rec.get("evaluate", {})
            table.add_row(
                site, rec.get("status", "-"), _fmt(tr.get("noise_multiplier")), _fmt(ev.get(pm)),
                _fmt(ev.get("val_loss")), _fmt(tr.get("epsilon"), 2), _fmt(ev.get("num-examples"), 0),
            )
        table.add_row("weighted", "", "", _fmt(self.weighted(server_round, pm)),
                      _fmt(self.weighted(server_round, "val_loss")), "", "", style="bold")
        dp = self.site_level_dp.get(server_round)
        if dp is not None:
            table.caption = (f"site-level DP: epsilon (cum.) {_fmt(dp['epsilon'], 2)}, delta {dp['delta']:g}, "
                             f"eff. noise mult. {_fmt(dp['effective_noise_multiplier'])}")
            table.caption_justify = "left"
        self.console.print(table)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": self.sites,
            "rounds": {str(r): v for r, v in sorted(self.rounds.items())},
            "weighted": {
                str(r): {m: self.weighted(r, m) for m in self.weighted_metrics()}
                for r in sorted(self.rounds)
            },
            "events": self.events,
            "site_level_dp": {str(r): v for r, v in sorted(self.site_level_dp.items())},
        }

    def ledger_heads(self) -> dict[str, dict[str, str]]:
        """site -> round -> the ledger head hash the site sent with its train reply."""
        heads: dict[str, dict[str, str]] = {}
        for r, sites in sorted(self.rounds.items()):
            for site, rec in sites.items():
                if "ledger_head" in rec:
                    heads.setdefault(site, {})[str(r)] = rec["ledger_head"]
        return heads

    def publish_round(self, server_round: int, total_rounds: int) -> None:
        """The round's table and files, written in the background while the next round's requests go out."""
        self._settle()
        self.writer.submit(self._publish, server_round, total_rounds)

    def _publish(self, server_round: int, total_rounds: int) -> None:
        self.print_round(server_round, total_rounds)
        self._write_files()

    def save(self) -> None:
        """Everything written, now (the run's end): pending writes first, then the files."""
        self._settle()
        self._write_files()

    def _write_files(self) -> None:
        write_json_atomic(self.run_dir / "metrics.json", self.to_dict())
        write_json_atomic(self.run_dir / LEDGER_HEADS_FILE, self.ledger_heads())


def _event_round(text: str) -> int | None:
    head = text.split(":", 1)[0]
    return int(head[6:]) if head.startswith("round ") and head[6:].isdigit() else None


def write_json_atomic(path: Path, obj: Any) -> None:
    """A run folder's JSON file (numpy scalars written as numbers)."""
    write_json(path, obj, default=_json_default)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"
