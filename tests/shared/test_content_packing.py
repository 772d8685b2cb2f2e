"""Content on the wire: one packed record per message, lossless, and a malformed packing is refused (shared/content_packing.py,
server/packing_grid.py)."""

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message.message import get_descendant_object_ids

from server.packing_grid import PackingGrid
from shared import content_packing
from shared.content_packing import (
    BLOB_KEY,
    MAGIC,
    PACKED_KEY,
    PACKED_STYPE,
    ContentPackingError,
    content_packing_mod,
    is_packed,
    pack_content,
    packed_blob,
    packed_header,
    unpack_content,
)
from shared.models.event_transformer import EventTransformer, EventTransformerConfig

pytestmark = pytest.mark.usefixtures("serverapp_identity")  # tests/conftest.py


def _state() -> OrderedDict:
    return OrderedDict({"w": torch.randn(3, 4), "b": torch.randn(4), "scale": torch.tensor(2.5),
                        "steps": torch.arange(5, dtype=torch.int64), "half": torch.randn(2, 2).half()})


def _content(state=None) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord(state or _state()), "config": ConfigRecord({"server-round": 1})})


def _message(content: RecordDict) -> Message:
    return Message(content, dst_node_id=7, message_type="train")


def _reply_to(msg: Message, content: RecordDict) -> Message:
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return Message(content, reply_to=msg)


def _respoiled(content: RecordDict, spoil) -> RecordDict:
    """The packed content with its header rewritten by `spoil(entries)` (the records' bytes kept)."""
    blob = packed_blob(content)
    entries, offset = packed_header(blob)
    spoil(entries)
    header = json.dumps({"records": entries}).encode()
    return RecordDict({PACKED_KEY: ConfigRecord({BLOB_KEY: MAGIC + len(header).to_bytes(4, "big") + header
                                                           + blob[offset:]})})


def test_packing_is_lossless_and_keeps_records_keys_order_dtypes_and_shapes():
    content = _content()
    content["metrics"] = MetricRecord({"num-examples": 12, "loss": [0.5, 0.25]})
    packed = pack_content(content)
    assert list(packed.keys()) == [PACKED_KEY] and is_packed(packed) and isinstance(packed[PACKED_KEY], ConfigRecord)
    unpacked, was_packed = unpack_content(packed)
    assert was_packed and list(unpacked.keys()) == ["arrays", "config", "metrics"]
    assert dict(unpacked["config"]) == {"server-round": 1} and isinstance(unpacked["config"], ConfigRecord)
    assert dict(unpacked["metrics"]) == {"num-examples": 12, "loss": [0.5, 0.25]}
    assert isinstance(unpacked["metrics"], MetricRecord)
    original, restored = content["arrays"], unpacked["arrays"]
    assert list(restored.keys()) == list(original.keys())
    for key in original:
        assert (restored[key].dtype, restored[key].shape, restored[key].stype) == \
            (original[key].dtype, original[key].shape, original[key].stype)
        assert restored[key].data == original[key].data
        np.testing.assert_array_equal(restored[key].numpy(), original[key].numpy())
    state = restored.to_torch_state_dict()
    assert state["steps"].dtype == torch.int64 and state["half"].dtype == torch.float16 and state["scale"].shape == ()


def test_packing_leaves_the_given_content_alone_and_passes_plain_content_through():
    content = _content()
    arrays = content["arrays"]
    pack_content(content)
    assert content["arrays"] is arrays and len(arrays) == 5 and list(content.keys()) == ["arrays", "config"]
    assert unpack_content(content) == (content, False)
    assert len(pack_content(RecordDict())) == 0


def test_a_large_content_travels_as_one_array_in_flowers_chunks(monkeypatch):
    monkeypatch.setattr(content_packing, "INLINE_MAX_BYTES", 64)
    content = _content()
    packed = pack_content(content)
    (array,) = packed[PACKED_KEY].values()
    assert isinstance(packed[PACKED_KEY], ArrayRecord) and array.stype == PACKED_STYPE
    restored = unpack_content(packed)[0]["arrays"].to_torch_state_dict()
    original = content["arrays"].to_torch_state_dict()
    assert list(restored) == list(original) and all(torch.equal(restored[k], v) for k, v in original.items())


def test_a_model_message_is_three_objects_instead_of_two_per_tensor():
    model = EventTransformer(EventTransformerConfig(event_dim=40, static_dim=4, d_model=16, layers=1, heads=2, ff=32,
                                                    pooling_heads=2, mlp_hidden=16))
    content = _content(model.state_dict())
    content["metrics"] = MetricRecord({"num-examples": 12})
    tensors = len(model.state_dict())
    assert tensors >= 10
    plain = len(get_descendant_object_ids(_message(content)))
    packed = len(get_descendant_object_ids(_message(pack_content(content))))
    assert plain > tensors + 3  # an Array per tensor and a chunk per distinct content
    assert packed == 2  # the RecordDict and its one ConfigRecord (then the message itself: three objects)


@pytest.mark.parametrize("spoil", [
    lambda entries: entries[0].pop("sizes"),
    lambda entries: entries[0].__setitem__("sizes", [*entries[0]["sizes"][:-1], entries[0]["sizes"][-1] + 1]),
    lambda entries: entries[0].__setitem__("sizes", [-1, *entries[0]["sizes"][1:]]),
    lambda entries: entries[0].__setitem__("keys", entries[0]["keys"][:-1]),
    lambda entries: entries[0].__setitem__("keys", ["w"] * len(entries[0]["keys"])),
    lambda entries: entries[0].__setitem__("shapes", [[-1], *entries[0]["shapes"][1:]]),
    lambda entries: entries[0].__setitem__("kind", "pickle"),
    lambda entries: entries[1].__setitem__("nbytes", entries[1]["nbytes"] + 1),
    lambda entries: entries[1].__setitem__("name", "arrays"),
    lambda entries: entries[1].__setitem__("kind", "metric"),  # a ConfigRecord's bytes read as a MetricRecord
    lambda entries: entries.pop(),  # the config's bytes left over
])
def test_a_packed_content_whose_header_does_not_add_up_is_refused(spoil):
    with pytest.raises(ContentPackingError):
        unpack_content(_respoiled(pack_content(_content()), spoil))


@pytest.mark.parametrize("blob", [b"", b"FCPACK2\n", b"FCPACK1\n\x00\x00\x00\x02{}", b"FCPACK2\n\x00\x00\x00\x05[1, ",
                                  b"FCPACK2\n\x00\x00\x00\x02[]", b"FCPACK2\n\x00\x00\x00\x0e{\"records\": 1}"])
def test_packed_bytes_that_are_not_a_packing_are_refused(blob):
    with pytest.raises(ContentPackingError):
        unpack_content(RecordDict({PACKED_KEY: ConfigRecord({BLOB_KEY: blob})}))
    with pytest.raises(ContentPackingError):  # the packed key beside other records, or holding something else
        unpack_content(RecordDict({PACKED_KEY: ConfigRecord({"other": blob}), "config": ConfigRecord({"a": 1})}))
    with pytest.raises(ContentPackingError):
        unpack_content(RecordDict({PACKED_KEY: ConfigRecord({"other": 1})}))


def test_the_site_mod_unpacks_requests_and_packs_replies_only_when_the_request_came_packed():
    seen = []

    def handler(msg, context):
        seen.append(msg.content)
        state = msg.content["arrays"].to_torch_state_dict()
        return _reply_to(msg, RecordDict({"arrays": ArrayRecord({k: v + 1 for k, v in state.items()}),
                                          "metrics": MetricRecord({"num-examples": 3})}))

    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply = content_packing_mod(_message(pack_content(_content())), context, handler)
    assert list(seen[-1].keys()) == ["arrays", "config"] and list(seen[-1]["arrays"].keys()) == list(_state().keys())
    assert is_packed(reply.content)
    restored = unpack_content(reply.content)[0]
    assert torch.equal(restored["arrays"].to_torch_state_dict()["steps"], torch.arange(5) + 1)
    assert restored["metrics"]["num-examples"] == 3

    plain_reply = content_packing_mod(_message(_content()), context, handler)
    assert not is_packed(plain_reply.content) and len(plain_reply.content["arrays"]) == 5


def test_the_site_mod_answers_a_malformed_packing_with_a_code_and_never_calls_the_app():
    packed = _respoiled(pack_content(_content()), lambda entries: entries[0].__setitem__("sizes", [0] * 5))
    called = []
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply = content_packing_mod(_message(packed), context, lambda msg, ctx: called.append(msg))
    assert reply.has_error() and reply.error.reason == "internal_error" and called == []


class EchoGrid:
    """Stores what reaches the transport; each site answers with its arrays plus one."""

    def __init__(self):
        self.pushed, self.spoil = [], False

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            self.pushed.append(msg.content)
            arrays = unpack_content(msg.content)[0]["arrays"].to_torch_state_dict()
            reply = pack_content(RecordDict({"arrays": ArrayRecord({k: v + 1 for k, v in arrays.items()})}))
            if self.spoil:
                reply = _respoiled(reply, lambda entries: entries[0].__setitem__("keys", ["x"]))
            replies.append(_reply_to(msg, reply))
        return replies


def test_the_center_packs_requests_and_unpacks_replies_before_the_strategy_sees_them():
    inner = EchoGrid()
    grid = PackingGrid(inner)
    shared = _content()
    requests = [_message(RecordDict({"arrays": shared["arrays"], "config": shared["config"]})) for _ in range(2)]
    built = [request.content for request in requests]
    replies = list(grid.send_and_receive(requests))
    assert all(is_packed(content) for content in inner.pushed)
    # the caller's requests are its own again (the SecAgg+ stage tracker reads them after the exchange)
    assert [request.content for request in requests] == built and all(r.content is b for r, b in zip(requests, built))
    assert len(shared["arrays"]) == 5  # the strategy's shared record is untouched
    for reply in replies:
        state = reply.content["arrays"].to_torch_state_dict()
        assert list(state) == list(_state()) and list(reply.content.keys()) == ["arrays"]
        assert torch.equal(state["steps"], torch.arange(5) + 1)

    inner.spoil = True
    (failed,) = grid.send_and_receive([_message(_content())])
    assert failed.has_error() and failed.error.reason == "internal_error"
