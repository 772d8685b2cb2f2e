"""The center's Grid with packed content: each request's records leave as one byte string, each reply's are
unpacked before the strategy sees them (shared/content_packing.py: three objects per message instead of one per
record, tensor and chunk, each an HTTPS call at every hop of a deployment).

A reply whose packed content does not unpack is handed on as an error reply (`internal_error`): the strategy
counts it as a failure, as it would any malformed reply.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from logging import WARNING

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from server.grid_wrapper import GridWrapper
from shared.content_packing import ContentPackingError, pack_content, unpack_content


def _on_the_wire(message: Message) -> Message:
    """The message as it is sent: a copy with its content packed (the caller's message and records stay as
    they are: the in-memory Grid keeps the very object it is given, and the SecAgg+ stage tracker reads its
    requests after the exchange)."""
    if not message.has_content():
        return message
    return Message(content=pack_content(message.content), metadata=copy.copy(message.metadata))


def _sent(messages: list[Message], wire: list[Message]) -> None:
    """Each caller's message gets the id its copy was sent under: the id that replies name."""
    for message, sent in zip(messages, wire, strict=True):
        if sent is not message:
            message.metadata.__dict__["_message_id"] = sent.metadata.message_id


def _unpacked(reply: Message) -> Message:
    if not reply.has_content():
        return reply
    try:
        reply.content = unpack_content(reply.content)[0]
    except ContentPackingError as error:
        log(WARNING, "a reply from node %s does not unpack (%s): counted as a failed reply",
            reply.metadata.src_node_id, error)
        return Message(error=Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason="internal_error"),
                       metadata=reply.metadata)
    return reply


class PackingGrid(GridWrapper):
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        wire = [_on_the_wire(m) for m in messages]
        ids = list(self._grid.push_messages(wire))
        _sent(messages, wire)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterator[Message]:
        return iter([_unpacked(m) for m in self._grid.pull_messages(message_ids)])

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        wire = [_on_the_wire(m) for m in messages]
        replies = list(self._grid.send_and_receive(wire, timeout=timeout))
        _sent(messages, wire)
        return [_unpacked(m) for m in replies]
