"""Arrays on the wire: one array per record, lossless, and a malformed packing is refused (shared/array_packing.py,
server/packing_grid.py)."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message.message import get_descendant_object_ids
from flwr.supercore.task_identity import TaskIdentity

from server.packing_grid import PackingGrid
from shared.array_packing import (
    LAYOUT_SUFFIX,
    PACKED_KEY,
    ArrayPackingError,
    array_packing_mod,
    is_packed,
    pack_content,
    unpack_content,
)
from shared.models.event_transformer import EventTransformer, EventTransformerConfig


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch):
    """What a ServerApp process has set when it builds messages."""
    for name, value in (("_run_id", 5), ("_node_id", 1), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, name, value)


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


def test_packing_is_lossless_and_keeps_keys_order_dtypes_and_shapes():
    content = _content()
    packed = pack_content(content)
    assert set(packed.keys()) == {"arrays", "arrays" + LAYOUT_SUFFIX, "config"}
    assert is_packed(packed["arrays"]) and list(packed["arrays"].keys()) == [PACKED_KEY]
    assert packed["config"] is content["config"]
    unpacked, was_packed = unpack_content(packed)
    assert was_packed and set(unpacked.keys()) == {"arrays", "config"}
    original, restored = content["arrays"], unpacked["arrays"]
    assert list(restored.keys()) == list(original.keys())
    for key in original:
        assert (restored[key].dtype, restored[key].shape, restored[key].stype) == \
            (original[key].dtype, original[key].shape, original[key].stype)
        assert restored[key].data == original[key].data
        np.testing.assert_array_equal(restored[key].numpy(), original[key].numpy())
    state = restored.to_torch_state_dict()
    assert state["steps"].dtype == torch.int64 and state["half"].dtype == torch.float16 and state["scale"].shape == ()


def test_packing_leaves_the_given_content_and_single_arrays_alone():
    content = _content()
    arrays = content["arrays"]
    pack_content(content)
    assert content["arrays"] is arrays and len(arrays) == 5 and "arrays" + LAYOUT_SUFFIX not in content
    single = RecordDict({"arrays": ArrayRecord({"only": Array(np.ones(3, dtype=np.float32))})})
    assert pack_content(single)["arrays"] is single["arrays"]
    assert unpack_content(single) == (single, False)


def test_a_model_message_is_a_handful_of_objects_instead_of_two_per_tensor():
    model = EventTransformer(EventTransformerConfig(event_dim=40, static_dim=4, d_model=16, layers=1, heads=2, ff=32,
                                                    pooling_heads=2, mlp_hidden=16))
    content = _content(model.state_dict())
    tensors = len(model.state_dict())
    assert tensors >= 10
    plain = len(get_descendant_object_ids(_message(content)))
    packed = len(get_descendant_object_ids(_message(pack_content(content))))
    assert plain > tensors + 3  # an Array per tensor and a chunk per distinct content
    assert packed <= 7  # RecordDict, arrays, its one Array and chunk, layout, config


@pytest.mark.parametrize("spoil", [
    lambda layout: layout.pop("nbytes"),
    lambda layout: layout.__setitem__("nbytes", [*layout["nbytes"][:-1], layout["nbytes"][-1] + 1]),
    lambda layout: layout.__setitem__("nbytes", [-1, *layout["nbytes"][1:]]),
    lambda layout: layout.__setitem__("keys", layout["keys"][:-1]),
    lambda layout: layout.__setitem__("keys", ["w"] * len(layout["keys"])),
    lambda layout: layout.__setitem__("dims", layout["dims"][:-1]),
])
def test_a_packed_record_whose_layout_does_not_add_up_is_refused(spoil):
    packed = pack_content(_content())
    spoil(packed["arrays" + LAYOUT_SUFFIX])
    with pytest.raises(ArrayPackingError):
        unpack_content(packed)
    del packed["arrays" + LAYOUT_SUFFIX]
    with pytest.raises(ArrayPackingError, match="without its layout"):
        unpack_content(packed)


def test_the_site_mod_unpacks_requests_and_packs_replies_only_when_the_request_came_packed():
    seen = []

    def handler(msg, context):
        seen.append(msg.content)
        state = msg.content["arrays"].to_torch_state_dict()
        return _reply_to(msg, RecordDict({"arrays": ArrayRecord({k: v + 1 for k, v in state.items()}),
                                          "metrics": MetricRecord({"num-examples": 3})}))

    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply = array_packing_mod(_message(pack_content(_content())), context, handler)
    assert list(seen[-1]["arrays"].keys()) == list(_state().keys()) and "arrays" + LAYOUT_SUFFIX not in seen[-1]
    assert is_packed(reply.content["arrays"]) and reply.content["metrics"]["num-examples"] == 3
    restored = unpack_content(reply.content)[0]["arrays"].to_torch_state_dict()
    assert torch.equal(restored["steps"], torch.arange(5) + 1)

    plain_reply = array_packing_mod(_message(_content()), context, handler)
    assert not is_packed(plain_reply.content["arrays"]) and len(plain_reply.content["arrays"]) == 5


def test_the_site_mod_answers_a_malformed_packing_with_a_code_and_never_calls_the_app():
    packed = pack_content(_content())
    packed["arrays" + LAYOUT_SUFFIX]["nbytes"] = [0] * len(packed["arrays" + LAYOUT_SUFFIX]["nbytes"])
    called = []
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply = array_packing_mod(_message(packed), context, lambda msg, ctx: called.append(msg))
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
                reply["arrays" + LAYOUT_SUFFIX]["keys"] = ["x"]
            replies.append(_reply_to(msg, reply))
        return replies


def test_the_center_packs_requests_and_unpacks_replies_before_the_strategy_sees_them():
    inner = EchoGrid()
    grid = PackingGrid(inner)
    shared = _content()
    requests = [_message(RecordDict({"arrays": shared["arrays"], "config": shared["config"]})) for _ in range(2)]
    replies = list(grid.send_and_receive(requests))
    assert all(is_packed(content["arrays"]) for content in inner.pushed)
    assert len(shared["arrays"]) == 5  # the strategy's shared record is untouched
    for reply in replies:
        state = reply.content["arrays"].to_torch_state_dict()
        assert list(state) == list(_state()) and "arrays" + LAYOUT_SUFFIX not in reply.content
        assert torch.equal(state["steps"], torch.arange(5) + 1)

    inner.spoil = True
    (failed,) = grid.send_and_receive([_message(_content())])
    assert failed.has_error() and failed.error.reason == "internal_error"
