import time

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode

from shared.privacy.secagg_guard import site_decline_reason
from shared.privacy.whitelist import (
    ALLOWED_METRICS,
    OutgoingMessageRefused,
    check_outgoing,
    outgoing_guard_mod,
)

MODEL_KEYS = {"encoder.weight", "encoder.bias", "head.weight"}


def _arrays(keys: set[str] = MODEL_KEYS) -> ArrayRecord:
    return ArrayRecord({key: Array(np.zeros((2, 3), dtype=np.float32)) for key in sorted(keys)})


def _good_reply_content() -> RecordDict:
    return RecordDict(
        {
            "arrays": _arrays(),
            "metrics": MetricRecord(
                {"num-examples": 120, "hist_pos_3": 4.2, "epsilon": 1.2, "delta": 1e-5, "auroc_ci_low": 0.7}
            ),
            "site": ConfigRecord({"name": "hospital_a", "status": "trained"}),
        }
    )


def _train_message() -> Message:
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type="train",
    )
    content = RecordDict({"arrays": _arrays(), "config": ConfigRecord({"server-round": 1, "lr": 0.01})})
    return Message(metadata=metadata, content=content)


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def test_whitelist_names() -> None:
    assert {
        "num-examples",
        "threshold",
        "c_index_ci_high",
        "kappa_ci_low",
        "budget_exhausted",
    } <= ALLOWED_METRICS
    assert "ece_ci_low" not in ALLOWED_METRICS and "predictions" not in ALLOWED_METRICS
    assert {"calib_bin_0_observed", "calib_bin_9_predicted", "calib_bin_4_count"} <= ALLOWED_METRICS
    assert "calib_bin_10_count" not in ALLOWED_METRICS  # 10 bins, fixed
    # 19 names + exact_metrics marker, 14 CI bounds, 30 calibration-bin keys, 2 x 50 histogram bins, 8 x 8 confusion cells
    assert len(ALLOWED_METRICS) == 20 + 14 + 30 + 100 + 64
    assert "train_loss" not in ALLOWED_METRICS  # an un-noised mean over the training data: never sent


def test_normal_reply_passes() -> None:
    check_outgoing(_good_reply_content(), MODEL_KEYS)
    check_outgoing(_good_reply_content(), None)
    check_outgoing(RecordDict({"metrics": MetricRecord({"budget_exhausted": 1})}), MODEL_KEYS)
    check_outgoing(RecordDict(), None)


def test_extra_metric_key_is_refused() -> None:
    content = _good_reply_content()
    content["metrics"]["patient_17_risk"] = 0.93
    with pytest.raises(
        OutgoingMessageRefused, match="record 'metrics': metric 'patient_17_risk' is not whitelisted"
    ):
        check_outgoing(content, MODEL_KEYS)


def test_extra_record_is_refused() -> None:
    content = _good_reply_content()
    content["debug"] = ConfigRecord({"rows": "age=71,sex=F"})
    with pytest.raises(OutgoingMessageRefused, match="record 'debug' is not whitelisted"):
        check_outgoing(content, MODEL_KEYS)


def test_list_metric_is_refused() -> None:
    content = _good_reply_content()
    content["metrics"]["auroc"] = [0.91, 0.12, 0.55]
    with pytest.raises(OutgoingMessageRefused, match="metric 'auroc' must be a single number, not list"):
        check_outgoing(content, MODEL_KEYS)


def test_changed_array_keys_are_refused() -> None:
    content = _good_reply_content()
    content["arrays"] = _arrays((MODEL_KEYS - {"head.weight"}) | {"head.weight_copy"})
    with pytest.raises(
        OutgoingMessageRefused, match=r"unexpected \['head.weight_copy'\], missing \['head.weight'\]"
    ):
        check_outgoing(content, MODEL_KEYS)


def test_site_record_and_record_types_are_checked() -> None:
    content = _good_reply_content()
    content["site"]["reason"] = "x" * 201
    with pytest.raises(OutgoingMessageRefused, match="key 'reason' must be text of at most 200 characters"):
        check_outgoing(content, MODEL_KEYS)
    content["site"] = ConfigRecord({"name": "hospital_a", "n_patients_with_hiv": "3"})
    with pytest.raises(
        OutgoingMessageRefused, match="record 'site': key 'n_patients_with_hiv' is not whitelisted"
    ):
        check_outgoing(content, MODEL_KEYS)
    content["site"] = ConfigRecord({"status": 3})
    with pytest.raises(OutgoingMessageRefused, match="key 'status' must be text"):
        check_outgoing(content, MODEL_KEYS)
    content = RecordDict({"metrics": ConfigRecord({"auroc": 0.8})})
    with pytest.raises(
        OutgoingMessageRefused, match="record 'metrics' must be a MetricRecord, not ConfigRecord"
    ):
        check_outgoing(content, MODEL_KEYS)


def test_mod_passes_a_good_reply_through() -> None:
    message = _train_message()
    reply = Message(_good_reply_content(), reply_to=message)
    assert outgoing_guard_mod(message, _context(), lambda msg, ctx: reply) is reply


def test_mod_turns_a_bad_reply_into_an_error_reply() -> None:
    message = _train_message()
    content = _good_reply_content()
    content["metrics"]["per_patient_loss"] = [0.2, 0.9]
    calls = []

    def client_app(msg: Message, ctx: Context) -> Message:
        calls.append(msg)
        return Message(content, reply_to=msg)

    guarded = outgoing_guard_mod(message, _context(), client_app)
    assert calls == [message]
    assert guarded.has_error() and not guarded.has_content()
    assert guarded.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert guarded.error.reason == "outgoing_refused"  # what was refused stays in the site's log
    assert guarded.metadata.reply_to_message_id == "m1"


def test_mod_checks_array_keys_against_the_received_model() -> None:
    message = _train_message()
    content = _good_reply_content()
    content["arrays"] = _arrays(MODEL_KEYS | {"extra.buffer"})
    guarded = outgoing_guard_mod(message, _context(), lambda msg, ctx: Message(content, reply_to=msg))
    assert guarded.has_error() and guarded.error.reason == "outgoing_refused"


LEAK = "/srv/ehr/hospital_b/visits.csv: row 17, creatinine: '7.1 (hemolysed)' is not a finite number"


@pytest.mark.parametrize("field, value", [("reason", LEAK), ("reason", "budget exhausted"), ("status", LEAK),
                                          ("name", "hospital_a " + LEAK)])
def test_site_texts_must_be_codes(field, value) -> None:
    content = _good_reply_content()
    content["site"][field] = value
    with pytest.raises(OutgoingMessageRefused, match=f"record 'site': {field} is not a site name, status or reason code") as err:
        check_outgoing(content, MODEL_KEYS)
    assert "hemolysed" not in str(err.value)
    content["site"] = ConfigRecord({"name": "hospital_a", "status": "refused", "reason": "data_error"})
    check_outgoing(content, MODEL_KEYS)


def test_mod_lets_error_replies_with_a_code_through() -> None:
    message = _train_message()
    failed = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="data_error"), reply_to=message)
    assert outgoing_guard_mod(message, _context(), lambda msg, ctx: failed) is failed
    declined = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=site_decline_reason(
        "hospital_a", "budget_exhausted", "budget_exhausted")), reply_to=message)
    assert outgoing_guard_mod(message, _context(), lambda msg, ctx: declined) is declined


@pytest.mark.parametrize("reason", [LEAK, site_decline_reason("hospital_a", "refused", LEAK)])
def test_mod_replaces_an_error_reply_carrying_text(reason) -> None:
    message = _train_message()
    failed = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
    guarded = outgoing_guard_mod(message, _context(), lambda msg, ctx: failed)
    assert guarded.error.code == ErrorCode.MOD_FAILED_PRECONDITION and guarded.error.reason == "outgoing_refused"


def test_mod_turns_an_exception_into_internal_error_without_its_text() -> None:
    def client_app(msg: Message, ctx: Context) -> Message:
        raise ValueError(LEAK)  # Flower would send "<class 'ValueError'>:<'...'>" to the center

    guarded = outgoing_guard_mod(_train_message(), _context(), client_app)
    assert guarded.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION and guarded.error.reason == "internal_error"
