"""The content of a site's reply to a plain (Message-API) request: its metrics, its status and, when it
trained, its weights; client/app.py sends it and client/secure_aggregation.py checks it before masking."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.site_worker import RoundOutcome, SiteWorker


def outcome_content(worker: SiteWorker, outcome: RoundOutcome) -> RecordDict:
    content = RecordDict(
        {
            "metrics": MetricRecord(outcome.metrics),
            "site": ConfigRecord({"name": worker.settings.site, "status": outcome.status, "reason": outcome.reason,
                                  # the center keeps it per round: the audit compares it with the ledger
                                  "ledger_head": worker.ledger.head()}),
        }
    )
    if outcome.arrays is not None:
        content["arrays"] = ArrayRecord(outcome.arrays)
    return content
