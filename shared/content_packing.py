"""A message's content travels as one object, not one per record, tensor and chunk (issue 23).

Flower 1.41 moves a message as a tree of objects, one HTTPS call per object at each hop: the message, its
RecordDict, each record, each Array and each of its chunks. The event model's 14 tensors made a train
message 31 objects, and in a local deployment fetching or sending them took ~0.45 s per message per Fleet
hop (SuperNode <-> SuperLink), plus ~0.15 s between the SuperNode and its app process; on a small machine
the calls themselves (TLS, HTTP, the SuperLink's database) took a third of a core away from training.
Packing the whole content into one byte string makes a message three objects: the message, its RecordDict
and one ConfigRecord holding the bytes (`PACKED_KEY`: {"blob": bytes}). Content larger than INLINE_MAX_BYTES
(a large model's weights) goes as one Array instead, which Flower cuts into its usual 5 MB chunks.

The byte string: MAGIC, a 4-byte big-endian header length, a JSON header naming each record in order, then
the records' bytes back to back. An ArrayRecord's entry holds its arrays' keys, dtypes, stypes, shapes and byte
lengths, and its bytes are the arrays' serialised bytes; a ConfigRecord's or MetricRecord's bytes are Flower's
own serialisation of it. The encoding is lossless and carries nothing the records did not. A packed content
that does not add up (wrong lengths, unknown kinds, extra bytes, bytes Flower cannot read) is refused whole.

The center's Grid (`server.packing_grid.PackingGrid`) packs requests and unpacks replies; the site's
`content_packing_mod` (the ClientApp's outermost mod) unpacks a request before anything else sees it and packs
the reply only if its request came packed, so every other mod (security log, outgoing guard, SecAgg+) and
the handlers see ordinary records, and a peer that does not pack gets plain replies.
"""

from __future__ import annotations

import json
from logging import ERROR
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.supercore import log

PACKED_KEY = "fedcare.packed.v2"  # the one record of a packed content (and the one array of a large one)
PACKED_STYPE = "fedcare.packed.v2"
BLOB_KEY = "blob"
MAGIC = b"FCPACK2\n"
# below Flower's array chunk (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE, 5 MB): a larger content travels in chunks
INLINE_MAX_BYTES = 4 * 1024 * 1024
_RECORD_KINDS: dict[str, type] = {"config": ConfigRecord, "metric": MetricRecord}


class ContentPackingError(ValueError):
    """A packed content that does not unpack (a malformed or hostile message)."""


def is_packed(content: RecordDict) -> bool:
    """Packed content is exactly one record under PACKED_KEY; any use of that key claims to be packed."""
    return PACKED_KEY in content


def _record_entry(name: str, record: Any) -> tuple[dict[str, Any], list[bytes]]:
    if isinstance(record, ArrayRecord):
        arrays = list(record.items())
        sizes = [len(array.data) for _, array in arrays]
        return ({"name": name, "kind": "array", "nbytes": sum(sizes), "keys": [key for key, _ in arrays],
                 "dtypes": [array.dtype for _, array in arrays], "stypes": [array.stype for _, array in arrays],
                 "shapes": [[int(d) for d in array.shape] for _, array in arrays], "sizes": sizes},
                [array.data for _, array in arrays])
    kind = next(kind for kind, cls in _RECORD_KINDS.items() if isinstance(record, cls))
    data = record.deflate()
    return {"name": name, "kind": kind, "nbytes": len(data)}, [data]


def pack_content(content: RecordDict) -> RecordDict:
    """A new RecordDict holding `content` (left as it is) as one byte string; an empty content stays as it is."""
    if not content:
        return content
    entries, parts = [], []
    for name, record in content.items():
        entry, data = _record_entry(name, record)
        entries.append(entry)
        parts.extend(data)
    header = json.dumps({"records": entries}, separators=(",", ":")).encode()
    blob = b"".join([MAGIC, len(header).to_bytes(4, "big"), header, *parts])
    if len(blob) <= INLINE_MAX_BYTES:
        return RecordDict({PACKED_KEY: ConfigRecord({BLOB_KEY: blob})})
    array = Array(dtype="uint8", shape=(len(blob),), stype=PACKED_STYPE, data=blob)
    return RecordDict({PACKED_KEY: ArrayRecord({PACKED_KEY: array})})


def packed_blob(content: RecordDict) -> bytes:
    record = content[PACKED_KEY]
    if len(content) != 1:
        raise ContentPackingError("a packed content holds other records beside the packed one")
    if isinstance(record, ConfigRecord) and list(record.keys()) == [BLOB_KEY] and isinstance(record[BLOB_KEY], bytes):
        return record[BLOB_KEY]
    if (isinstance(record, ArrayRecord) and list(record.keys()) == [PACKED_KEY]
            and record[PACKED_KEY].stype == PACKED_STYPE):
        return record[PACKED_KEY].data
    raise ContentPackingError("the packed record is neither a blob nor a packed array")


def packed_header(blob: bytes) -> tuple[list[dict[str, Any]], int]:
    """(the header's record entries, where the records' bytes start); checks that the sizes add up."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise ContentPackingError("the packed bytes do not start with the packing's mark")
    start = len(MAGIC) + 4
    size = int.from_bytes(blob[len(MAGIC):start], "big")
    try:
        header = json.loads(blob[start:start + size])
    except (ValueError, RecursionError) as err:
        raise ContentPackingError(f"the packing's header is not JSON ({type(err).__name__})") from None
    entries = header.get("records") if isinstance(header, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ContentPackingError("the packing's header has no list of records")
    names = [e.get("name") for e in entries]
    if not all(isinstance(n, str) and n != PACKED_KEY for n in names) or len(set(names)) != len(names):
        raise ContentPackingError("the packing's record names are not distinct texts")
    for entry in entries:
        _check_entry(entry)
    if start + size + sum(e["nbytes"] for e in entries) != len(blob):
        raise ContentPackingError(f"the packed bytes hold {len(blob) - start - size} bytes of records, "
                                f"the header {sum(e['nbytes'] for e in entries)}")
    return entries, start + size


def _non_negative(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(entry: dict[str, Any]) -> None:
    kind, nbytes = entry.get("kind"), entry.get("nbytes")
    if not _non_negative(nbytes):
        raise ContentPackingError(f"record {entry['name']!r}: a size that is not a non-negative integer")
    if kind in _RECORD_KINDS:
        if set(entry) != {"name", "kind", "nbytes"}:
            raise ContentPackingError(f"record {entry['name']!r}: unexpected fields")
        return
    if kind != "array" or set(entry) != {"name", "kind", "nbytes", "keys", "dtypes", "stypes", "shapes", "sizes"}:
        raise ContentPackingError(f"record {entry['name']!r}: an unknown kind or unexpected fields")
    keys, dtypes, stypes, shapes, sizes = (entry[f] for f in ("keys", "dtypes", "stypes", "shapes", "sizes"))
    if not all(isinstance(v, list) and len(v) == len(keys) for v in (keys, dtypes, stypes, shapes, sizes)):
        raise ContentPackingError(f"record {entry['name']!r}: the array lists differ in length")
    if not (all(isinstance(v, str) for v in (*keys, *dtypes, *stypes)) and len(set(keys)) == len(keys)
            and all(isinstance(s, list) and all(_non_negative(d) for d in s) for s in shapes)
            and all(_non_negative(s) for s in sizes)):
        raise ContentPackingError(f"record {entry['name']!r}: a non-text or repeated name, or a negative size")
    if sum(sizes) != nbytes:
        raise ContentPackingError(f"record {entry['name']!r}: its arrays' sizes do not add up")


def _record_from(entry: dict[str, Any], data: bytes) -> Any:
    if entry["kind"] != "array":
        try:
            return _RECORD_KINDS[entry["kind"]].inflate(data)
        except Exception as err:  # Flower's parser on bytes the center chose
            raise ContentPackingError(f"record {entry['name']!r} does not read back ({type(err).__name__})") from None
    out, offset = ArrayRecord(), 0
    for key, dtype, stype, shape, size in zip(entry["keys"], entry["dtypes"], entry["stypes"], entry["shapes"],
                                              entry["sizes"], strict=True):
        out[key] = Array(dtype=dtype, shape=tuple(shape), stype=stype, data=data[offset:offset + size])
        offset += size
    return out


def unpack_content(content: RecordDict) -> tuple[RecordDict, bool]:
    """(the content with its records unpacked, whether it was packed); a content not packed is returned as is."""
    if not is_packed(content):
        return content, False
    blob = packed_blob(content)
    entries, offset = packed_header(blob)
    out = RecordDict()
    for entry in entries:
        out[entry["name"]] = _record_from(entry, blob[offset:offset + entry["nbytes"]])
        offset += entry["nbytes"]
    return out, True


def content_packing_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower client mod (the outermost): unpack a packed request, pack the reply the same way."""
    packed_request = False
    if msg.has_content():
        try:
            content, packed_request = unpack_content(msg.content)
        except ContentPackingError as error:  # the center's message is malformed: it is told a code, no detail
            log(ERROR, "content_packing_mod: a request does not unpack: %s", error)
            return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason="internal_error"), reply_to=msg)
        msg.content = content
    reply = call_next(msg, context)
    if packed_request and reply.has_content():
        reply.content = pack_content(reply.content)
    return reply
