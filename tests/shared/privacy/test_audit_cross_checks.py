"""The audit checks each trained line's mechanism against its recorded dataset size (fast, no training):
the issue's case, a site that shrank from 225 to 60 rows and recorded the planned rate 0.25."""

from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.audit import audit_ledger
from shared.privacy.ledger import SiteLedger


def _ledger(path, rows):
    ledger = SiteLedger(path, "a")
    history = []
    for number, (n, q, steps) in enumerate(rows, start=1):
        mechanism = Mechanism(1.2, q, steps)
        history.append(mechanism)
        ledger.append("run-1", number, "trained", mechanism, 1e-5, 1.0, "rdp", epsilon_opacus(history, 1e-5), 10.0,
                      extra={"n_train": n, "expected_batch_size": 64, "epochs": 1})
    return path


def test_a_mechanism_that_fits_the_recorded_data_passes(tmp_path):
    assert audit_ledger(_ledger(tmp_path / "l.jsonl", [(225, 0.25, 4), (60, 1.0, 1)])).status == "ok"


def test_the_planned_rate_recorded_for_shrunk_data_is_a_mismatch(tmp_path):
    audit = audit_ledger(_ledger(tmp_path / "l.jsonl", [(225, 0.25, 4), (60, 0.25, 4)]))
    assert audit.status == "mismatch"
    assert audit.problems == ["line 2: sample rate 0.25 is not 1/ceil(n/B) = 1/1 for the recorded n_train 60 and batch size 64"]


def test_fewer_steps_than_the_data_gives_are_a_mismatch(tmp_path):
    audit = audit_ledger(_ledger(tmp_path / "l.jsonl", [(225, 0.25, 2)]))
    assert audit.status == "mismatch" and "steps 2 are not epochs x ceil(n/B) = 1 x 4" in audit.problems[0]


def test_the_rate_is_checked_against_the_planned_size_not_the_rows_trained_on(tmp_path):
    """Since the sample rate comes from the released noisy count (planned_size), a site whose data shrank
    still trains at its planned rate; the audit checks q and steps against planned_size."""
    ledger = SiteLedger(tmp_path / "l.jsonl", "a")
    history = []
    for number, (n, planned, q, steps) in enumerate([(225, 231, 0.25, 4), (60, 231, 0.25, 4), (60, 231, 1.0, 1)], 1):
        mechanism = Mechanism(1.2, q, steps)
        history.append(mechanism)
        ledger.append("run-1", number, "trained", mechanism, 1e-5, 1.0, "rdp", epsilon_opacus(history, 1e-5), 10.0,
                      extra={"n_train": n, "planned_size": planned, "expected_batch_size": 64, "epochs": 1})
    audit = audit_ledger(tmp_path / "l.jsonl")
    assert audit.problems == ["line 3: sample rate 1 is not 1/ceil(n/B) = 1/4 for the recorded planned_size 231 and "
                              "batch size 64"]
