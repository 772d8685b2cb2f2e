"""Independent verification of site privacy ledgers: chain, signatures, round order, and epsilon
recomputed at every line with Google's dp-accounting (not the Opacus code the sites trained with).

Cross-checks, so a ledger cannot simply be rewritten and re-signed with the site's key:
- every trained line's mechanism against its recorded dataset size: q = 1 / ceil(n / B) and
  steps = epochs x ceil(n / B) (Poisson sampling as Opacus does it);
- with the center's record of the run (`RunRecord`, from the run folder): the run's lines against its
  config (batch size, epochs, rounds, delta, clip norm) and against what the site reported each round
  (num-examples, noise multiplier, sample rate, steps), and the ledger head hash the site sent with each
  train reply: a head that is no line of the ledger means it was replaced (an older copy), truncated or
  rewritten after that round.
Rounds trained without DP (status no_dp) make epsilon unbounded (inf; audit status "no_dp"); rounds with
DP randomness reproducible from the config are "reproducible_noise": not private against the center.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.errors import InputError
from shared.io import write_json
from shared.privacy.accountant import ACCOUNTANTS, Mechanism, epsilon_independent, merged_history
from shared.privacy.keys import load_public_key, public_key_fingerprint
from shared.privacy.ledger import (
    BUDGET_EXHAUSTED,
    COUNT_PHASE,
    GENESIS_HASH,
    LEDGER_STATUSES,
    LEDGER_VERSION,
    NO_AGGREGATE,
    NO_DP,
    TRAINED,
    line_hash,
    mechanism_from_entry,
    read_ledger_lines,
    signed_payload,
)
from shared.privacy.security_log import SECURITY_LOG_FIELDS, SECURITY_LOG_VERSION

AUDIT_STATUSES = (
    "ok", "budget_exhausted", "reproducible_noise", "no_dp", "over_budget", "mismatch", "tampered", "unreadable",
)
# Worst first: an audit's status is the worst kind of problem found in a readable ledger.
PROBLEM_KINDS = ("tampered", "mismatch", "over_budget", "no_dp", "reproducible_noise")
NOT_PRIVATE_AGAINST_CENTER = "not private against the center"
REQUIRED_FIELDS = (
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
    "prev_hash",
)
# Opacus's PRV accountant reports an upper bound within eps_error=0.01 of the estimate; dp-accounting's
# PLD accountant has its own discretisation error: allow this much absolute slack on top of `tolerance`.
_PRV_ABSOLUTE_SLACK = 0.02
EVALUATION_PHASE = "evaluate"


@dataclass
class LedgerAudit:
    """The verdict on one site's ledger. `epsilon_by_entry` is the recorded cumulative epsilon per line."""

    site: str
    path: Path
    entries: int
    rounds_trained: int
    recorded_epsilon: float
    recomputed_epsilon: float
    delta: float | None
    lifetime_epsilon: float | None
    target_epsilon: float | None
    status: str
    problems: list[str] = field(default_factory=list)
    epsilon_by_entry: list[float] = field(default_factory=list)
    evaluation_releases: int = 0  # DP evaluation releases (counted in the epsilons above)
    evaluation_epsilon: float = 0.0  # the evaluation releases' epsilon alone (dp-accounting), at the last delta


def _is_evaluation(entry: dict) -> bool:
    """A DP evaluation release (client/site_worker.py): status trained, extra.phase "evaluate"."""
    extra = entry.get("extra")
    return isinstance(extra, dict) and extra.get("phase") == EVALUATION_PHASE


def _is_count(entry: dict) -> bool:
    """The run's noisy training count (client/site_worker.py): status trained, extra.phase "count"."""
    extra = entry.get("extra")
    return isinstance(extra, dict) and extra.get("phase") == COUNT_PHASE


@dataclass
class RunRecord:
    """What the center kept of one run, for one site: the run's config (as in the run folder's
    config.yaml), and per round what the site reported with its train reply (metrics.json)."""

    run_id: str
    config: dict
    rounds: dict[int, dict] = field(default_factory=dict)  # round -> {"train": {...}, "ledger_head": "..."}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entry_shape_problem(entry: dict) -> str | None:
    """What is wrong with an entry's fields, or None."""
    missing = [name for name in REQUIRED_FIELDS if name not in entry]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if entry["version"] != LEDGER_VERSION:
        return f"unsupported ledger version {entry['version']!r}"
    if entry["status"] not in LEDGER_STATUSES:
        return f"unknown status {entry['status']!r}"
    if entry["accountant"] not in ACCOUNTANTS:
        return f"unknown accountant {entry['accountant']!r}"
    if not isinstance(entry["round"], int) or isinstance(entry["round"], bool):
        return "round is not an integer"
    for name in ("delta", "max_grad_norm"):
        if not _is_number(entry[name]):
            return f"{name} is not a finite number"
    for name in ("cumulative_epsilon", "lifetime_epsilon"):
        if entry[name] is not None and not _is_number(entry[name]):
            return f"{name} is not a finite number or null (unbounded)"
    if not 0 < entry["delta"] < 1:
        return f"delta {entry['delta']} is not in (0, 1)"
    return None


def _signature_problem(entry: dict, public_key: Ed25519PublicKey, fingerprint: str) -> str | None:
    """Why the entry is not signed by `public_key`, or None."""
    if "signature" not in entry:
        return "not signed"
    if entry.get("key_fingerprint") != fingerprint:
        return f"signed by key {entry.get('key_fingerprint')!r}, not this site's key {fingerprint!r}"
    try:
        public_key.verify(bytes.fromhex(str(entry["signature"])), signed_payload(entry))
    except (InvalidSignature, ValueError):
        return "signature does not verify (the entry was changed or signed by another key)"
    return None


def _integrity_problems(
    entry: dict,
    expected_prev_hash: str,
    previous: str,
    site: str,
    signer: tuple[Ed25519PublicKey, str] | None,
    last_round_by_run: dict[str, int],
) -> list[str]:
    """What breaks the chain, the signature, the site or the round order at this entry (updates
    `last_round_by_run`)."""
    problems = []
    if entry["prev_hash"] != expected_prev_hash:
        problems.append(
            f"hash chain broken, prev_hash does not match {previous} (a line was changed, deleted or reordered)"
        )
    if entry["site"] != site:
        problems.append(f"entry of site {entry['site']!r}, expected {site!r}")
    if signer is not None:
        signature_problem = _signature_problem(entry, *signer)
        if signature_problem is not None:
            problems.append(signature_problem)
    run_id, round_number = str(entry["run_id"]), entry["round"]
    marker = entry["status"] == NO_AGGREGATE and round_number == last_round_by_run.get(run_id)  # follows its round
    if _is_evaluation(entry):  # a run's evaluation releases have their own increasing rounds
        run_id += " (evaluation)"
    elif _is_count(entry):  # the run's count release comes before the training entry of its round
        run_id += " (count)"
    if run_id in last_round_by_run and round_number <= last_round_by_run[run_id] and not marker:
        problems.append(
            f"round {round_number} of run {run_id!r} comes after its round {last_round_by_run[run_id]} "
            "(lines out of order or repeated)"
        )
    last_round_by_run[run_id] = round_number
    return problems


def audit_ledger(
    path: Path,
    public_key: Ed25519PublicKey | None = None,
    target_epsilon: float | None = None,
    tolerance: float = 0.01,
    expected_site: str | None = None,
    run: RunRecord | None = None,
) -> LedgerAudit:
    """Verify one ledger line by line and recompute its epsilon independently.

    Checks: every line is a complete JSON entry; the hash chain (a changed, deleted or reordered line
    breaks it); the signature and key fingerprint when `public_key` is given; one site throughout
    (`expected_site`, else the first line's); increasing rounds within a run; the recorded cumulative
    epsilon against dp-accounting over the history up to that line (relative `tolerance`); epsilon
    against the lifetime budget and `target_epsilon`. Deleting the newest lines cannot be seen from
    the file alone; with `run` (the center's record) it can: see the module docstring.
    """
    path = Path(path)
    audit = LedgerAudit(
        site=expected_site or "?",
        path=path,
        entries=0,
        rounds_trained=0,
        recorded_epsilon=0.0,
        recomputed_epsilon=0.0,
        delta=None,
        lifetime_epsilon=None,
        target_epsilon=target_epsilon,
        status="ok",
    )
    try:
        lines = read_ledger_lines(path) if path.exists() else None
    except (OSError, UnicodeDecodeError) as error:
        audit.status, audit.problems = "unreadable", [f"cannot read the ledger ({error})"]
        return audit
    if lines is None:
        audit.status, audit.problems = "unreadable", ["ledger file not found"]
        return audit

    signer = (public_key, public_key_fingerprint(public_key)) if public_key is not None else None
    kinds_found: set[str] = set()
    site = expected_site
    history: list[Mechanism] = []
    evaluation_history: list[Mechanism] = []
    count_releases = 0  # the run's noisy training count: a release, not a training round
    recomputed_cache: dict[tuple, float] = {}
    last_round_by_run: dict[str, int] = {}
    last_entry: dict | None = None
    limits_exceeded: set[str] = set()  # each limit is reported at the first line that exceeds it
    without_dp = False  # a no_dp line was seen: epsilon is unbounded from there on
    parsed: list[tuple[int, dict]] = []

    def report(kind: str, number: int, problem: str) -> None:
        kinds_found.add(kind)
        audit.problems.append(f"line {number}: {problem}")

    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            report("tampered", number, "not valid JSON (corrupted or truncated)")
            continue
        shape_problem = _entry_shape_problem(entry) if isinstance(entry, dict) else "not a JSON object"
        if shape_problem is not None:
            report("tampered", number, shape_problem)
            continue
        site = site or entry["site"]
        expected_prev_hash = line_hash(lines[number - 2]) if number > 1 else GENESIS_HASH
        previous = f"line {number - 1}" if number > 1 else "the start of the ledger"
        for problem in _integrity_problems(
            entry, expected_prev_hash, previous, site, signer, last_round_by_run
        ):
            report("tampered", number, problem)

        try:
            mechanism = mechanism_from_entry(entry)
        except ValueError as error:
            report("tampered", number, str(error))
            mechanism = None
        if entry["status"] == TRAINED:
            if mechanism is None:
                report("tampered", number, "trained entry without a valid mechanism")
            else:
                history.append(mechanism)
                if _is_evaluation(entry):
                    evaluation_history.append(mechanism)
                elif _is_count(entry):
                    count_releases += 1
                problem = mechanism_problem(entry, mechanism)
                if problem is not None:
                    report("mismatch", number, problem)
        extra = entry.get("extra") if isinstance(entry.get("extra"), dict) else {}
        if entry["status"] == NO_DP:
            without_dp = True
            report("no_dp", number, f"round {entry['round']} of run {entry['run_id']!r} trained without differential "
                   "privacy: epsilon is unbounded (inf) from here on")
        if extra.get("reproducible_noise"):
            report("reproducible_noise", number, "DP randomness seeded from the run config "
                   f"(privacy.reproducible_noise): {NOT_PRIVATE_AGAINST_CENTER}")
        parsed.append((number, entry))

        accountant, delta = entry["accountant"], float(entry["delta"])
        cache_key = (tuple(merged_history(history)), delta, accountant)
        if cache_key not in recomputed_cache:
            recomputed_cache[cache_key] = epsilon_independent(history, delta, accountant)
        recomputed = math.inf if without_dp else recomputed_cache[cache_key]
        recorded = math.inf if entry["cumulative_epsilon"] is None else float(entry["cumulative_epsilon"])
        slack = _PRV_ABSOLUTE_SLACK if accountant == "prv" else 0.0
        if math.isinf(recorded) or math.isinf(recomputed):
            if recorded != recomputed:
                report("mismatch", number, f"recorded cumulative epsilon {recorded:.6g}, but the history "
                       f"{'has' if without_dp else 'has no'} round without DP (recomputed {recomputed:.6g})")
        elif abs(recorded - recomputed) > tolerance * recomputed + slack + 1e-12:
            report(
                "mismatch",
                number,
                f"recorded cumulative epsilon {recorded:.6g} differs from the independent recomputation "
                f"{recomputed:.6g} (dp-accounting, {accountant}, delta {delta:g}) by more than {tolerance:.0%}",
            )
        for limit, name in (
            (None if entry["lifetime_epsilon"] is None else float(entry["lifetime_epsilon"]), "lifetime budget"),
            (target_epsilon, "target"),
        ):
            if limit is None or name in limits_exceeded or without_dp:  # no_dp is reported as such
                continue
            if recorded > limit + 1e-9 or recomputed > limit * (1 + tolerance) + slack + 1e-9:
                report(
                    "over_budget",
                    number,
                    f"epsilon {recorded:.6g} (recomputed {recomputed:.6g}) exceeds the {name} {limit:g}",
                )
                limits_exceeded.add(name)
        audit.epsilon_by_entry.append(recorded)
        audit.recomputed_epsilon = recomputed
        last_entry = entry

    if run is not None:
        for kind, number, problem in run_problems(parsed, lines, site or "?", run):
            report(kind, number, problem)
    rounds_without_dp = sum(entry["status"] == NO_DP for _, entry in parsed)
    audit.site, audit.entries = site or "?", len(lines)
    audit.rounds_trained = len(history) - len(evaluation_history) - count_releases + rounds_without_dp
    audit.evaluation_releases = len(evaluation_history)
    if last_entry is not None:
        audit.recorded_epsilon = math.inf if without_dp else float(last_entry["cumulative_epsilon"])
        audit.delta = float(last_entry["delta"])
        audit.evaluation_epsilon = epsilon_independent(evaluation_history, audit.delta, last_entry["accountant"])
        lifetime = last_entry["lifetime_epsilon"]
        audit.lifetime_epsilon = math.inf if lifetime is None else float(lifetime)
    audit.status = next((kind for kind in PROBLEM_KINDS if kind in kinds_found), None) or (
        "budget_exhausted" if last_entry is not None and last_entry["status"] == BUDGET_EXHAUSTED else "ok"
    )
    return audit


def mechanism_problem(entry: dict, mechanism: Mechanism) -> str | None:
    """Whether a trained line's sample rate and steps are what its planned size (the run's released noisy
    count; the recorded n_train in ledgers of older versions), expected batch size and epochs give
    (q = 1 / ceil(n / B), steps = epochs x ceil(n / B)); None when they are, or when the line records no size."""
    extra = entry.get("extra") if isinstance(entry.get("extra"), dict) else {}
    key = "planned_size" if "planned_size" in extra else "n_train"
    n, batch, epochs = extra.get(key), extra.get("expected_batch_size"), extra.get("epochs")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n, batch, epochs)):
        return None if n is None else f"recorded {key} / expected_batch_size / epochs are not positive integers"
    per_epoch = max(1, math.ceil(n / batch))
    if abs(mechanism.sample_rate - 1.0 / per_epoch) > 1e-12:
        return (f"sample rate {mechanism.sample_rate:.6g} is not 1/ceil(n/B) = 1/{per_epoch} for the recorded "
                f"{key} {n} and batch size {batch}")
    if mechanism.steps != epochs * per_epoch:
        return (f"steps {mechanism.steps} are not epochs x ceil(n/B) = {epochs} x {per_epoch} for the recorded "
                f"{key} {n} and batch size {batch}")
    return None


def _number(value: object) -> float | None:
    return float(value) if _is_number(value) else None


def run_problems(
    parsed: list[tuple[int, dict]], lines: list[str], site: str, run: RunRecord
) -> list[tuple[str, int, str]]:
    """(kind, line number, problem) for the run's lines against its config and what the center kept."""
    problems: list[tuple[str, int, str]] = []
    cfg = run.config
    train, privacy, pretrain = cfg.get("train", {}), cfg.get("privacy", {}), cfg.get("pretrain", {})
    pretrain_rounds = int(pretrain.get("rounds", 0)) if pretrain.get("enabled") else 0
    total_rounds = pretrain_rounds + int(train.get("rounds", 0))
    for number, entry in parsed:
        if str(entry["run_id"]) != run.run_id:
            continue
        r = entry["round"]
        if not 1 <= r <= total_rounds:
            problems.append(("mismatch", number, f"round {r} is not a round of the run (1..{total_rounds})"))
        for name, expected in (("delta", privacy.get("delta")), ("max_grad_norm", privacy.get("max_grad_norm"))):
            if _number(expected) is not None and abs(float(entry[name]) - float(expected)) > 1e-12 * float(expected):
                problems.append(("mismatch", number, f"{name} {entry[name]:g} differs from the run config's {expected:g}"))
        if entry["status"] not in (TRAINED, NO_DP):
            continue
        extra = entry.get("extra") if isinstance(entry.get("extra"), dict) else {}
        if _is_evaluation(entry):  # a DP evaluation release: the Gaussian mechanism the run config sets
            expected = {"noise_multiplier": float((privacy.get("evaluation") or {}).get("noise_multiplier", 4.0)),
                        "sample_rate": 1.0, "steps": 1}
            if entry["mechanism"] != expected:
                problems.append(("mismatch", number, f"evaluation release {entry['mechanism']} is not the run config's "
                                 f"{expected}"))
            continue
        if _is_count(entry):  # the run's one count release: the Gaussian mechanism the run config sets
            expected = {"noise_multiplier": float(privacy.get("count_noise_multiplier", 10.0)), "sample_rate": 1.0, "steps": 1}
            if entry["mechanism"] != expected:
                problems.append(("mismatch", number, f"count release {entry['mechanism']} is not the run config's {expected}"))
            released = extra.get("released")
            for rr, rec in sorted(run.rounds.items()):
                sent = _number(((rec or {}).get("train") or {}).get("num-examples"))
                if sent is not None and sent != released:
                    problems.append(("mismatch", number, f"released count {released!r} differs from the num-examples "
                                     f"{sent:g} the site reported to the center in round {rr}"))
            continue
        is_pretrain = extra.get("phase") == "pretrain" or r <= pretrain_rounds
        epochs = pretrain.get("local_epochs") if is_pretrain else train.get("local_epochs")
        for name, expected in (("expected_batch_size", train.get("batch_size")), ("epochs", epochs)):
            if expected is not None and extra.get(name) != expected:
                problems.append(("mismatch", number, f"{name} {extra.get(name)!r} is not the run config's {expected!r}"))
        if entry["status"] != TRAINED:
            continue
        if extra.get("n_train") is None:
            problems.append(("mismatch", number, "no recorded dataset size (n_train): the mechanism cannot be checked"))
        released = next((e["extra"].get("released") for _, e in parsed if str(e["run_id"]) == run.run_id
                         and _is_count(e)), None)
        if "planned_size" in extra and extra["planned_size"] != released:
            problems.append(("mismatch", number, f"planned size {extra['planned_size']!r} is not the run's released "
                             f"count {released!r}: the sample rate must come from the released count"))
        reported = (run.rounds.get(r) or {}).get("train") or {}
        mechanism = entry["mechanism"] or {}
        # num-examples: the count release's (checked above); sample_rate and steps are no longer sent (they give n)
        for name, value in (("noise_multiplier", mechanism.get("noise_multiplier")),
                            ("sample_rate", mechanism.get("sample_rate")), ("steps", mechanism.get("steps"))):
            sent = _number(reported.get(name))
            if sent is not None and (value is None or abs(float(value) - sent) > 1e-9 * max(1.0, abs(sent))):
                problems.append(("mismatch", number, f"{name} {value!r} differs from the {sent:g} the site reported to "
                                 f"the center in round {r}"))
    positions = {line_hash(line): index for index, line in enumerate(lines, start=1)}
    last_position = 0
    for r in sorted(run.rounds):
        head = (run.rounds[r] or {}).get("ledger_head")
        if not head or head == GENESIS_HASH:
            continue
        position = positions.get(head)
        if position is None:
            problems.append(("tampered", len(lines), f"the center holds ledger head {head[:16]}... from {site}'s round {r} "
                             "reply, which is no line of this ledger: it was replaced (an older copy), truncated or "
                             "rewritten after that round"))
        elif position < last_position:
            problems.append(("tampered", position, f"the ledger head of round {r} comes before an earlier round's"))
        else:
            last_position = position
    return problems


def security_log_problems(path: Path, public_key: Ed25519PublicKey | None, expected_site: str) -> list[str]:
    """What breaks a site's security log, one "security log line N: ..." per problem: unparsable or
    incomplete lines, the hash chain (a changed, deleted or reordered line), the sequence numbers, the
    site, and the signatures when `public_key` is given. Deleting the newest lines cannot be seen."""
    try:
        lines = read_ledger_lines(path)
    except (OSError, UnicodeDecodeError) as error:
        return [f"security log unreadable ({error})"]
    signer = (public_key, public_key_fingerprint(public_key)) if public_key is not None else None
    problems, expected_seq = [], 1
    for number, line in enumerate(lines, start=1):
        found = []
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry, found = None, ["not valid JSON (corrupted or truncated)"]
        if entry is not None:
            missing = [name for name in SECURITY_LOG_FIELDS if not isinstance(entry, dict) or name not in entry]
            if missing:
                found.append(f"missing field(s) {', '.join(missing)}")
            else:
                expected_prev = line_hash(lines[number - 2]) if number > 1 else GENESIS_HASH
                if entry["prev_hash"] != expected_prev:
                    found.append("hash chain broken (a line was changed, deleted or reordered)")
                if entry["version"] != SECURITY_LOG_VERSION:
                    found.append(f"unsupported version {entry['version']!r}")
                if entry["seq"] != expected_seq:
                    found.append(f"sequence number {entry['seq']!r}, expected {expected_seq} (a line was deleted or added)")
                expected_seq = entry["seq"] + 1 if isinstance(entry["seq"], int) else expected_seq + 1
                if entry["site"] != expected_site:
                    found.append(f"entry of site {entry['site']!r}, expected {expected_site!r}")
                if signer is not None:
                    signature_problem = _signature_problem(entry, *signer)
                    found += [signature_problem] if signature_problem else []
        problems += [f"security log line {number}: {problem}" for problem in found]
    return problems


def audit_ledgers(
    paths_by_site: dict[str, Path],
    public_keys: dict[str, Path | Ed25519PublicKey] | None,
    targets: dict[str, float] | None,
    runs: dict[str, RunRecord] | None = None,
) -> list[LedgerAudit]:
    """Audit every site's ledger; when `public_keys` is given every site must have one (a PEM file or the key)."""
    audits = []
    for site, ledger_path in paths_by_site.items():
        public_key = None
        if public_keys is not None:
            if site not in public_keys:
                raise InputError(None, "public_keys", f"no public key given for site {site!r}")
            given = public_keys[site]
            public_key = given if isinstance(given, Ed25519PublicKey) else load_public_key(given)
        target = (targets or {}).get(site)
        audits.append(audit_ledger(ledger_path, public_key, target, expected_site=site, run=(runs or {}).get(site)))
    return audits


def _format_epsilon(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def audit_table(audits: list[LedgerAudit]) -> str:
    """A plain-text table, one row per site, followed by each site's problems."""
    header = ("site", "target eps", "spent eps", "recomputed eps", "of it evaluation eps", "delta", "rounds", "status")
    rows = [
        (
            a.site,
            _format_epsilon(a.target_epsilon if a.target_epsilon is not None else a.lifetime_epsilon),
            _format_epsilon(a.recorded_epsilon),
            _format_epsilon(a.recomputed_epsilon),
            f"{_format_epsilon(a.evaluation_epsilon)} ({a.evaluation_releases})",
            "-" if a.delta is None else f"{a.delta:g}",
            str(a.rounds_trained),
            a.status,
        )
        for a in audits
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    for audit in audits:
        lines.extend(f"{audit.site}: {problem}" for problem in audit.problems)
    return "\n".join(lines) + "\n"


def write_audit_json(audits: list[LedgerAudit], path: Path) -> None:
    """All audits as a JSON list (written atomically)."""
    records = [{**asdict(audit), "path": str(audit.path)} for audit in audits]
    write_json(Path(path), records, indent=2)


def plot_epsilon(audits: list[LedgerAudit], png_path: Path) -> None:
    """Cumulative epsilon per ledger entry for each site, with each site's target as a dashed line
    (the run report's privacy figure, shared.plots.epsilon_figure)."""
    from shared.plots import epsilon_figure, save_png  # matplotlib only when a figure is asked for

    series, targets = {}, {}
    for audit in audits:
        label = f"{audit.site} ({audit.status})"
        series[label] = list(enumerate(audit.epsilon_by_entry, start=1))
        target = audit.target_epsilon if audit.target_epsilon is not None else audit.lifetime_epsilon
        if target is not None:
            targets[label] = target
    save_png(epsilon_figure(series, targets, "ledger entry (rounds, across runs)"), Path(png_path))
