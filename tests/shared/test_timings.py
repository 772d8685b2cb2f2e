"""Site timings: exclusive time per part, written to the site's own folder, nothing outside a message."""

import json
import time

from shared import timings


def test_parts_keep_their_exclusive_time_and_land_in_the_state_folder(tmp_path):
    with timings.message(tmp_path, "run-1", "train", 3):
        with timings.part("train"):
            time.sleep(0.05)
            with timings.part("accounting"):
                time.sleep(0.05)
                with timings.part("accounting"):  # nested in itself: counted once
                    time.sleep(0.02)
        with timings.part("serialise"):
            time.sleep(0.01)
    (line,) = (tmp_path / timings.TIMINGS_DIR / "run-1.jsonl").read_text().splitlines()
    rec = json.loads(line)
    assert rec["phase"] == "train" and rec["round"] == 3 and rec["peak_rss_mb"] > 0
    assert rec["train_s"] >= 0.05 and rec["accounting_s"] >= 0.07 and rec["serialise_s"] >= 0.01
    # exclusive: the accounting inside training is not counted twice, so the parts add up to the wall time
    parts = sum(rec[f"{p}_s"] for p in timings.PARTS) + rec["other_s"]
    assert abs(parts - rec["wall_s"]) < 1e-3
    cpu_parts = sum(rec[f"{p}_cpu_s"] for p in timings.PARTS) + rec["other_cpu_s"]
    assert abs(cpu_parts - rec["cpu_s"]) < 1e-3 and rec["train_cpu_s"] < 0.05  # sleeping costs no CPU


def test_parts_outside_a_message_record_nothing(tmp_path):
    with timings.part("train"):
        pass
    with timings.message(tmp_path, "run-2", "evaluate", None):
        pass
    with timings.part("evaluate"):  # after the message: nothing to add to
        time.sleep(0.01)
    rec = json.loads((tmp_path / timings.TIMINGS_DIR / "run-2.jsonl").read_text())
    assert rec["evaluate_s"] == 0.0 and rec["train_s"] == 0.0
