"""shared.io: atomic writes survive a failure mid-write, JSONL appends, one-line read errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from shared import io as fio
from shared.errors import InputError


def _folder(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, failing):
    target = tmp_path / "state" / "plan.json"
    fio.write_json(target, {"noise": 1.1})
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk gone")

    if failing == "replace":
        monkeypatch.setattr(fio.os, "replace", boom)
    elif failing == "fsync":
        monkeypatch.setattr(fio.os, "fsync", boom)
    with pytest.raises(OSError, match="disk gone"):
        with fio.atomic_file(target) as handle:
            handle.write(b'{"noise": 0.')  # half of the new content is on disk when the failure comes
            if failing == "write":
                boom()
    assert target.read_bytes() == before
    assert _folder(target) == ["plan.json"]


def test_write_sets_the_mode_syncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(fio.os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real_fsync(fd)))
    key = fio.write_bytes(tmp_path / "keys" / "site.key", b"secret", 0o600)
    assert key.read_bytes() == b"secret"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert synced == [False, True]  # the file first, then the folder that holds the rename
    text = fio.write_text(tmp_path / "notes.txt", "ε ≤ 1\n")
    assert text.read_text(encoding="utf-8") == "ε ≤ 1\n" and stat.S_IMODE(text.stat().st_mode) == 0o644


def test_handle_writers_torch_pandas_numpy_go_through_one_atomic_file(tmp_path):
    with fio.atomic_file(tmp_path / "update.pt", 0o600) as handle:
        torch.save({"w": torch.arange(3)}, handle)
    assert torch.equal(torch.load(tmp_path / "update.pt", weights_only=True)["w"], torch.arange(3))
    with fio.atomic_file(tmp_path / "events.csv.gz") as handle:
        pd.DataFrame({"a": [1, 2]}).to_csv(handle, index=False, compression={"method": "gzip", "mtime": 0})
    assert pd.read_csv(tmp_path / "events.csv.gz")["a"].tolist() == [1, 2]
    with fio.atomic_file(tmp_path / "cache.npz") as handle:
        np.savez(handle, v=np.ones(2))
    assert np.load(tmp_path / "cache.npz")["v"].tolist() == [1.0, 1.0]
    assert _folder(tmp_path / "x") == ["cache.npz", "events.csv.gz", "update.pt"]


def test_write_json_ends_with_a_newline_and_uses_the_default(tmp_path):
    path = fio.write_json(tmp_path / "m.json", {"x": np.float32(0.5)}, default=lambda o: o.item())
    assert path.read_text().endswith("}\n") and json.loads(path.read_text()) == {"x": 0.5}


def test_append_jsonl_adds_one_line_per_record_and_keeps_earlier_lines(tmp_path):
    log = tmp_path / "site" / "events.jsonl"
    fio.append_jsonl(log, {"round": 1, "text": "a\nb"})
    fio.append_jsonl(log, {"round": 2})
    lines = log.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"round": 1, "text": "a\nb"}, {"round": 2}]
    assert stat.S_IMODE(log.stat().st_mode) == 0o644


def test_yaml_errors_are_one_line_naming_the_file_and_line(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("site: a\npolicy: [unclosed\nnext: 1\n")
    with pytest.raises(InputError) as err:
        fio.load_yaml(bad, "site config")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{bad}: line ") and "not valid YAML" in message
    with pytest.raises(InputError, match=r"missing\.yaml: site config not found$"):
        fio.load_yaml(tmp_path / "missing.yaml", "site config")
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("task: x\n".encode("utf-16"))
    with pytest.raises(InputError, match="looks like UTF-16"):
        fio.load_yaml(utf16)
    good = tmp_path / "good.yaml"
    good.write_text("a: [1, 2]\n")
    assert fio.load_yaml(good) == {"a": [1, 2]}


def test_a_yaml_file_that_asks_to_build_python_objects_is_refused_and_runs_nothing(tmp_path):
    """A site's YAML (its policy, re-read with every message) can come from a shared folder: a tag that would call
    Python (PyYAML's unsafe loaders) is an InputError naming the file, and the call never happens."""
    marker = tmp_path / "ran"
    hostile = tmp_path / "policy.yaml"
    hostile.write_text(f"lifetime_epsilon: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(InputError, match=r"policy\.yaml"):
        fio.load_yaml(hostile, "site policy")
    assert not marker.exists()
    standard = tmp_path / "standard.yaml"
    standard.write_text("a: !!str 1\nb: !!float 2\n")  # YAML's own tags still work
    assert fio.load_yaml(standard) == {"a": "1", "b": 2.0}


def test_json_errors_are_one_line_naming_the_file_and_line(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text('{\n "a": 1,\n}\n')
    with pytest.raises(InputError) as err:
        fio.load_json(bad)
    assert str(err.value).startswith(f"{bad}: line 3: not valid JSON") and "\n" not in str(err.value)
    assert fio.load_json(fio.write_json(tmp_path / "ok.json", [1])) == [1]


def test_serial_writer_runs_writes_in_order_off_the_callers_thread_and_raises_a_failure_on_settle(tmp_path):
    import threading

    writer = fio.SerialWriter()
    threads, started = [], threading.Event()
    release = threading.Event()

    def slow_first(path):
        started.set()
        release.wait(30)
        threads.append(threading.current_thread().name)
        fio.write_text(path, "first")

    writer.submit(slow_first, tmp_path / "a.txt")
    writer.submit(lambda: (threads.append(threading.current_thread().name),
                           fio.write_text(tmp_path / "a.txt", "second")))
    assert started.wait(30) and not (tmp_path / "a.txt").exists()  # the caller was not held up
    release.set()
    writer.settle()
    assert (tmp_path / "a.txt").read_text() == "second"  # in the order submitted
    assert threads[0] == threads[1] != threading.current_thread().name

    def full_disk():
        raise OSError(28, "No space left on device")

    writer.submit(full_disk)
    with pytest.raises(OSError, match="No space left"):
        writer.settle()
    writer.settle()  # reported once

    name = threads[0]
    assert writer.close() == [] and name not in {t.name for t in threading.enumerate()}  # no idle thread left
    writer.submit(lambda: threads.append("after close"))  # a later write starts a new thread
    writer.close()
    assert threads[-1] == "after close"
