"""The `fedcare` command: the composition root (the only place that imports server and client)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from fedcare.configs import resolve_config
from shared.errors import InputError
from shared.io import load_json, write_json, write_text

DEFAULT_CONFIG = "event_mortality"  # a shipped config (fedcare/configs/); a path works too
CONFIG_HELP = "a shipped config name (e.g. retain_aki, sleep_diagnosis) or a YAML path: "
console = Console(highlight=False)


def cmd_synth(args: argparse.Namespace) -> int:
    # only the generators: writing synthetic data needs no loader, task, model or config
    from shared.data.synth import synthesize_sites

    task = {"events": "event_mortality"}.get(args.task, args.task)
    if args.sites < 1:
        raise InputError("<command line>", "--sites", f"must be >= 1, got {args.sites}")
    sizes = _positive_ints(args.sizes, "--sizes", args.sites) if args.sizes else None
    from fedcare.progress import site_by_site

    sites = [f"hospital_{chr(97 + i)}" for i in range(args.sites)]
    site_by_site(lambda: synthesize_sites(task, Path(args.out), sites, args.seed, sizes), Path(args.out), sites,
                 f"writing synthetic {task} sites", console)
    console.print(f"wrote {args.sites} synthetic {task} sites to {args.out}")
    return 0


def _positive_ints(text: str, flag: str, count: int) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError("<command line>", flag, f"expected comma-separated whole numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise InputError("<command line>", flag, f"every value must be > 0, got {text!r}")
    if len(values) != count:
        raise InputError("<command line>", flag, f"expected {count} values (one per site), got {len(values)}")
    return values


def _check_rounds(rounds: int | None) -> None:
    if rounds is not None and rounds < 1:
        raise InputError("<command line>", "--rounds", f"must be >= 1, got {rounds}")


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedcare.audit_run import audit_path
    from fedcare.simulation import simulate
    from shared.config import TABULAR_TASKS, load_config
    from shared.data.splits import site_has_split
    from shared.privacy.audit import audit_table, plot_epsilon, write_audit_json

    _check_rounds(args.rounds)  # before anything is started or written
    cfg = load_config(resolve_config(args.config))
    if args.rounds is not None:
        cfg.train.rounds = args.rounds
    if args.output:
        cfg.output_dir = args.output
    try:
        run_dir, summary = simulate(cfg, verbose=args.verbose)
    except RuntimeError as err:  # e.g. a secure round failed: one line, the run folder keeps what happened
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        return 1
    fw = summary["final_weighted"]
    shown = [summary.get("primary_metric", "auroc")] + [m for m in ("auprc", "brier", "macro_f1", "accuracy") if m in fw]
    parts = ", ".join(f"{m} {_f(fw.get(m))}" for m in dict.fromkeys(shown))
    console.print(f"\n[bold]final global model[/bold] (validation, weighted by site size): {parts}")
    _print_recalibration(summary.get("recalibration"))
    for text in summary["events"]:
        console.print(f"  note: {text}")
    if cfg.task in TABULAR_TASKS or any(site_has_split(Path(cfg.data.root) / s, cfg.task) for s in cfg.data.sites):
        # a fixed test split (tabular tasks always report, "n/a" without one): the final model on the test rows
        from fedcare.evaluate import POOLED_NOTE, evaluate_run, test_table

        console.print(test_table(evaluate_run(run_dir)))
        console.print(f"  {POOLED_NOTE}")
    audits = audit_path(run_dir)
    write_audit_json(audits, run_dir / "audit.json")
    plot_epsilon(audits, run_dir / "epsilon.png")
    console.print("\n[bold]privacy-budget audit[/bold] (recomputed with an independent accountant)")
    console.print(audit_table(audits))
    console.print(f"\nrun folder: {run_dir}")
    return 0 if all(a.status in ("ok", "budget_exhausted") for a in audits) else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fedcare.evaluate import POOLED_NOTE, TEST_METRICS_FILE, evaluate_run, evaluate_site, test_table

    if not args.run:  # one hospital, on its own data: only its aggregate report is printed / written
        if not (args.checkpoint and args.data and args.state):
            raise InputError("<command line>", "--run", "give a run folder, or --checkpoint, --data and --state for one site")
        site = args.site or Path(args.data).name
        report, _ = evaluate_site(Path(args.checkpoint), Path(args.data), Path(args.state), site)
        from server.checkpoints import load_checkpoint
        from shared.config import config_from_dict
        from shared.tasks.registry import build_task

        ckpt = load_checkpoint(Path(args.checkpoint))
        kind = build_task(config_from_dict(ckpt["config"], f"{args.checkpoint} (config)")).kind
        console.print(test_table({"kind": kind, "round": ckpt["round"], "sites": {site: report}}))
        out = Path(args.state) / TEST_METRICS_FILE
        record = {"site": site, "checkpoint": args.checkpoint, "round": ckpt["round"], "report": report}
        write_json(out, record)
        console.print(f"wrote {out}")
        return 0
    run_dir = Path(args.run)
    result = evaluate_run(run_dir, Path(args.checkpoint) if args.checkpoint else None)
    console.print(test_table(result))
    console.print(f"  {POOLED_NOTE}")
    console.print(f"wrote {run_dir / TEST_METRICS_FILE}")
    return 0


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
    site = args.site
    if args.site_config:
        site, key = _site_identity(Path(args.site_config), args.site)
        keys.setdefault(site, key)
    audits = audit_path(Path(args.path), keys, site)
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


def _site_identity(site_yaml: Path, site_flag: str | None) -> tuple[str, Any]:
    """The site name in a site.yaml and the public half of its identity key (it checks the signatures)."""
    from client.site_config import load_site_config
    from shared.privacy.keys import load_private_key

    settings = load_site_config(site_yaml)
    if site_flag is not None and site_flag != settings.site:
        raise InputError("<command line>", "--site", f"{site_flag!r} differs from the site in {site_yaml} ({settings.site!r})")
    if settings.signing_key is None:
        raise InputError(site_yaml, "key", "missing: the site's identity key checks the signatures")
    return settings.site, load_private_key(settings.signing_key).public_key()


def cmd_audit_membership(args: argparse.Namespace) -> int:
    from fedcare.audit_run import membership_audit_at_site
    from shared.privacy.mia import membership_table

    for flag in ("checkpoint", "data", "state"):
        if not getattr(args, flag):
            raise InputError("<command line>", f"--{flag}", "required with --mia")
    audit = membership_audit_at_site(Path(args.checkpoint), Path(args.data), Path(args.state))
    console.print(membership_table(audit))
    if args.json:
        write_json(Path(args.json), audit.to_dict())
    return 1 if audit.auc_bound is not None and audit.auc > audit.auc_bound else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fedcare.predict import (
        describe_calibration,
        parse_horizons,
        patient_tables,
        predict_patient_json,
        predict_to_csv,
        stored_calibration,
    )
    from server.checkpoints import load_checkpoint

    encoder = Path(args.encoder) if args.encoder else None
    if args.patient:
        result = predict_patient_json(Path(args.checkpoint), Path(args.patient), encoder)
        if args.json:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
            return 0
        headline, attention, per_visit = patient_tables(result)
        console.print(f"[bold]{headline}[/bold]")
        console.print(attention)
        console.print(per_visit)
        return 0
    if args.json:
        raise InputError("<command line>", "--json", "only with --patient (--data writes a CSV to --out)")
    n = predict_to_csv(Path(args.checkpoint), Path(args.data), Path(args.out), encoder, parse_horizons(args.horizons))
    console.print(f"wrote {n} predictions to {args.out}")
    cmap = stored_calibration(load_checkpoint(Path(args.checkpoint)))
    if cmap:
        console.print(describe_calibration(cmap))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from fedcare.explain import explain_checkpoint
    from fedcare.progress import progress_bar

    data_dir, state_dir = args.data, args.state
    if getattr(args, "site_config", None):
        from client.site_config import load_site_config

        settings = load_site_config(Path(args.site_config))
        data_dir, state_dir = data_dir or settings.data_dir, state_dir or settings.state_dir
    if not data_dir or not state_dir:
        raise InputError("<command line>", "--data/--state", "give the site's data and state folders (or --site-config)")
    patients = [p.strip() for p in args.patients.split(",") if p.strip()] if args.patients else None
    labels = {"cohort": "cohort importance (patients)", "patients": "explaining patients"}
    with progress_bar(console) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        files = explain_checkpoint(Path(args.checkpoint), Path(data_dir), Path(state_dir), patients,
                                   Path(args.out) if args.out else None, args.n_patients, progress)
    console.print(f"wrote the site's explanation report to {files.folder} ({files.html.name}, {files.markdown.name}, "
                  f"{files.json.name}, {len(files.figures)} figures); it stays at this site")
    return 0


MIMIC_III_TABLES = ("ICUSTAYS", "ADMISSIONS", "PATIENTS", "INPUTEVENTS_MV", "PROCEDUREEVENTS_MV", "PRESCRIPTIONS",
                    "MICROBIOLOGYEVENTS")


def cmd_convert(args: argparse.Namespace) -> int:
    from shared.data.mimic import convert_mimic_iv

    src, out = Path(args.src), Path(args.out)
    if args.source == "mimic-iii":
        found = [t for t in MIMIC_III_TABLES if any(src.glob(f"{t}.csv*"))]
        missing = [t for t in MIMIC_III_TABLES if t not in found]
        have = f"found {', '.join(found) or 'none'} of its tables" + (f", missing {', '.join(missing)}" if missing else "")
        raise InputError(src, "mimic-iii", f"not supported yet ({have}): MIMIC-III keys events by ICUSTAY_ID/ITEMID in "
                                           "upper-case tables without MIMIC-IV's anchor_age; see docs, 'MIMIC-III'")
    if any(src.glob("ICUSTAYS.csv*")):
        raise InputError(src, "mimic-iv", "this folder holds MIMIC-III tables (ICUSTAYS.csv); MIMIC-IV has hosp/ and icu/")
    if out.exists() and any(out.iterdir()):
        raise InputError(out, "OUT", "exists and is not empty: give a new folder (nothing is overwritten)")
    site_map = Path(args.site_map) if args.site_map else None
    counts = convert_mimic_iv(src, out, site_by=args.site_by, site_map=site_map, min_stays=args.min_stays)
    for site, n in counts.items():
        console.print(f"  {site}: {n} stays")
    console.print(f"wrote {len(counts)} event_mortality sites to {out} (data.root: {out}, data.sites: {list(counts)})")
    return 0


def cmd_reference_stats(args: argparse.Namespace) -> int:
    """Public {mean, sd} per omics feature for a run config's data.standardize (never run on a site's patients)."""
    import yaml

    from shared.data.omics import read_public_omics, reference_stats

    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    values = read_public_omics(Path(args.table), features)
    if args.log1p and (values.to_numpy() < 0).any():
        raise InputError(args.table, None, "negative values: --log1p needs values >= 0")
    stats = reference_stats(values, args.log1p)
    left_out = [c for c in values.columns if c not in stats]
    text = yaml.safe_dump({"data": {"standardize": stats}}, sort_keys=False)
    if args.out:
        write_text(Path(args.out), text)
        console.print(f"wrote {len(stats)} features' {{mean, sd}} to {args.out}")
    else:
        print(text, end="")
    if left_out:
        console.print(f"[yellow]left out (never observed or constant): {', '.join(left_out[:10])}[/yellow]")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from fedcare.audit_run import audit_path
    from server.report import write_run_report

    run_dir = Path(args.run_dir)
    audits = None
    if not (run_dir / "audit.json").is_file() and run_dir.is_dir():
        try:
            audits = [{**asdict(a), "path": str(a.path)} for a in audit_path(run_dir)]
        except InputError as err:  # no ledgers: the report says so
            console.print(f"[yellow]no privacy audit: {err}[/yellow]")
    out = write_run_report(run_dir, Path(args.out) if args.out else None, audits)
    console.print(f"wrote {out}")
    return 0


def cmd_client_approve(args: argparse.Namespace) -> int:
    """Show the operator what the run will do at this site; record its hash in the policy if they agree."""
    from shared.config import load_config
    from shared.privacy.code_bundle import installed_digest
    from shared.privacy.roster import load_roster
    from shared.privacy.security_log import log_security_event
    from shared.privacy.site_policy import (
        SitePolicy,
        approve_run,
        config_violations,
        load_site_policy,
        run_hash,
        save_site_policy,
    )
    from shared.privacy.whitelist import ALLOWED_METRICS
    from shared.tasks.registry import build_task

    policy_path = Path(args.policy)
    if policy_path.exists():
        policy = load_site_policy(policy_path)
    else:
        console.print(f"[cyan]{policy_path} does not exist: starting from the strict default policy[/cyan]")
        policy = SitePolicy(source=str(policy_path))
    config_path = resolve_config(args.config)  # the operator sees which file a name picked
    cfg = load_config(config_path)
    site = args.site or policy.site or cfg.data.sites[0]
    model = build_task(cfg).build_model()
    parameters = sum(p.numel() for p in model.parameters())
    code = installed_digest()  # this site's installed code: a run's bundle must be identical to it
    digest = run_hash(cfg, code)
    roster = load_roster(Path(args.roster)) if args.roster else None
    p = cfg.privacy
    console.print(f"[bold]run to approve[/bold] ({config_path}) for site {site}")
    console.print(f"  task:          {cfg.task}")
    console.print(f"  model:         {cfg.model.name}, {parameters:,} parameters")
    console.print(f"  rounds:        {cfg.train.rounds} x {cfg.train.local_epochs} local epoch(s), batch {cfg.train.batch_size}")
    if cfg.pretrain.enabled:
        console.print(f"  pretraining:   {cfg.pretrain.rounds} x {cfg.pretrain.local_epochs} local epoch(s) first (same budget)")
    console.print(f"  strategy:      {cfg.strategy.name}")
    console.print(
        f"  privacy:       DP-SGD {'on' if p.enabled else 'OFF'}, epsilon {cfg.site_target_epsilon(site):g} "
        f"at delta {p.delta:g}, clip norm {p.max_grad_norm:g}, accountant {p.accountant}"
    )
    console.print(f"  leaves site:   the model's {len(model.state_dict())} weight arrays after each round, and the scalars")
    console.print(f"                 {', '.join(sorted(m for m in ALLOWED_METRICS if '_ci_' not in m))} (+ confidence bounds)")
    if roster is not None:
        console.print(f"  roster:        {', '.join(sorted(roster.sites))} ({roster.digest()})")
    console.print(f"  code:          {code} (the installed fedcare packages)")
    console.print(f"  run hash:      {digest}")
    problems = config_violations(policy, cfg, site)
    if problems:
        for problem in problems:
            console.print(f"[red]  breaks the site policy: {problem}[/red]")
        console.print("[red]not approved[/red]")
        return 1
    if not args.yes and input("approve this run? [y/N] ").strip().lower() not in ("y", "yes"):
        console.print("not approved")
        return 1
    record = approve_run(policy, cfg, digest, parameters, code, roster.digest() if roster is not None else None)
    save_site_policy(policy, policy_path)
    if args.state_dir:
        log_security_event(Path(args.state_dir), {"kind": "approval", "site": site, **record})
    console.print(f"approved: {digest} recorded in {policy_path}")
    return 0


def cmd_client_policy(args: argparse.Namespace) -> int:
    import yaml

    from shared.privacy.site_policy import load_site_policy

    policy = load_site_policy(Path(args.policy))
    console.print(f"[bold]site policy in force[/bold] ({args.policy})")
    console.print(yaml.safe_dump(policy.to_dict(), sort_keys=False), end="")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from fedcare.certs import DeploymentPaths, parse_hosts, write_deployment_keys

    report = write_deployment_keys(Path(args.out), parse_hosts(args.server_host))
    for old, new in report.moved:
        console.print(f"  moved the CA key {old} -> {new} (out of the center's runtime folder)")
    for path in report.written:
        console.print(f"  wrote {path}")
    if report.kept:
        console.print(f"  kept {len(report.kept)} existing files")
    paths = DeploymentPaths(Path(args.out))
    console.print(f"center material in {paths.center} (mount this one into the center); keep {paths.ca_dir} offline.\n"
                  f"Each hospital runs `fedcare client init` and sends you its public/ folder; give it {paths.ca_cert}; "
                  f"then `fedcare roster --certs {args.out} --public-keys ...`")
    return 0


def cmd_roster(args: argparse.Namespace) -> int:
    from fedcare.certs import assemble_roster

    roster, report = assemble_roster(Path(args.certs), [Path(d) for d in args.public_keys],
                                     Path(args.out) if args.out else None)
    for path in report.written:
        console.print(f"  wrote {path}")
    for path in report.removed:
        console.print(f"  removed {path} (no longer on the roster)")
    console.print(f"roster of {len(roster.sites)} sites ({', '.join(sorted(roster.sites))}), digest {roster.digest()[:16]}: "
                  "send roster.yaml to every hospital")
    return 0


def cmd_client_init(args: argparse.Namespace) -> int:
    from fedcare.site_keys import init_site_keys

    report = init_site_keys(args.site, Path(args.out))
    for path in report.written:
        console.print(f"  wrote {path}")
    for path in report.kept:
        console.print(f"  kept {path}")
    console.print(f"keys of {args.site} in {args.out}: the private keys (0600) never leave it; "
                  f"send only {report.paths.public} to the center")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from fedcare.center import RUN_FILE
    from fedcare.run_lock import claim_run_dir, release_run_dir
    from fedcare.simulation import new_run_id
    from shared.config import load_config

    _check_rounds(args.rounds)
    if args.resume:
        run_dir = Path(args.resume)
        for name in ("config.yaml", RUN_FILE):
            if not (run_dir / name).is_file():
                raise InputError(run_dir / name, None, "missing: not a fedcare deployment run folder")
        cfg, run_id = None, ""
    else:
        cfg, run_id = load_config(resolve_config(args.config)), new_run_id()
        run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.output_dir) / run_id
    claim_run_dir(run_dir)  # refused while a SuperLink or ServerApp of this run is alive
    try:
        return _serve(args, run_dir, cfg, run_id)
    finally:
        release_run_dir(run_dir)


def _serve(args: argparse.Namespace, run_dir: Path, cfg: Any, run_id: str) -> int:
    from fedcare.center import RUN_FILE, CenterOptions, parse_address, run_center
    from server.checkpoints import latest_checkpoint
    from shared.config import load_config

    if args.resume:
        if latest_checkpoint(run_dir) is None:
            raise InputError(run_dir, "checkpoints", "nothing to resume: no global checkpoint yet (start the run again)")
        cfg = load_config(run_dir / "config.yaml")
        if cfg.secure_aggregation.enabled:  # Flower's legacy SecAgg+ workflow numbers its rounds from 1
            raise InputError(run_dir / "config.yaml", "secure_aggregation.enabled",
                             "a run with secure aggregation cannot be resumed")
        run_id = str(load_json(run_dir / RUN_FILE)["run_id"])
        summary_path = run_dir / "summary.json"
        if summary_path.is_file() and load_json(summary_path).get("complete"):
            console.print(f"run {run_id} is already complete ({summary_path})")
            return 0
    elif args.rounds is not None:
        cfg.train.rounds = args.rounds
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

    if not args.site_config:
        raise InputError("<command line>", "--site-config", "give the hospital's site.yaml (or use `client init|approve|policy`)")
    _stop_on_sigterm()
    health_port = args.health_port or None  # 0: no health endpoint
    return run_hospital(Path(args.site_config), args.runtime_port, args.max_restarts, console, health_port)


def _stop_on_sigterm() -> None:
    """`docker stop` sends SIGTERM: stop our Flower processes as for Ctrl-C."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _print_recalibration(recal: dict[str, Any] | None) -> None:
    if recal and recal.get("map"):
        console.print(f"calibration: ECE {_f(recal.get('ece_before'))} -> {_f(recal.get('ece_after'))} after {recal['method']} "
                      f"recalibration (fitted at the center on {recal['fitted_on']}, no privacy cost; stored with the "
                      "checkpoints, `fedcare predict` applies it)")


def _print_summary(summary: dict[str, Any]) -> None:
    fw = summary["final_weighted"]
    shown = [summary.get("primary_metric", "auroc")] + [m for m in ("auprc", "brier", "macro_f1", "accuracy") if m in fw]
    parts = ", ".join(f"{m} {_f(fw.get(m))}" for m in dict.fromkeys(shown))
    console.print(f"\n[bold]final global model[/bold] (validation, weighted by site size): {parts}")
    _print_recalibration(summary.get("recalibration"))
    for site, info in summary["sites"].items():
        missed = ", ".join(f"{r} ({s})" for r, s in info.get("rounds_missed", {}).items())
        console.print(f"  {site}: trained rounds {info['rounds_trained']}" + (f"; missed {missed}" if missed else ""))
    for text in summary["events"]:
        console.print(f"  note: {text}")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def package_version() -> str:
    """The installed distribution's version; from pyproject.toml when run from an uninstalled checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedcare")
    except PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"] if pyproject.is_file() else "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedcare", description="Federated, privacy-preserving clinical models.")
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic multi-hospital data")
    s.add_argument("--task", default="events", help="events (= event_mortality) or a task name")
    s.add_argument("--sites", type=int, default=3, help="number of hospitals (hospital_a, hospital_b, ...)")
    s.add_argument("--sizes", help="comma-separated patients per site, e.g. 400,250,120 (default: the task's sizes)")
    s.add_argument("--seed", type=int, default=0, help="random seed of the synthetic data")
    s.add_argument("--out", required=True, help="folder that receives one sub-folder per site")
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("simulate", help="run a local federation simulation, then audit the budgets")
    s.add_argument("--config", default=DEFAULT_CONFIG, help=CONFIG_HELP + "the run (task, data, model, training, privacy)")
    s.add_argument("--rounds", type=int, help="override train.rounds")
    s.add_argument("--output", help="override output_dir (the config's, runs/ by default)")
    s.add_argument("--verbose", action="store_true", help="also show Flower's and Ray's own log lines and warnings")
    s.set_defaults(fn=cmd_simulate)

    s = sub.add_parser("evaluate", help="test metrics of a run's final model on the sites' fixed test splits")
    s.add_argument("--run", help="a run folder (runs/<id>): every site of a simulation, and pooled")
    s.add_argument("--checkpoint", help="another checkpoint of the run (default: the last round's); without --run: "
                                        "the checkpoint to score at one site")
    s.add_argument("--data", help="without --run: this site's data folder")
    s.add_argument("--state", help="without --run: this site's state folder (the report and baseline hazard go there)")
    s.add_argument("--site", help="without --run: the site's name (default: the data folder's name)")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("audit", help="verify ledgers and recompute epsilon independently; --mia: membership inference")
    s.add_argument("path", nargs="?", help="a run folder (runs/<id>) or a site's state folder")
    s.add_argument("--mia", action="store_true", help="loss-threshold membership inference at a site, beside its epsilon")
    s.add_argument("--checkpoint", help="with --mia: a global checkpoint (runs/<id>/checkpoints/round_N.pt)")
    s.add_argument("--data", help="with --mia: the site's data folder")
    s.add_argument("--state", help="with --mia: the site's state folder (encoder, ledger)")
    s.add_argument("--public-key", action="append", metavar="SITE=PEM", help="a site's public key (repeatable)")
    s.add_argument("--site", help="the site's name when PATH is one site's state folder")
    s.add_argument("--site-config", help="the site's site.yaml when PATH is its state folder: its name and identity key")
    s.add_argument("--json", help="also write the audit as JSON here")
    s.add_argument("--plot", help="also write a PNG of cumulative epsilon per round")
    s.set_defaults(fn=cmd_audit)

    s = sub.add_parser("certs", help="the center's key material: CA (kept offline) and the SuperLink certificate")
    s.add_argument("--out", required=True, help="folder for ca/ (offline) and center/ (existing files are kept)")
    s.add_argument("--server-host", default="localhost", help="comma-separated host names of the SuperLink (127.0.0.1 is added)")
    s.set_defaults(fn=cmd_certs)

    s = sub.add_parser("roster", help="the federation roster and the center's copies of the hospitals' public keys")
    s.add_argument("--certs", required=True, help="the `fedcare certs --out` folder (writes into its center/)")
    s.add_argument("--public-keys", nargs="+", required=True, metavar="DIR",
                   help="each hospital's public/ folder from `fedcare client init`")
    s.add_argument("--out", help="roster file (default: CERTS/center/roster.yaml)")
    s.set_defaults(fn=cmd_roster)

    s = sub.add_parser("server", help="coordinating center: SuperLink + one federated run (deployment)")
    s.add_argument("--config", default=DEFAULT_CONFIG, help=CONFIG_HELP + "the run the hospitals approved")
    s.add_argument("--certs", default="certs", help="the `fedcare certs --out` folder ")
    s.add_argument("--insecure", action="store_true", help="development only: no TLS, no SuperNode authentication")
    s.add_argument("--address", default="127.0.0.1:9092", help="HOST:PORT the SuperLink listens on")
    s.add_argument("--run-dir", help="run folder (default: <output_dir>/<run-id>)")
    s.add_argument("--rounds", type=int, help="override train.rounds")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last global checkpoint")
    s.set_defaults(fn=cmd_server)

    client = s = sub.add_parser(
        "client", help="one hospital: start its SuperNode (--site-config); `client init|approve|policy`"
    )
    s.add_argument("--site-config", help="the hospital's site.yaml (starts the site's SuperNode)")
    s.add_argument("--runtime-port", type=int, default=9094, help="local port of the SuperNode's app API")
    s.add_argument("--health-port", type=int, default=9095,
                   help="local port of GET /health: 200 only while the SuperNode runs and reaches the SuperLink (0: off)")
    s.add_argument("--max-restarts", type=int, help="give up after the SuperNode exited this many times (default: never)")
    s.set_defaults(fn=cmd_client)

    s = sub.add_parser("predict", help="per-patient probabilities (binary) or risk scores (survival) from a checkpoint")
    s.add_argument("--checkpoint", required=True, help="a global checkpoint (runs/<id>/checkpoints/round_N.pt)")
    new_data = s.add_mutually_exclusive_group(required=True)
    new_data.add_argument("--data", help="a site folder in the task's documented format (predictions go to --out)")
    new_data.add_argument("--patient", help="retain_aki: one new patient's visits as JSON; prints probability, alpha, beta")
    s.add_argument("--encoder", help="the site's fitted encoder (default: the first site's next to the checkpoint)")
    s.add_argument("--out", default="predictions.csv", help="with --data: the CSV written")
    s.add_argument("--json", action="store_true", help="with --patient: print the result as JSON instead of tables")
    s.add_argument("--horizons", help="survival: comma-separated times, e.g. 365,730: also survival_<h> columns from "
                                      "the site's baseline hazard (--encoder = that site's state folder)")
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("explain", help="explain a checkpoint on a site's data; the report stays at the site")
    s.add_argument("--checkpoint", required=True, help="a global checkpoint (runs/<id>/checkpoints/round_N.pt)")
    site_config_available = importlib.util.find_spec("client.site_config") is not None
    site_help = " (or from --site-config)" if site_config_available else ""
    s.add_argument("--data", required=not site_config_available, help=f"the site's data folder{site_help}")
    s.add_argument("--state", required=not site_config_available,
                   help=f"the site's state folder: fitted encoders; the report goes to its explanations/{site_help}")
    if site_config_available:
        s.add_argument("--site-config", help="the site's site.yaml: data_dir and state_dir are read from it")
    s.add_argument("--patients", help="comma-separated patient ids (default: the highest predicted risks)")
    s.add_argument("--n-patients", type=int,
                   help="how many patients when --patients is not given (default: the run's explain.patients)")
    s.add_argument("--out", help="report folder (default: STATE/explanations/<run>_round_<N>/)")
    s.set_defaults(fn=cmd_explain)

    s = sub.add_parser("convert", help="convert a public clinical database into site folders (MIMIC-IV -> event_mortality)")
    s.add_argument("source", choices=["mimic-iv", "mimic-iii"], help="the database the SRC folder holds")
    s.add_argument("src", help="the database folder (MIMIC-IV: hosp/ and icu/, csv or csv.gz)")
    s.add_argument("out", help="a new folder: one event_mortality site folder per unit (or per --site-map site)")
    s.add_argument("--site-by", default="first_careunit",
                   help="stay column that splits stays into sites (first_careunit, admission_type, insurance, ...)")
    s.add_argument("--site-map", help="CSV with site and subject_id or stay_id: assigns stays (or patients) to sites")
    s.add_argument("--min-stays", type=int, default=1, help="sites with fewer stays are not written")
    s.set_defaults(fn=cmd_convert)

    s = sub.add_parser("reference-stats",
                       help="public {mean, sd} per omics feature of a PUBLIC table, for data.standardize (YAML)")
    s.add_argument("table", help="a public omics table in the omics.csv format (patient_id + one column per feature)")
    s.add_argument("--features", help="comma-separated columns (default: every column but patient_id)")
    s.add_argument("--log1p", action="store_true", help="statistics on the log1p scale (runs with model.log1p true)")
    s.add_argument("--out", help="write the YAML here instead of printing it")
    s.set_defaults(fn=cmd_reference_stats)

    s = sub.add_parser("report", help="write a self-contained HTML report of a run (opens offline)")
    s.add_argument("run_dir", help="a run folder (runs/<id>)")
    s.add_argument("--out", help="HTML path (default RUN_DIR/report.html; figures go to a folder beside it)")
    s.set_defaults(fn=cmd_report)

    client_sub = client.add_subparsers(dest="client_command", required=False)
    s = client_sub.add_parser("approve", help="show what a run will do at this site and record its hash as approved")
    s.add_argument("--policy", required=True, help="the site policy YAML (created with strict defaults if absent)")
    s.add_argument("--config", default=DEFAULT_CONFIG, help=CONFIG_HELP + "the run the coordinator sent")
    s.add_argument("--site", help="this site's name (default: the policy's site, else the config's first site)")
    s.add_argument("--roster", help="the federation roster this approval pins (the site.yaml's roster:)")
    s.add_argument("--state-dir", help="the site's state folder: also log the approval in its security log")
    s.add_argument("--yes", action="store_true", help="approve without asking")
    s.set_defaults(fn=cmd_client_approve)
    s = client_sub.add_parser("init", help="create this hospital's keys here; only DIR/public/ goes to the center")
    s.add_argument("--site", required=True, help="this hospital's site name")
    s.add_argument("--out", required=True, help="folder for the keys (private keys 0600; existing keys are kept)")
    s.set_defaults(fn=cmd_client_init)
    s = client_sub.add_parser("policy", help="print the site policy in force")
    s.add_argument("--policy", required=True, help="the site policy YAML")
    s.set_defaults(fn=cmd_client_policy)
    _show_defaults(p)
    return p


def subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (nested) subcommand parser of `parser`."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += [child, *subcommand_parsers(child)]
    return found


class _DefaultsShown(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help when it has a default and its help names none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS or "default" in text or action.required:
            return text
        return f"{text} (default: %(default)s)"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    for child in subcommand_parsers(parser):
        child.formatter_class = _DefaultsShown


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except InputError as err:
        from rich.markup import escape

        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)  # a column may be named "creatinine [mg/dL]"
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
