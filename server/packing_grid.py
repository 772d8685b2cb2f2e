"""The center's Grid with packed content: each request's records leave as one byte string, each reply's are
unpacked before the strategy sees them (shared/array_packing.py: three objects per message instead of one per
record, tensor and chunk, each an HTTPS call at every hop of a deployment).

A reply whose packed content does not unpack is handed on as an error reply (`internal_error`): the strategy
counts it as a failure, as it would any malformed reply.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from logging import WARNING

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from server.grid_wrapper import GridWrapper
from shared.array_packing import ArrayPackingError, pack_content, unpack_content


def _packed(message: Message) -> Message:
    if message.has_content():
        message.content = pack_content(message.content)  # a new RecordDict: records shared between requests stay
    return message


def _unpacked(reply: Message) -> Message:
    if not reply.has_content():
        return reply
    try:
        reply.content = unpack_content(reply.content)[0]
    except ArrayPackingError as error:
        log(WARNING, "a reply from node %s does not unpack (%s): counted as a failed reply",
            reply.metadata.src_node_id, error)
        return Message(error=Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason="internal_error"),
                       metadata=reply.metadata)
    return reply


class PackingGrid(GridWrapper):
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages([_packed(m) for m in messages])

    def pull_messages(self, message_ids: Iterable[str]) -> Iterator[Message]:
        return iter([_unpacked(m) for m in self._grid.pull_messages(message_ids)])

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = self._grid.send_and_receive([_packed(m) for m in messages], timeout=timeout)
        return [_unpacked(m) for m in replies]
