"""The ClientApp as Flower calls it: a failure before any round logic runs (the site's own settings
cannot be read) still reaches the center as a code, never as the exception's text."""

import time

from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from client.app import build_client_app
from shared.config import config_from_dict

SECRET = "/srv/ehr/hospital_b/site.yaml"


def test_a_site_that_cannot_read_its_settings_answers_internal_error_only():
    cfg = config_from_dict({"task": "event_mortality", "data": {"sites": ["hospital_b"]}}, "center.yaml")
    context = Context(run_id=1, node_id=7, node_config={"site-config": SECRET}, state=RecordDict(),
                      run_config={"config": cfg.to_json(), "run-id": "r1", "run-dir": "/tmp/r1"})
    metadata = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="1",
                        created_at=time.time(), ttl=3600.0, message_type="train")
    message = Message(metadata=metadata, content=RecordDict({"config": ConfigRecord({"server-round": 1})}))
    reply = build_client_app()(message, context)
    assert reply.has_error() and reply.error.reason == "internal_error"
    assert "hospital_b" not in str(reply.error) and "site.yaml" not in str(reply.error)
