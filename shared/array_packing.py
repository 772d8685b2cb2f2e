"""A message's arrays travel as one array per record, not one per tensor (issue 23).

Flower 1.41 moves a message as a tree of objects, one HTTPS call per object at each hop: the message, its
RecordDict, each record, each Array and each of its chunks. The event model's 14 tensors made a train
message 31 objects, and in a local deployment fetching or sending them took ~0.45 s per message per Fleet
hop (SuperNode <-> SuperLink), plus ~0.15 s between the SuperNode and its app process. Packing each
ArrayRecord of two or more arrays into one Array (the arrays' serialised bytes back to back) and a layout
ConfigRecord beside it (key, dtype, stype, shape and byte length per array) makes it ~7 objects.

The encoding is lossless and carries nothing the arrays did not: the layout is their keys, dtypes, shapes
and sizes. The center's Grid (`server.packing_grid.PackingGrid`) packs requests and unpacks replies; the
site's `array_packing_mod` (the ClientApp's outermost mod) unpacks a request before anything else sees it
and packs the reply only if its request came packed, so every other mod (security log, outgoing guard,
SecAgg+) and the handlers see ordinary ArrayRecords, and a peer that does not pack gets plain replies.
"""

from __future__ import annotations

from logging import ERROR

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.supercore import log

PACKED_KEY = "fedcare.packed.v1"  # the one array of a packed ArrayRecord
PACKED_STYPE = "fedcare.packed.v1"
LAYOUT_SUFFIX = ".fedcare-layout"  # the layout of record "arrays" is the ConfigRecord "arrays.fedcare-layout"
_LAYOUT_FIELDS = ("keys", "dtypes", "stypes", "ndims", "dims", "nbytes")


class ArrayPackingError(ValueError):
    """A packed record that does not unpack (a malformed or hostile message)."""


def is_packed(record: object) -> bool:
    return (isinstance(record, ArrayRecord) and list(record.keys()) == [PACKED_KEY]
            and record[PACKED_KEY].stype == PACKED_STYPE)


def pack_record(record: ArrayRecord) -> tuple[ArrayRecord, ConfigRecord]:
    arrays = list(record.items())
    layout = ConfigRecord({
        "keys": [key for key, _ in arrays],
        "dtypes": [array.dtype for _, array in arrays],
        "stypes": [array.stype for _, array in arrays],
        "ndims": [len(array.shape) for _, array in arrays],
        "dims": [int(d) for _, array in arrays for d in array.shape],
        "nbytes": [len(array.data) for _, array in arrays],
    })
    data = b"".join(array.data for _, array in arrays)
    packed = Array(dtype="uint8", shape=(len(data),), stype=PACKED_STYPE, data=data)
    return ArrayRecord({PACKED_KEY: packed}), layout


def unpack_record(packed: ArrayRecord, layout: ConfigRecord | None) -> ArrayRecord:
    if not isinstance(layout, ConfigRecord) or set(layout.keys()) != set(_LAYOUT_FIELDS):
        raise ArrayPackingError("a packed array record without its layout record")
    keys, dtypes, stypes, ndims, dims, nbytes = (layout[name] for name in _LAYOUT_FIELDS)
    count = len(keys)
    if not (isinstance(keys, list) and isinstance(dims, list)
            and all(isinstance(v, list) and len(v) == count for v in (dtypes, stypes, ndims, nbytes))):
        raise ArrayPackingError("the layout's lists differ in length")
    if not (all(isinstance(v, str) for v in (*keys, *dtypes, *stypes)) and len(set(keys)) == count
            and all(isinstance(v, int) and v >= 0 for v in (*ndims, *dims, *nbytes))):
        raise ArrayPackingError("the layout holds a non-text name or a negative size")
    if sum(ndims) != len(dims):
        raise ArrayPackingError("the layout's shapes do not add up")
    data = packed[PACKED_KEY].data
    if sum(nbytes) != len(data):
        raise ArrayPackingError(f"the packed array holds {len(data)} bytes, its layout {sum(nbytes)}")
    out, offset, dim = ArrayRecord(), 0, 0
    for key, dtype, stype, ndim, size in zip(keys, dtypes, stypes, ndims, nbytes, strict=True):
        out[key] = Array(dtype=dtype, shape=tuple(dims[dim:dim + ndim]), stype=stype, data=data[offset:offset + size])
        offset, dim = offset + size, dim + ndim
    return out


def pack_content(content: RecordDict) -> RecordDict:
    """A new RecordDict (the given one and its records are left as they are) with every ArrayRecord of two or
    more arrays packed; everything else is the same record object."""
    out = RecordDict()
    for name, record in content.items():
        if isinstance(record, ArrayRecord) and len(record) >= 2:
            out[name], out[name + LAYOUT_SUFFIX] = pack_record(record)
        else:
            out[name] = record
    return out


def unpack_content(content: RecordDict) -> tuple[RecordDict, bool]:
    """(the content with every packed record unpacked and its layout record dropped, whether any was packed)."""
    packed = {name for name, record in content.items() if is_packed(record)}
    if not packed:
        return content, False
    out = RecordDict()
    for name, record in content.items():
        if name in packed:
            out[name] = unpack_record(record, content.get(name + LAYOUT_SUFFIX))
        elif not (name.endswith(LAYOUT_SUFFIX) and name.removesuffix(LAYOUT_SUFFIX) in packed):
            out[name] = record
    return out, True


def array_packing_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower client mod (the outermost): unpack a packed request, pack the reply the same way."""
    packed_request = False
    if msg.has_content():
        try:
            content, packed_request = unpack_content(msg.content)
        except ArrayPackingError as error:  # the center's message is malformed: it is told a code, no detail
            log(ERROR, "array_packing_mod: a request does not unpack: %s", error)
            return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason="internal_error"), reply_to=msg)
        msg.content = content
    reply = call_next(msg, context)
    if packed_request and reply.has_content():
        reply.content = pack_content(reply.content)
    return reply
