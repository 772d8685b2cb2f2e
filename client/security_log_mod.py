"""Flower client mod that writes every message the site receives and every reply it sends to the
site's security log (shared/privacy/security_log.py).

Installed right inside the packing (shared/content_packing.py: a lossless re-encoding of the records
on the wire), so it sees the message as it arrived and the reply as it finally leaves (after the
outgoing-message guard). Arrays are described by key, dtype, shape and
byte size, never by value; config and metric records are logged with their values.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode

from shared.privacy.security_log import SecurityLog


def _scalar_items(record: ConfigRecord | MetricRecord) -> dict[str, Any]:
    return {key: (f"<{len(value)} bytes>" if isinstance(value, bytes) else value) for key, value in record.items()}


def describe_record(record: Any) -> tuple[dict[str, Any], int]:
    """(a description without array values, the record's payload size in bytes)."""
    if isinstance(record, ArrayRecord):
        arrays: dict[str, Any] = {}
        for key, array in record.items():
            assert isinstance(array, Array)
            arrays[key] = {"dtype": array.dtype, "shape": list(array.shape), "bytes": len(array.data)}
        return {"type": "ArrayRecord", "arrays": arrays}, sum(a["bytes"] for a in arrays.values())
    if isinstance(record, (ConfigRecord, MetricRecord)):
        items = _scalar_items(record)
        size = len(json.dumps(items, sort_keys=True, default=str).encode("utf-8"))
        return {"type": type(record).__name__, "values": items}, size
    return {"type": type(record).__name__}, 0


def describe_content(content: RecordDict) -> tuple[dict[str, Any], int]:
    records, size = {}, 0
    for name, record in content.items():
        records[name], record_size = describe_record(record)
        size += record_size
    return records, size


def received_event(msg: Message) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "received",
        "run_id": msg.metadata.run_id,
        "message_id": msg.metadata.message_id,
        "message_type": msg.metadata.message_type,
    }
    if msg.has_content():
        records, size = describe_content(msg.content)
        config = records.get("config", {}).get("values", {})
        event.update(round=config.get("server-round"), config=config, records=records, size_bytes=size)
    return event


def sent_event(msg: Message, reply: Message) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "sent",
        "run_id": msg.metadata.run_id,
        "reply_to": msg.metadata.message_id,
        "message_type": reply.metadata.message_type,
    }
    if reply.has_error():
        event.update(error={"code": reply.error.code, "reason": reply.error.reason}, size_bytes=0)
    else:
        records, size = describe_content(reply.content)
        event.update(records=records, size_bytes=size)
        site = records.get("site", {}).get("values", {})
        if site.get("status"):
            event["status"] = site["status"]
    return event


def make_security_log_mod(log_for: Callable[[Context], SecurityLog]) -> Mod:
    """A mod that logs to the log `log_for(context)` returns (the site's, known once the context is)."""

    def security_log_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        try:
            log = log_for(context)  # builds the site's worker: its config, keys and settings are read here
        except Exception:  # Flower would send the exception's text (paths, values) to the center
            logging.getLogger(__name__).exception("the site could not set up its worker (the center is told internal_error)")
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="internal_error"), reply_to=msg)
        log.append(received_event(msg))
        try:
            reply = call_next(msg, context)
        except Exception as error:
            log.append({"kind": "failed", "run_id": msg.metadata.run_id, "reply_to": msg.metadata.message_id,
                        "error": f"{type(error).__name__}: {error}"})
            raise
        log.append(sent_event(msg, reply))
        return reply

    return security_log_mod
