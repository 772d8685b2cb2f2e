"""Markdown tables from the benchmark results, for the README's "Performance" section.

Reads benchmarks/results/*.json (fed_vs_pooled, scaling, communication, dp_overhead; a full run's
file is preferred over its `_quick` variant) and prints Markdown, or writes it with --out.

    python benchmarks/make_readme_table.py [--results benchmarks/results] [--out perf.md]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _md(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _eps(value: Any) -> str:
    value = float(value)
    return "∞" if math.isinf(value) else f"{value:g}"


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _kib(n_bytes: float) -> str:
    return f"{n_bytes / 1024:,.1f}"


def fed_vs_pooled(data: dict) -> str:
    epsilons = sorted({float(r["epsilon"]) for r in data["rows"]})
    by_workload: dict[str, dict[float, dict]] = {}
    for r in data["rows"]:
        by_workload.setdefault(r["workload"], {})[float(r["epsilon"])] = r
    rows = []
    for name, per_eps in by_workload.items():
        first = next(iter(per_eps.values()))
        cells = [f"{_num(per_eps[e]['federated'])} ({_num(per_eps[e]['ratio'], 2)})" if e in per_eps else "-" for e in epsilons]
        rows.append([name, first["data"], first["metric"], _num(first["pooled"]), *cells])
    header = ["workload", "data", "metric", "pooled, non-DP", *(f"federated ε={_eps(e)} (ratio)" for e in epsilons)]
    seeds = len(data.get("seeds", [])) or 1
    note = (f"Federated DP (FedAvg of per-site DP-SGD, δ=1e-5, ε per site over the run) vs pooled non-DP training, "
            f"same epochs; metric on the union of the sites' validation splits; mean over {seeds} seed(s).")
    return _md(header, rows) + "\n\n" + note


def scaling(data: dict) -> str:
    rows = data["rows"]
    base = rows[0]["round_cpu_s"]
    table = _md(
        ["sites", "stays/site", "round 1 wall (s)", "round wall (s)", "round CPU, all sites (s)", "train CPU",
         "evaluate CPU", "accounting CPU", "CPU growth", "peak RSS per serving process (MB)"],
        [[r["sites"], r["stays_per_site"], _num(r["round_1_wall_s"], 2), _num(r["round_wall_s"], 2),
          _num(r["round_cpu_s"], 2), _num(r.get("train_cpu_s"), 2), _num(r.get("evaluate_cpu_s"), 2),
          _num(r.get("accounting_cpu_s"), 2), f"{r['round_cpu_s'] / base:.2f}x" if base else "-",
          _num(r.get("peak_rss_mb_per_site_max"), 0)] for r in rows],
    )
    return table + (f"\n\n{data['total_stays']} synthetic ICU stays in all, split evenly; the real Flower simulation "
                    f"({data.get('rounds')} rounds; steady rounds = after round 1). Round CPU = the sites' ClientApp "
                    "handlers' CPU time summed over sites.")


def round_breakdown(data: dict) -> str:
    parts = ("setup", "deserialise", "train", "evaluate", "accounting", "checkpoint", "serialise", "other",
             "idle_framework")
    summary = _md(
        ["config", "runtime", "round 1 wall (s)", "round 1 overhead", "steady round wall (s)", "steady overhead",
         "steady site CPU overhead"],
        [[r["config"], r["runtime"], _num(r["rounds"][0]["wall_s"], 2) if r["rounds"] else "-",
          f"{r['overhead_round_1']:.1%}" if r.get("overhead_round_1") is not None else "-",
          _num(r.get("round_wall_steady_median_s"), 2),
          f"{r['overhead_steady_median']:.1%}" if r.get("overhead_steady_median") is not None else "-",
          f"{r['site_cpu_overhead_steady_median']:.1%}" if r.get("site_cpu_overhead_steady_median") is not None else "-"]
         for r in data["results"]],
    )
    rows = []
    for r in data["results"]:
        for rnd in r["rounds"]:
            for site, row in rnd["sites"].items():
                rows.append([r["config"], r["runtime"], rnd["round"], _num(rnd["wall_s"], 2), site,
                             *(_num(row[p], 3) for p in parts)])
    detail = _md(["config", "runtime", "round", "wall (s)", "site", *parts], rows)
    return (summary + "\n\nOverhead = 1 - (slowest site's training + slowest site's evaluation) / round wall time "
            "(a round's wall time: the gap between global checkpoints); site CPU overhead = the sites' CPU outside "
            "training and evaluation / all their handlers' CPU. Per site and round, wall seconds:\n\n" + detail
            + f"\n\nCommand: `{data.get('command')}`.")


def communication(data: dict) -> str:
    sizes = _md(
        ["model", "parameters", "4 × params (KiB)", "train request (KiB)", "train reply (KiB)", "reply / raw",
         "evaluate reply (B)", "float16 reply (KiB)"],
        [[r["model"], f"{r['parameters']:,}", _kib(r["raw_fp32_bytes"]), _kib(r["fp32"]["request"]),
          _kib(r["fp32"]["train_reply"]), _num(r["train_reply_over_raw"], 3), f"{r['fp32']['evaluate_reply']:,}",
          _kib(r["fp16"]["train_reply"])] for r in data["sizes"]],
    )
    utility = _md(
        ["workload", "metric", "ε", "float32", "float16", "difference"],
        [[r["workload"], r["metric"], _eps(r["epsilon"]), _num(r["float32"], 4), _num(r["float16"], 4),
          f"{r['difference']:+.4f}"] for r in data.get("float16_utility", [])],
    )
    return sizes + "\n\nBytes per message as Flower 1.41 serializes it (no transport framing).\n\n" + utility


def _ratio(r: dict) -> str:
    if "ratio_mean" in r:
        return f"{r['ratio_mean']:.3f} ± {r['ratio_sd']:.3f}"
    if "dp_over_non_dp" in r:
        return f"{r['dp_over_non_dp']:.2f}x"
    return r.get("error", "")[:60]


def dp_overhead(data: dict) -> str:
    rows = [
        [r["model"], r["batch"], r["precision"], r["mode"], _num(r.get("step_ms"), 1), _num(r.get("samples_per_s"), 0),
         _num(r.get("peak_mb"), 0), _ratio(r)]
        for r in data["rows"]
    ]
    table = _md(["model", "batch", "precision", "mode", "step (ms)", "samples/s", "peak MB", "DP / non-DP (mean ± sd)"],
                rows)
    how = ""
    if "reps" in data:
        clock = "process CPU time" if data.get("clock") == "cpu" else "wall time"
        how = (f" Interleaved in one process: {data['reps']} repetitions of {data.get('steps', 1)} step(s) per mode; "
               f"ratio = DP's fastest step / the plain step's fastest step of the same repetition ({clock}).")
    command = f" Command: `{data['command']}`." if data.get("command") else ""
    return table + f"\n\nDevice: {data.get('device')} ({data.get('device_name')}), {data.get('threads')} thread(s).{how}{command}"


def gpu_throughput(data: dict) -> str:
    text = dp_overhead(data)
    checks = data.get("targets", [])
    if checks:
        text += "\n\n" + _md(["target", "value", "met"], [[c["target"], c["value"], "yes" if c["met"] else "**no**"]
                                                          for c in checks])
    return text


def deployment_rounds(data: dict) -> str:
    return _md(["device", "model", "stays per site", "batch", "round wall (s)", "median (s)", "complete"],
               [[data["device"], data["model"], ",".join(str(s) for s in data["stays_per_site"]), data["batch_size"],
                 ", ".join(f"{s:.1f}" for s in data["round_s"]), _num(data.get("round_s_median"), 1),
                 data["complete"]]]) + f"\n\nDevice: {data.get('device_name')}. Command: `{data.get('command')}`."


FORMATTERS: dict[str, Callable[[dict], str]] = {
    "fed_vs_pooled": fed_vs_pooled,
    "scaling": scaling,
    "round_breakdown": round_breakdown,
    "communication": communication,
    "dp_overhead": dp_overhead,
    "gpu_throughput": gpu_throughput,
    "deployment_rounds": deployment_rounds,
}
TITLES = {
    "fed_vs_pooled": "Utility: federated DP vs pooled non-DP",
    "scaling": "Scaling with the number of sites (Flower simulation)",
    "round_breakdown": "Where a round's time goes",
    "communication": "Communication per site and round",
    "dp_overhead": "DP-SGD step cost",
    "gpu_throughput": "DP vs non-DP throughput on a GPU",
    "deployment_rounds": "Deployment round time (3 sites)",
}


def result_files(results: Path) -> dict[str, list[Path]]:
    """benchmark -> its result files, full runs before quick ones."""
    found: dict[str, list[Path]] = {}
    for path in sorted(results.glob("*.json")):
        name = next((b for b in FORMATTERS if path.stem == b or path.stem.startswith(b + "_")), None)
        if name:
            found.setdefault(name, []).append(path)
    for paths in found.values():
        paths.sort(key=lambda p: p.stem.endswith("_quick"))
    return found


def build_markdown(results: Path) -> str:
    parts = []
    for name, paths in result_files(results).items():
        if name in ("dp_overhead", "gpu_throughput", "deployment_rounds"):
            chosen = paths  # one file per device: show each
        else:
            chosen = paths[:1]
        for path in chosen:
            data = json.loads(path.read_text())
            quick = " (`--quick`)" if data.get("quick") else ""
            parts.append(f"### {TITLES[name]}{quick}\n\nFrom `benchmarks/results/{path.name}`.\n\n{FORMATTERS[name](data)}")
    return "\n\n".join(parts) + "\n" if parts else "No benchmark results found.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default=None, help="write the Markdown here instead of printing it")
    args = parser.parse_args(argv)
    text = build_markdown(Path(args.results))
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
