import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.errors import InputError
from shared.privacy.accountant import Mechanism, epsilon_independent, epsilon_opacus
from shared.privacy.audit import (
    LedgerAudit,
    audit_ledger,
    audit_ledgers,
    audit_table,
    plot_epsilon,
    write_audit_json,
)
from shared.privacy.keys import generate_site_key, load_private_key, public_key_fingerprint
from shared.privacy.ledger import SiteLedger, canonical_json, signed_payload
from shared.privacy.planner import plan_noise_multiplier

DELTA = 1e-5
LIFETIME = 3.0
SAMPLE_RATE, STEPS_PER_ROUND, ROUNDS = 0.02, 50, 4
SITE_KEY = Ed25519PrivateKey.generate()
OTHER_SITE_KEY = Ed25519PrivateKey.generate()


def _write_honest_ledger(
    path: Path,
    key: Ed25519PrivateKey | None = SITE_KEY,
    accountant: str = "rdp",
    rounds: int = ROUNDS,
    site: str = "hospital_a",
) -> SiteLedger:
    """What a site's client writes: plan once for the run, then one signed entry per trained round."""
    ledger = SiteLedger(path, site, key)
    noise = plan_noise_multiplier(
        LIFETIME, DELTA, SAMPLE_RATE, STEPS_PER_ROUND * rounds, accountant=accountant
    )
    mechanism = Mechanism(noise, SAMPLE_RATE, STEPS_PER_ROUND)
    for round_number in range(1, rounds + 1):
        ledger.append(
            run_id="run-1",
            round=round_number,
            status="trained",
            mechanism=mechanism,
            delta=DELTA,
            max_grad_norm=1.0,
            accountant=accountant,
            cumulative_epsilon=epsilon_opacus(ledger.mechanisms() + [mechanism], DELTA, accountant),
            lifetime_epsilon=LIFETIME,
            extra={"num_examples": 2500},
        )
    return ledger


@pytest.fixture(scope="module")
def honest_lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    path = tmp_path_factory.mktemp("honest") / "ledger.jsonl"
    _write_honest_ledger(path)
    return path.read_text().splitlines()


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _audit(path: Path, **kwargs) -> LedgerAudit:
    return audit_ledger(path, SITE_KEY.public_key(), **kwargs)


def test_honest_ledger_passes(tmp_path: Path, honest_lines: list[str]) -> None:
    audit = _audit(_write_lines(tmp_path / "ledger.jsonl", honest_lines))
    assert audit.status == "ok" and audit.problems == []
    assert (audit.site, audit.entries, audit.rounds_trained) == ("hospital_a", 4, 4)
    assert 0.9 * LIFETIME <= audit.recorded_epsilon <= LIFETIME
    assert audit.recomputed_epsilon == pytest.approx(audit.recorded_epsilon, rel=0.01)
    assert (audit.delta, audit.lifetime_epsilon) == (DELTA, LIFETIME)
    assert len(audit.epsilon_by_entry) == 4 and audit.epsilon_by_entry == sorted(audit.epsilon_by_entry)


def test_changed_number_is_detected(tmp_path: Path, honest_lines: list[str]) -> None:
    lines = list(honest_lines)
    entry = json.loads(lines[1])
    entry["mechanism"]["noise_multiplier"] *= 2  # claims more noise than was used
    lines[1] = canonical_json(entry)
    audit = _audit(_write_lines(tmp_path / "ledger.jsonl", lines))
    assert audit.status == "tampered"
    assert any(p.startswith("line 2: signature does not verify") for p in audit.problems)
    assert any(p.startswith("line 3: hash chain broken") for p in audit.problems)


def test_changed_number_is_detected_without_signatures(tmp_path: Path) -> None:
    lines = _write_honest_ledger(tmp_path / "unsigned.jsonl", key=None).path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["max_grad_norm"] = 10.0
    lines[1] = canonical_json(entry)
    audit = audit_ledger(_write_lines(tmp_path / "edited.jsonl", lines))
    assert audit.status == "tampered"
    assert audit.problems == [
        "line 3: hash chain broken, prev_hash does not match line 2 (a line was changed, deleted or reordered)"
    ]


def test_deleted_line_is_detected(tmp_path: Path, honest_lines: list[str]) -> None:
    audit = _audit(_write_lines(tmp_path / "ledger.jsonl", honest_lines[:1] + honest_lines[2:]))
    assert audit.status == "tampered"
    assert audit.problems[0].startswith("line 2: hash chain broken, prev_hash does not match line 1")
    # the history lost a round, so the recorded epsilons no longer add up either
    assert any(p.startswith("line 2: recorded cumulative epsilon") for p in audit.problems)

    first_deleted = _audit(_write_lines(tmp_path / "first.jsonl", honest_lines[1:]))
    assert first_deleted.status == "tampered"
    assert first_deleted.problems[0].startswith(
        "line 1: hash chain broken, prev_hash does not match the start"
    )


def test_reordered_lines_are_detected(tmp_path: Path, honest_lines: list[str]) -> None:
    lines = [honest_lines[0], honest_lines[2], honest_lines[1], honest_lines[3]]
    audit = _audit(_write_lines(tmp_path / "ledger.jsonl", lines))
    assert audit.status == "tampered"
    assert any(p.startswith("line 2: hash chain broken") for p in audit.problems)
    assert any(p.startswith("line 3: round 2 of run 'run-1' comes after its round 3") for p in audit.problems)


def test_another_sites_signature_is_detected(tmp_path: Path, honest_lines: list[str]) -> None:
    entry = json.loads(honest_lines[2])
    entry["key_fingerprint"] = public_key_fingerprint(OTHER_SITE_KEY.public_key())
    entry["signature"] = OTHER_SITE_KEY.sign(signed_payload(entry)).hex()
    audit = _audit(
        _write_lines(tmp_path / "a.jsonl", honest_lines[:2] + [canonical_json(entry)] + honest_lines[3:])
    )
    assert audit.status == "tampered"
    assert any(p.startswith("line 3: signed by key") and "not this site's key" in p for p in audit.problems)

    # the other site's signature under this site's fingerprint fails verification
    entry = json.loads(honest_lines[2])
    entry["signature"] = OTHER_SITE_KEY.sign(signed_payload(entry)).hex()
    audit = _audit(
        _write_lines(tmp_path / "b.jsonl", honest_lines[:2] + [canonical_json(entry)] + honest_lines[3:])
    )
    assert audit.status == "tampered"
    assert any(p.startswith("line 3: signature does not verify") for p in audit.problems)

    # a whole ledger audited with the wrong site's key fails on every line
    audit = audit_ledger(_write_lines(tmp_path / "c.jsonl", honest_lines), OTHER_SITE_KEY.public_key())
    assert audit.status == "tampered"
    assert [p.split(":")[0] for p in audit.problems] == ["line 1", "line 2", "line 3", "line 4"]


def test_truncated_line_is_detected(tmp_path: Path, honest_lines: list[str]) -> None:
    text = "".join(f"{line}\n" for line in honest_lines)
    path = tmp_path / "ledger.jsonl"
    path.write_text(text[: len(text) - len(honest_lines[-1]) // 2])
    audit = _audit(path)
    assert audit.status == "tampered"
    assert audit.problems == ["line 4: not valid JSON (corrupted or truncated)"]
    assert audit.entries == 4 and audit.rounds_trained == 3

    lines = list(honest_lines)
    lines[1] = lines[1][:40]
    audit = _audit(_write_lines(tmp_path / "middle.jsonl", lines))
    assert audit.problems[:2] == [
        "line 2: not valid JSON (corrupted or truncated)",
        "line 3: hash chain broken, prev_hash does not match line 2 (a line was changed, deleted or reordered)",
    ]


def test_wrong_recorded_epsilon_is_a_mismatch(tmp_path: Path) -> None:
    """A site (honestly signed) whose recorded epsilon disagrees with the independent accountant."""
    ledger = SiteLedger(tmp_path / "ledger.jsonl", "hospital_a", SITE_KEY)
    mechanism = Mechanism(1.0, 0.02, 50)
    for round_number, factor in ((1, 1.0), (2, 0.8)):
        history = ledger.mechanisms() + [mechanism]
        ledger.append(
            "run-1",
            round_number,
            "trained",
            mechanism,
            DELTA,
            1.0,
            "rdp",
            factor * epsilon_opacus(history, DELTA),
            LIFETIME,
        )
    audit = _audit(ledger.path)
    assert audit.status == "mismatch"
    assert len(audit.problems) == 1 and audit.problems[0].startswith("line 2: recorded cumulative epsilon")
    assert audit.recomputed_epsilon == pytest.approx(epsilon_independent([mechanism] * 2, DELTA))


def test_over_budget_and_budget_exhausted(tmp_path: Path, honest_lines: list[str]) -> None:
    path = _write_lines(tmp_path / "ledger.jsonl", honest_lines)
    audit = _audit(path, target_epsilon=2.0)
    assert audit.status == "over_budget"
    assert len(audit.problems) == 1 and "exceeds the target 2" in audit.problems[0]

    ledger = SiteLedger(path, "hospital_a", SITE_KEY)
    ledger.append("run-2", 1, "budget_exhausted", None, DELTA, 1.0, "rdp", ledger.spent_epsilon(), LIFETIME)
    audit = _audit(path)
    assert audit.status == "budget_exhausted" and audit.problems == []
    assert audit.entries == 5 and audit.rounds_trained == 4

    overspent = SiteLedger(tmp_path / "overspent.jsonl", "hospital_a", SITE_KEY)
    mechanism = Mechanism(0.8, 0.05, 400)
    epsilon = epsilon_opacus([mechanism], DELTA)
    overspent.append("run-1", 1, "trained", mechanism, DELTA, 1.0, "rdp", epsilon, LIFETIME)
    audit = _audit(overspent.path)
    assert epsilon > LIFETIME and audit.status == "over_budget"
    recomputed = epsilon_independent([mechanism], DELTA)
    assert audit.problems == [
        f"line 1: epsilon {epsilon:.6g} (recomputed {recomputed:.6g}) exceeds the lifetime budget 3"
    ]


def test_prv_ledger_passes_against_pld(tmp_path: Path) -> None:
    ledger = _write_honest_ledger(tmp_path / "ledger.jsonl", accountant="prv", rounds=2)
    audit = _audit(ledger.path)
    assert audit.status == "ok", audit.problems
    assert audit.recomputed_epsilon == pytest.approx(audit.recorded_epsilon, rel=0.02)


def test_missing_ledger_is_unreadable(tmp_path: Path) -> None:
    audit = audit_ledger(tmp_path / "absent.jsonl", expected_site="hospital_c")
    assert (audit.status, audit.site, audit.problems) == (
        "unreadable",
        "hospital_c",
        ["ledger file not found"],
    )


def test_audit_many_sites_report_and_plot(tmp_path: Path, honest_lines: list[str]) -> None:
    generate_site_key(tmp_path / "b.key", tmp_path / "b.pub")
    site_a = _write_lines(tmp_path / "a.jsonl", honest_lines)
    site_b = _write_honest_ledger(
        tmp_path / "b.jsonl", load_private_key(tmp_path / "b.key"), rounds=2, site="hospital_b"
    ).path
    key_a = tmp_path / "a.pub"
    key_a.write_bytes(
        SITE_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    audits = audit_ledgers(
        {"hospital_a": site_a, "hospital_b": site_b, "hospital_c": site_b},
        {"hospital_a": key_a, "hospital_b": tmp_path / "b.pub", "hospital_c": tmp_path / "b.pub"},
        {"hospital_a": 3.0},
    )
    assert [a.status for a in audits] == ["ok", "ok", "tampered"]
    assert audits[2].problems[0] == "line 1: entry of site 'hospital_b', expected 'hospital_c'"
    assert audits[0].target_epsilon == 3.0 and audits[1].target_epsilon is None

    table = audit_table(audits).splitlines()
    assert table[0].split() == [
        "site",
        "target",
        "eps",
        "spent",
        "eps",
        "recomputed",
        "eps",
        "of",
        "it",
        "evaluation",
        "eps",
        "delta",
        "rounds",
        "status",
    ]
    row_a = table[2].split()
    assert row_a[0] == "hospital_a" and row_a[1] == "3.0000" and row_a[-2:] == ["4", "ok"]
    assert row_a[2] == f"{audits[0].recorded_epsilon:.4f}" and row_a[4:7] == ["0.0000", "(0)", "1e-05"]
    assert table[4].split()[-1] == "tampered" and table[5].startswith("hospital_c: line 1: entry of site")

    write_audit_json(audits, tmp_path / "audit.json")
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert [s["site"] for s in saved] == ["hospital_a", "hospital_b", "hospital_c"]
    assert saved[0]["path"] == str(site_a) and saved[0]["rounds_trained"] == 4

    plot_epsilon(audits, tmp_path / "epsilon.png")
    png = (tmp_path / "epsilon.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    with pytest.raises(InputError, match="public_keys: no public key given for site 'hospital_b'"):
        audit_ledgers({"hospital_a": site_a, "hospital_b": site_b}, {"hospital_a": key_a}, None)


def test_malformed_entries_are_named(tmp_path: Path, honest_lines: list[str]) -> None:
    entry = json.loads(honest_lines[2])
    del entry["delta"]
    lines = [honest_lines[0], "[1, 2]", canonical_json(entry), "{not json"]
    audit = _audit(_write_lines(tmp_path / "ledger.jsonl", lines))
    assert audit.status == "tampered"
    assert audit.problems == [
        "line 2: not a JSON object",
        "line 3: missing field(s) delta",
        "line 4: not valid JSON (corrupted or truncated)",
    ]
