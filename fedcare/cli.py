"""The `fedcare` command: the composition root (the only place that imports server and client)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    console.print(f"\n[bold]final global model[/bold]: weighted validation AUROC {_f(fw.get('auroc'))}, "
                  f"AUPRC {_f(fw.get('auprc'))}, Brier {_f(fw.get('brier'))}")
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
    if args.mia:
        return cmd_audit_membership(args)
    if not args.path:
        raise InputError("<command line>", "path", "give a run folder or a site state folder (or --mia ...)")
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


def cmd_audit_membership(args: argparse.Namespace) -> int:
    from fedcare.audit_run import membership_audit_at_site
    from shared.privacy.atomic_write import write_atomically
    from shared.privacy.mia import membership_table

    for flag in ("checkpoint", "data", "state"):
        if not getattr(args, flag):
            raise InputError("<command line>", f"--{flag}", "required with --mia")
    audit = membership_audit_at_site(Path(args.checkpoint), Path(args.data), Path(args.state))
    console.print(membership_table(audit))
    if args.json:
        write_atomically(Path(args.json), json.dumps(audit.to_dict(), indent=1).encode())
    return 1 if audit.auc_bound is not None and audit.auc > audit.auc_bound else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fedcare.predict import predict_to_csv

    n = predict_to_csv(Path(args.checkpoint), Path(args.data), Path(args.out), Path(args.encoder) if args.encoder else None)
    console.print(f"wrote {n} predictions to {args.out}")
    return 0


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

    s = sub.add_parser("audit", help="verify ledgers and recompute epsilon independently; --mia: membership inference")
    s.add_argument("path", nargs="?", help="a run folder (runs/<id>) or a site's state folder")
    s.add_argument("--mia", action="store_true", help="loss-threshold membership inference at a site, beside its epsilon")
    s.add_argument("--checkpoint", help="with --mia: a global checkpoint (runs/<id>/checkpoints/round_N.pt)")
    s.add_argument("--data", help="with --mia: the site's data folder")
    s.add_argument("--state", help="with --mia: the site's state folder (encoder, ledger)")
    s.add_argument("--public-key", action="append", metavar="SITE=PEM", help="a site's public key (repeatable)")
    s.add_argument("--json", help="also write the audit as JSON here")
    s.add_argument("--plot", help="also write a PNG of cumulative epsilon per round")
    s.set_defaults(fn=cmd_audit)

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
