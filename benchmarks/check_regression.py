"""Fails when a benchmark's DP / non-DP ratio worsened by more than a tolerance against a committed
reference: ratios only, never absolute times (the CI machine is shared and its speed varies).

    python benchmarks/check_regression.py NEW.json [NEW2.json ...] \
        --reference benchmarks/reference/dp_overhead_cpu_quick.json --tolerance 0.2

Each row (model, batch, precision, mode) of the reference with a ratio must be in the new run; its
new ratio is the best (lowest) median ratio over the NEW files given (best-of-N runs: noise only
ever makes a ratio look worse), and it fails when new > (1 + tolerance) * reference. Exit code 1
and one line per regression.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "reference" / "dp_overhead_cpu_quick.json"
KEY = ("model", "batch", "precision", "mode")


def ratios(payload: dict) -> dict[tuple, float]:
    """(model, batch, precision, mode) -> median DP / non-DP ratio of that run."""
    out = {}
    for row in payload["rows"]:
        value = row.get("ratio_median", row.get("dp_over_non_dp"))
        if value is not None and "error" not in row:
            out[tuple(row[k] for k in KEY)] = float(value)
    return out


def regressions(reference: dict, runs: list[dict], tolerance: float) -> list[str]:
    """One line per reference ratio that every run missed by more than `tolerance` (or lacks)."""
    ref = ratios(reference)
    if not ref:
        return ["the reference has no ratios"]
    seen = [ratios(run) for run in runs]
    problems = []
    for key, expected in sorted(ref.items()):
        got = [r[key] for r in seen if key in r]
        name = "/".join(str(k) for k in key)
        if not got:
            problems.append(f"{name}: not measured (reference ratio {expected:.3f})")
        elif min(got) > (1 + tolerance) * expected:
            problems.append(f"{name}: DP/non-DP {min(got):.3f} > {1 + tolerance:.2f} x reference {expected:.3f}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="benchmark JSON file(s) of the new run(s)")
    parser.add_argument("--reference", default=str(REFERENCE))
    parser.add_argument("--tolerance", type=float, default=0.2, help="allowed relative worsening (default 0.2)")
    args = parser.parse_args(argv)
    reference = json.loads(Path(args.reference).read_text())
    problems = regressions(reference, [json.loads(Path(p).read_text()) for p in args.runs], args.tolerance)
    for line in problems:
        print(f"regression: {line}")
    if not problems:
        print(f"ok: {len(ratios(reference))} ratio(s) within {args.tolerance:.0%} of {args.reference}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
