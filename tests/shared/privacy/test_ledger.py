import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.errors import InputError
from shared.privacy.accountant import Mechanism, epsilon_opacus
from shared.privacy.keys import public_key_fingerprint
from shared.privacy.ledger import GENESIS_HASH, SiteLedger, canonical_json, signed_payload

DELTA = 1e-5
ROUND = Mechanism(1.3, 0.02, 40)


def _append_trained(ledger: SiteLedger, run_id: str, round_number: int, mechanism: Mechanism = ROUND) -> dict:
    history = ledger.mechanisms() + [mechanism]
    return ledger.append(
        run_id=run_id,
        round=round_number,
        status="trained",
        mechanism=mechanism,
        delta=DELTA,
        max_grad_norm=1.0,
        accountant="rdp",
        cumulative_epsilon=epsilon_opacus(history, DELTA),
        lifetime_epsilon=10.0,
        extra={"expected_batch_size": 32, "precision": "fp32"},
    )


def test_signed_entries_are_chained_and_verifiable(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    ledger = SiteLedger(tmp_path / "state" / "ledger.jsonl", "hospital_a", key)
    first = _append_trained(ledger, "run-1", 1)
    second = _append_trained(ledger, "run-1", 2)

    lines = ledger.path.read_text().splitlines()
    assert len(lines) == 2 and ledger.path.read_text().endswith("\n")
    assert lines == [canonical_json(first), canonical_json(second)]
    assert first["prev_hash"] == GENESIS_HASH
    assert second["prev_hash"] == hashlib.sha256(lines[0].encode()).hexdigest()
    assert first["key_fingerprint"] == public_key_fingerprint(key.public_key())
    for entry in ledger.entries():
        key.public_key().verify(bytes.fromhex(entry["signature"]), signed_payload(entry))
    assert second["mechanism"] == {"noise_multiplier": 1.3, "sample_rate": 0.02, "steps": 40}
    assert second["extra"] == {"expected_batch_size": 32, "precision": "fp32"}
    assert second["time"].endswith("+00:00")
    assert set(second) == {
        "version",
        "site",
        "run_id",
        "round",
        "time",
        "status",
        "mechanism",
        "delta",
        "max_grad_norm",
        "accountant",
        "cumulative_epsilon",
        "lifetime_epsilon",
        "extra",
        "prev_hash",
        "key_fingerprint",
        "signature",
    }


def test_lifetime_history_spans_runs_and_skips_untrained_rounds(tmp_path: Path) -> None:
    ledger = SiteLedger(tmp_path / "ledger.jsonl", "hospital_a")
    assert ledger.entries() == [] and ledger.mechanisms() == [] and ledger.spent_epsilon() == 0.0
    _append_trained(ledger, "run-1", 1)
    other = Mechanism(2.0, 0.05, 10)
    _append_trained(ledger, "run-2", 1, other)
    spent = ledger.spent_epsilon()
    exhausted = ledger.append(
        run_id="run-2",
        round=2,
        status="budget_exhausted",
        mechanism=None,
        delta=DELTA,
        max_grad_norm=1.0,
        accountant="rdp",
        cumulative_epsilon=spent,
        lifetime_epsilon=10.0,
    )
    assert "signature" not in exhausted and "key_fingerprint" not in exhausted
    assert exhausted["mechanism"] is None and exhausted["extra"] == {}
    assert ledger.mechanisms() == [ROUND, other]
    assert ledger.spent_epsilon() == pytest.approx(epsilon_opacus([ROUND, other], DELTA))
    # asked for another accountant, the history is recomputed with it (PRV is tighter)
    assert ledger.spent_epsilon("prv") == pytest.approx(epsilon_opacus([ROUND, other], DELTA, "prv"))
    assert ledger.spent_epsilon("prv") < spent


def test_corrupt_line_is_named(tmp_path: Path) -> None:
    ledger = SiteLedger(tmp_path / "ledger.jsonl", "hospital_a")
    _append_trained(ledger, "run-1", 1)
    with ledger.path.open("a") as handle:
        handle.write('{"version": 1, "site": "hosp')
    with pytest.raises(InputError, match=r"ledger.jsonl: line 2: not valid JSON"):
        ledger.entries()
    with pytest.raises(InputError, match="line 2"):
        _append_trained(ledger, "run-1", 2)


def test_refuses_to_extend_another_sites_ledger(tmp_path: Path) -> None:
    _append_trained(SiteLedger(tmp_path / "ledger.jsonl", "hospital_b"), "run-1", 1)
    with pytest.raises(InputError, match="line 1: belongs to site 'hospital_b', not 'hospital_a'"):
        _append_trained(SiteLedger(tmp_path / "ledger.jsonl", "hospital_a"), "run-1", 2)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    ledger = SiteLedger(tmp_path / "ledger.jsonl", "hospital_a")
    common = {
        "run_id": "r",
        "round": 1,
        "delta": DELTA,
        "max_grad_norm": 1.0,
        "accountant": "rdp",
        "cumulative_epsilon": 0.0,
        "lifetime_epsilon": 1.0,
    }
    with pytest.raises(ValueError, match="status must be one of"):
        ledger.append(status="done", mechanism=ROUND, **common)
    with pytest.raises(ValueError, match="must record its mechanism"):
        ledger.append(status="trained", mechanism=None, **common)
    with pytest.raises(ValueError, match="extra 'per_patient' must be a scalar"):
        ledger.append(status="trained", mechanism=ROUND, extra={"per_patient": [0.1, 0.2]}, **common)
    assert not ledger.path.exists()


def test_failed_write_leaves_the_old_ledger_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = SiteLedger(tmp_path / "ledger.jsonl", "hospital_a")
    _append_trained(ledger, "run-1", 1)
    before = ledger.path.read_bytes()

    def failing_replace(source: str, destination: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        _append_trained(ledger, "run-1", 2)
    assert ledger.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.jsonl"]
    assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o644
    assert json.loads(before)["round"] == 1
