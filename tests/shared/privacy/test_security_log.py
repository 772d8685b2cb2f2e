"""The site security log: chained, signed lines; the audit names the line that was changed or deleted."""

import json

import pytest

from shared.privacy.audit import security_log_problems
from shared.privacy.keys import generate_site_key, load_private_key, load_public_key
from shared.privacy.ledger import GENESIS_HASH, line_hash
from shared.privacy.security_log import SecurityLog, log_security_event


@pytest.fixture
def keys(tmp_path):
    generate_site_key(tmp_path / "k.key", tmp_path / "k.pub")
    return load_private_key(tmp_path / "k.key"), load_public_key(tmp_path / "k.pub")


def _write(tmp_path, key, n=4):
    log = SecurityLog(tmp_path / "security_log.jsonl", "site_a", key)
    for i in range(n):
        log.append({"kind": "received", "round": i, "config": {"lr": 0.1}})
    return log


def test_lines_are_chained_numbered_and_signed(tmp_path, keys):
    log = _write(tmp_path, keys[0])
    lines = log.path.read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[0]["prev_hash"] == GENESIS_HASH
    assert all(entries[i]["prev_hash"] == line_hash(lines[i - 1]) for i in range(1, 4))
    assert all(len(e["signature"]) == 128 for e in entries)
    assert [e["round"] for e in log.events()] == [0, 1, 2, 3]
    assert security_log_problems(log.path, keys[1], "site_a") == []


def test_event_needs_a_kind(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        SecurityLog(tmp_path / "s.jsonl", "a").append({"round": 1})


def test_edited_line_is_named(tmp_path, keys):
    log = _write(tmp_path, keys[0])
    lines = log.path.read_text().splitlines()
    lines[1] = lines[1].replace('"lr":0.1', '"lr":0.2')
    log.path.write_text("\n".join(lines) + "\n")
    problems = security_log_problems(log.path, keys[1], "site_a")
    assert any(p.startswith("security log line 2: signature does not verify") for p in problems)
    assert any(p.startswith("security log line 3: hash chain broken") for p in problems)
    unsigned_check = security_log_problems(log.path, None, "site_a")
    assert unsigned_check == ["security log line 3: hash chain broken (a line was changed, deleted or reordered)"]


def test_deleted_line_is_named(tmp_path, keys):
    log = _write(tmp_path, keys[0])
    lines = log.path.read_text().splitlines()
    del lines[1]
    log.path.write_text("\n".join(lines) + "\n")
    problems = security_log_problems(log.path, keys[1], "site_a")
    assert problems and all(p.startswith("security log line 2:") for p in problems)
    assert any("sequence number 3, expected 2" in p for p in problems)


def test_garbage_and_foreign_site(tmp_path, keys):
    log = _write(tmp_path, keys[0], n=2)
    log.path.write_text(log.path.read_text() + "{not json\n")
    problems = security_log_problems(log.path, keys[1], "site_b")
    assert "security log line 3: not valid JSON (corrupted or truncated)" in problems
    assert "security log line 1: entry of site 'site_a', expected 'site_b'" in problems


def test_log_security_event_signs_with_the_site_key_in_state_dir(tmp_path):
    state = tmp_path / "site_a"
    generate_site_key(state / "keys" / "site_a.key", state / "keys" / "site_a.pub")
    log_security_event(state, {"kind": "site_started"})
    log_security_event(state, {"detail": "no kind given"})
    entries = SecurityLog(state / "security_log.jsonl", "site_a").entries()
    assert [e["event"]["kind"] for e in entries] == ["site_started", "note"]
    assert all(e["site"] == "site_a" and "signature" in e for e in entries)
    assert security_log_problems(state / "security_log.jsonl", load_public_key(state / "keys" / "site_a.pub"), "site_a") == []
