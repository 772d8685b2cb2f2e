"""The `fedcare` command: the composition root (the only place that imports server and client)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from shared.errors import InputError

DEFAULT_CONFIG = "configs/event_mortality.yaml"
console = Console(highlight=False)


def cmd_synth(args: argparse.Namespace) -> int:
    from shared.config import RunConfig, config_from_dict
    from shared.tasks.registry import build_task

    task = {"events": "event_mortality"}.get(args.task, args.task)
    cfg: RunConfig = config_from_dict({"task": task, "data": {"sites": [f"hospital_{chr(97 + i)}" for i in range(args.sites)]}},
                                      "<command line>")
    if args.sizes:
        cfg.data.synth_sizes = [int(s) for s in args.sizes.split(",")]
    build_task(cfg).synthesize(Path(args.out), list(cfg.data.sites), args.seed)
    console.print(f"wrote {args.sites} synthetic {task} sites to {args.out}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedcare.audit_run import audit_path
    from fedcare.simulation import simulate
    from shared.config import load_config
    from shared.privacy.audit import audit_table, plot_epsilon, write_audit_json

    cfg = load_config(args.config)
    if args.rounds:
        cfg.train.rounds = args.rounds
    if args.output:
        cfg.output_dir = args.output
    run_dir, summary = simulate(cfg)
    fw = summary["final_weighted"]
    shown = [summary.get("primary_metric", "auroc")] + [m for m in ("auprc", "brier", "macro_f1", "accuracy") if m in fw]
    parts = ", ".join(f"{m} {_f(fw.get(m))}" for m in dict.fromkeys(shown))
    console.print(f"\n[bold]final global model[/bold] (validation, weighted by site size): {parts}")
    for text in summary["events"]:
        console.print(f"  note: {text}")
    audits = audit_path(run_dir)
    write_audit_json(audits, run_dir / "audit.json")
    plot_epsilon(audits, run_dir / "epsilon.png")
    console.print("\n[bold]privacy-budget audit[/bold] (recomputed with an independent accountant)")
    console.print(audit_table(audits))
    console.print(f"\nrun folder: {run_dir}")
    return 0 if all(a.status in ("ok", "budget_exhausted") for a in audits) else 1


def cmd_audit(args: argparse.Namespace) -> int:
    from fedcare.audit_run import audit_path
    from shared.privacy.audit import audit_table, plot_epsilon, write_audit_json

    keys = {}
    for spec in args.public_key or []:
        site, _, path = spec.partition("=")
        keys[site] = Path(path)
    audits = audit_path(Path(args.path), keys)
    console.print(audit_table(audits))
    for a in audits:
        for problem in a.problems:
            console.print(f"[red]{a.site}: {problem}[/red]")
    if args.json:
        write_audit_json(audits, Path(args.json))
    if args.plot:
        plot_epsilon(audits, Path(args.plot))
    bad = [a for a in audits if a.status not in ("ok", "budget_exhausted")]
    return 1 if bad else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fedcare.predict import predict_to_csv

    n = predict_to_csv(Path(args.checkpoint), Path(args.data), Path(args.out), Path(args.encoder) if args.encoder else None)
    console.print(f"wrote {n} predictions to {args.out}")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from fedcare.certs import parse_hosts, parse_sites, write_deployment_keys

    report = write_deployment_keys(Path(args.out), parse_hosts(args.server_host), parse_sites(args.sites))
    for path in report.written:
        console.print(f"  wrote {path}")
    if report.kept:
        console.print(f"  kept {len(report.kept)} existing key files")
    console.print(f"key material in {args.out}: give each hospital its sites/<site>/ folder; keep center/ca.key offline")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    import json

    from fedcare.center import RUN_FILE, CenterOptions, parse_address, run_center
    from fedcare.simulation import new_run_id
    from server.checkpoints import latest_checkpoint
    from shared.config import load_config

    if args.resume:
        run_dir = Path(args.resume)
        for name in ("config.yaml", RUN_FILE):
            if not (run_dir / name).is_file():
                raise InputError(run_dir / name, None, "missing: not a fedcare deployment run folder")
        if latest_checkpoint(run_dir) is None:
            raise InputError(run_dir, "checkpoints", "nothing to resume: no global checkpoint yet (start the run again)")
        cfg = load_config(run_dir / "config.yaml")
        run_id = str(json.loads((run_dir / RUN_FILE).read_text())["run_id"])
        summary_path = run_dir / "summary.json"
        if summary_path.is_file() and json.loads(summary_path.read_text()).get("complete"):
            console.print(f"run {run_id} is already complete ({summary_path})")
            return 0
    else:
        cfg = load_config(args.config)
        if args.rounds:
            cfg.train.rounds = args.rounds
        run_id = new_run_id()
        run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.output_dir) / run_id
    cfg.federation.mode = "deployment"
    if not args.insecure and not Path(args.certs).is_dir():
        raise InputError(args.certs, "--certs", "folder not found (create it with `fedcare certs`, or use --insecure)")
    host, port = parse_address(args.address)
    opts = CenterOptions(cfg=cfg, run_dir=run_dir, run_id=run_id, resume=bool(args.resume),
                         certs=None if args.insecure else Path(args.certs), insecure=args.insecure, host=host, port=port)
    _stop_on_sigterm()
    try:
        summary = run_center(opts, console)
    except RuntimeError as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        return 1
    _print_summary(summary)
    console.print(f"\nrun folder: {run_dir}")
    return 0 if summary.get("complete") else 1


def cmd_client(args: argparse.Namespace) -> int:
    from fedcare.hospital import run_hospital

    _stop_on_sigterm()
    return run_hospital(Path(args.site_config), args.runtime_port, args.max_restarts, console)


def _stop_on_sigterm() -> None:
    """`docker stop` sends SIGTERM: stop our Flower processes as for Ctrl-C."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _print_summary(summary: dict[str, Any]) -> None:
    fw = summary["final_weighted"]
    shown = [summary.get("primary_metric", "auroc")] + [m for m in ("auprc", "brier", "macro_f1", "accuracy") if m in fw]
    parts = ", ".join(f"{m} {_f(fw.get(m))}" for m in dict.fromkeys(shown))
    console.print(f"\n[bold]final global model[/bold] (validation, weighted by site size): {parts}")
    for site, info in summary["sites"].items():
        missed = ", ".join(f"{r} ({s})" for r, s in info.get("rounds_missed", {}).items())
        console.print(f"  {site}: trained rounds {info['rounds_trained']}" + (f"; missed {missed}" if missed else ""))
    for text in summary["events"]:
        console.print(f"  note: {text}")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedcare", description="Federated, privacy-preserving clinical models.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic multi-hospital data")
    s.add_argument("--task", default="events", help="events (= event_mortality) or a task name")
    s.add_argument("--sites", type=int, default=3)
    s.add_argument("--sizes", help="comma-separated stays per site, e.g. 400,250,120")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("simulate", help="run a local federation simulation, then audit the budgets")
    s.add_argument("--config", default=DEFAULT_CONFIG)
    s.add_argument("--rounds", type=int, help="override train.rounds")
    s.add_argument("--output", help="override output_dir (default runs/)")
    s.set_defaults(fn=cmd_simulate)

    s = sub.add_parser("audit", help="verify ledgers and recompute epsilon independently")
    s.add_argument("path", help="a run folder (runs/<id>) or a site's state folder")
    s.add_argument("--public-key", action="append", metavar="SITE=PEM", help="a site's public key (repeatable)")
    s.add_argument("--json", help="also write the audit as JSON here")
    s.add_argument("--plot", help="also write a PNG of cumulative epsilon per round")
    s.set_defaults(fn=cmd_audit)

    s = sub.add_parser("certs", help="deployment key material: CA, SuperLink certificate, per-hospital keys")
    s.add_argument("--out", required=True, help="folder for center/ and sites/<site>/ (existing files are kept)")
    s.add_argument("--server-host", default="localhost", help="comma-separated host names of the SuperLink (127.0.0.1 is added)")
    s.add_argument("--sites", required=True, help="comma-separated hospital names, e.g. hospital_a,hospital_b")
    s.set_defaults(fn=cmd_certs)

    s = sub.add_parser("server", help="coordinating center: SuperLink + one federated run (deployment)")
    s.add_argument("--config", default=DEFAULT_CONFIG)
    s.add_argument("--certs", default="certs", help="the `fedcare certs --out` folder (default: certs)")
    s.add_argument("--insecure", action="store_true", help="development only: no TLS, no SuperNode authentication")
    s.add_argument("--address", default="127.0.0.1:9092", help="HOST:PORT the SuperLink listens on (default 127.0.0.1:9092)")
    s.add_argument("--run-dir", help="run folder (default: <output_dir>/<run-id>)")
    s.add_argument("--rounds", type=int, help="override train.rounds")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last global checkpoint")
    s.set_defaults(fn=cmd_server)

    s = sub.add_parser("client", help="one hospital: a SuperNode that trains on this site's data (deployment)")
    s.add_argument("--site-config", required=True, help="the hospital's site.yaml")
    s.add_argument("--runtime-port", type=int, default=9094, help="local port of the SuperNode's app API (default 9094)")
    s.add_argument("--max-restarts", type=int, help="give up after the SuperNode exited this many times (default: never)")
    s.set_defaults(fn=cmd_client)

    s = sub.add_parser("predict", help="per-patient probabilities for new data from a checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", required=True, help="a site folder in the task's documented format")
    s.add_argument("--encoder", help="the site's fitted encoder (default: the first site's next to the checkpoint)")
    s.add_argument("--out", default="predictions.csv")
    s.set_defaults(fn=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except InputError as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
