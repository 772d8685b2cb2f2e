"""YAML -> validated, typed run configuration. One clear one-line error per bad field.

Every section is a dataclass; unknown keys, wrong types and out-of-range values raise
`InputError(<yaml file>, <section.field>, problem)` at load time, so deeper code trusts them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shared.errors import InputError

TASKS = (
    "event_mortality", "retain_aki", "sleep_staging", "sleep_diagnosis", "multimodal", "tabular_binary", "tabular_survival",
)
TABULAR_TASKS = ("tabular_binary", "tabular_survival")  # one table.csv per site (shared/data/tabular.py)
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "trimmed_mean", "krum")
ACCOUNTANTS = ("rdp", "prv")
OPTIMIZERS = ("adamw", "adam", "sgd")
PRECISIONS = ("fp32", "tf32", "bf16")
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost", "bookkeeping", "auto")  # see shared/training/dp_trainer.py
SITE_DP_MODES = ("fixed", "adaptive")
EVALUATION_ROUNDS = ("all", "final")
SITE_DP_STRATEGIES = ("fedavg", "fedprox")  # site-level DP bounds a weighted mean (server/site_level_dp.py)
TRAIN_PHASE, PRETRAIN_PHASE = "train", "pretrain"  # `phase` in a round's train/evaluate message config
PRETRAINABLE_TASKS = ("sleep_staging", "sleep_diagnosis")  # tasks with a contrastive pretraining phase
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # no path separators, no leading dot


@dataclass
class DataConfig:
    root: str = "data/synthetic/event_mortality"
    sites: list[str] = field(default_factory=lambda: ["hospital_a", "hospital_b", "hospital_c"])
    val_fraction: float = 0.25
    split_seed: int = 0
    max_events: int = 256  # most recent N events per stay are kept; the cap is reported
    text_model: str | None = None  # local HF model dir; None = hashed bag-of-words embedding
    text_dim: int = 64  # dimension of the hashed embedding (ignored with text_model)
    synth_sizes: list[int] | None = None  # stays per synthetic site; None = task default
    # sleep tasks (PSG sites, format in shared/data/psg.py)
    max_epochs: int = 10  # 30-s epochs kept per recording (10 = 5 min; a whole night is ~960)
    lead_wake_epochs: int = 20  # wake epochs kept before the first sleep epoch
    channel_slots: list[str] = field(default_factory=lambda: ["BAS1", "BAS2", "BAS3", "RESP", "EKG", "EMG"])
    channel_map: dict[str, str] = field(default_factory=dict)  # EDF channel label -> slot, on top of the defaults
    outcomes: list[str] = field(default_factory=lambda: ["cvd", "death"])  # diagnosis: time_<o>/event_<o> columns
    synth_minutes: float | None = None  # length of a synthetic recording; None = task default
    # tabular tasks (one table.csv per site; format and checks in shared/data/tabular.py)
    id_column: str = "id"
    label_column: str = "label"  # tabular_binary: 0/1
    time_column: str = "time"  # tabular_survival: time to event or censoring (> 0)
    event_column: str = "event"  # tabular_survival: 1 = event, 0 = censored
    covariates: list[dict[str, Any]] = field(default_factory=list)  # [{name, type: numeric|categorical, levels}]
    standardize: dict[str, dict[str, float]] = field(default_factory=dict)  # numeric covariate -> {mean, sd} (public)


@dataclass
class ModelConfig:
    name: str = "event_transformer"
    params: dict[str, Any] = field(default_factory=dict)  # every other key of the YAML section


@dataclass
class TrainConfig:
    rounds: int = 5
    local_epochs: int = 1
    batch_size: int = 32  # expected (Poisson) logical batch size
    max_physical_batch_size: int | None = None  # cap per forward pass (Opacus BatchMemoryManager)
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    loss: str = "bce"
    loss_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PretrainConfig:
    """An optional first federated phase: contrastive pretraining of the task's encoder (sleep tasks:
    InfoNCE between modalities of the same recording). Its rounds come first (global rounds
    1..rounds), the fine-tuning rounds follow; the fine-tuning phase starts from the pretrained
    encoder. Both phases run under one noise plan and one ledger: the run's epsilon covers both."""

    enabled: bool = False
    rounds: int = 2
    local_epochs: int = 1
    lr: float | None = None  # None = train.lr
    temperature: float = 0.07
    projection_dim: int | None = None  # None = the encoder's d_model


@dataclass
class SiteLevelDPConfig:
    """Central (site-level) DP at the coordinating center: each site's update is clipped to an L2 norm
    and Gaussian noise is added to the aggregate (Flower's server-side DP wrappers)."""

    enabled: bool = False
    noise_multiplier: float = 0.5  # noise std = noise_multiplier x clipping_norm / number of sites
    clipping_norm: float = 1.0  # L2 bound of one site's update (adaptive: the initial bound)
    mode: str = "fixed"  # fixed | adaptive (Andrew et al. 2021 quantile-tracking clip norm)
    target_clipped_quantile: float = 0.5  # adaptive only
    clip_norm_lr: float = 0.2  # adaptive only
    clipped_count_stddev: float | None = None  # adaptive only; None = Flower's default (number of sites / 20)
    # aggregation weight of a site = min(num-examples, max_site_weight) / max_site_weight; None = every site weighs 1.
    # The mean divides by the number of configured sites, so one site moves it by <= clipping_norm / sites
    # (server/site_level_dp.py).
    max_site_weight: float | None = None


@dataclass
class EvaluationPrivacyConfig:
    """Validation metrics under DP (shared/privacy/dp_evaluation.py): each evaluation a site answers releases
    noisy score histograms (binary) or a noisy confusion matrix (multiclass), one Gaussian mechanism of
    noise_multiplier (x the L2 sensitivity) recorded in its ledger and planned with the training noise under
    the one target. The center computes the metrics. Survival tasks release no validation metric under DP."""

    noise_multiplier: float = 4.0
    bins: int = 20  # equal-width score bins over [0, 1] (binary tasks)
    rounds: str = "all"  # "all": every fine-tuning round's model is evaluated; "final": only the last round's


@dataclass
class PrivacyConfig:
    # false (or a target epsilon of .inf) really trains without DP: no clipping, no noise, plain shuffled
    # batches; the ledger says "no_dp", the audit reports epsilon inf, a site policy refuses it
    enabled: bool = True
    target_epsilon: float = 8.0  # per site, for this run
    # true: the DP randomness is seeded from the run's seed, site and round (tests, debugging): anyone who
    # knows the config can replay the noise. Recorded in the ledger; the audit reports it as not private
    # against the center.
    reproducible_noise: bool = False
    delta: float = 1.0e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    grad_sample_mode: str = "auto"  # book-keeping DP (exact, one backward) where the model allows, else hooks
    max_noise_multiplier: float = 20.0  # a plan needing more noise than this counts as no budget
    site_targets: dict[str, float] = field(default_factory=dict)  # per-site override of target_epsilon
    site_level_dp: SiteLevelDPConfig = field(default_factory=SiteLevelDPConfig)
    # the FedAvg weight a site sends (num-examples): its training size + N(0, this^2), released once per run
    # through a Gaussian mechanism in its ledger, planned with the training noise (client/site_worker.py)
    count_noise_multiplier: float = 10.0
    evaluation: EvaluationPrivacyConfig = field(default_factory=EvaluationPrivacyConfig)


@dataclass
class StrategyConfig:
    name: str = "fedavg"
    min_sites: int = 2
    params: dict[str, Any] = field(default_factory=dict)  # e.g. proximal_mu, eta, trim_beta


@dataclass
class FederationConfig:
    mode: str = "simulation"
    cpus_per_site: float = 1.0
    gpus_per_site: float = 0.0
    round_timeout_s: float = 3600.0  # how long a round phase waits for replies (a dead site is detected within ~60 s anyway)
    wait_for_sites_s: float = 300.0  # deployment: how long the first round waits for every site to connect
    site_state_root: str | None = None  # persistent per-site state (lifetime ledgers); None = inside the run dir
    site_policies: dict[str, str] = field(default_factory=dict)  # simulation: site -> its site policy YAML


@dataclass
class ExplainConfig:
    final_round: bool = False  # after the last round's evaluation each site writes an explanation report locally
    patients: int = 10  # stays explained one by one (the highest predicted risks)


@dataclass
class SecureAggregationConfig:
    """SecAgg+ (Flower's legacy workflow): the center only ever sees the sum of the sites' masked updates.

    clipping_range, max_weight and quantization_range are derived from weight_bound, max_num_examples and
    the number of sites so that nothing is clipped and no sum wraps modulus_range (shared.privacy.secagg_params);
    set explicitly, they are checked against the same conditions."""

    enabled: bool = False
    num_shares: int | None = None  # shares each site's secrets are split into; None = number of sites
    reconstruction_threshold: int | None = None  # shares needed to rebuild a secret; None = a majority of num_shares
    weight_bound: float = 16.0  # largest |value| of any model parameter a site may send; checked at center and sites
    max_num_examples: int | None = None  # largest training set of any site (its update's weight); required
    modulus_range: int = 2**32
    clipping_range: float | None = None  # None = weight_bound
    max_weight: float | None = None  # None = max_num_examples
    quantization_range: int | None = None  # None = the largest with sites x quantization_range < modulus_range
    timeout_s: float | None = None  # per protocol stage; None = federation.round_timeout_s


@dataclass
class RunConfig:
    task: str = "event_mortality"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    output_dir: str = "runs"
    source: str = field(default="<defaults>", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        model = out.pop("model")
        out["model"] = {"name": model["name"], **model["params"]}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def pretrain_rounds(self) -> int:
        """Rounds of the pretraining phase (0 when it is off): fine-tuning round r is global round pretrain_rounds + r."""
        return self.pretrain.rounds if self.pretrain.enabled else 0

    @property
    def total_rounds(self) -> int:
        return self.pretrain_rounds + self.train.rounds

    def evaluation_rounds(self) -> list[int]:
        """Global rounds whose model the sites evaluate under DP (the fine-tuning rounds, or the last)."""
        if self.privacy.evaluation.rounds == "final":
            return [self.total_rounds]
        return list(range(self.pretrain_rounds + 1, self.total_rounds + 1))

    def site_target_epsilon(self, site: str) -> float:
        return float(self.privacy.site_targets.get(site, self.privacy.target_epsilon))

    def dp_enabled(self, site: str) -> bool:
        """Whether `site` trains with DP: privacy.enabled and a finite target (.inf means no DP)."""
        return self.privacy.enabled and math.isfinite(self.site_target_epsilon(site))


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        k, v = typing.get_args(tp)
        return isinstance(value, dict) and all(_type_ok(a, k) and _type_ok(b, v) for a, b in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(source, prefix or "<top level>", f"expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    if cls is ModelConfig:  # model: {name: ..., any hyper-parameter: ...}
        raw = dict(raw)
        name = raw.pop("name", ModelConfig.name)
        if not isinstance(name, str):
            raise InputError(source, f"{prefix}.name", "must be a string")
        return ModelConfig(name=name, params=raw)
    for key, value in raw.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise InputError(source, where, f"unknown key; allowed: {', '.join(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, source, where)
            continue
        if tp is float and isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not _type_ok(value, tp):
            raise InputError(source, where, f"expected {_type_name(tp)}, got {value!r}")
        kwargs[key] = float(value) if tp is float else value
    return cls(**kwargs)


def _check(cfg: RunConfig) -> None:
    s = cfg.source

    def need(ok: bool, where: str, problem: str) -> None:
        if not ok:
            raise InputError(s, where, problem)

    need(cfg.task in TASKS, "task", f"unknown task {cfg.task!r}; known: {', '.join(TASKS)}")
    need(len(cfg.data.sites) >= 1, "data.sites", "needs at least one site")
    need(len(set(cfg.data.sites)) == len(cfg.data.sites), "data.sites", "site names must be unique")
    for site in cfg.data.sites:  # a site name becomes a folder name at the center and the sites
        need(bool(SITE_NAME.match(site)), "data.sites", f"{site!r} is not a valid site name (letters, digits, _ . -)")
    need(0.0 < cfg.data.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1)")
    need(cfg.data.max_events >= 1, "data.max_events", "must be >= 1")
    need(cfg.data.text_dim >= 4, "data.text_dim", "must be >= 4")
    need(cfg.data.max_epochs >= 1, "data.max_epochs", "must be >= 1")
    need(cfg.data.lead_wake_epochs >= 0, "data.lead_wake_epochs", "must be >= 0")
    slots = cfg.data.channel_slots
    need(len(slots) >= 1 and len(set(slots)) == len(slots), "data.channel_slots", "needs at least one slot, no repeats")
    for slot in slots:
        ok = bool(re.fullmatch(r"(BAS|RESP|EKG|EMG)\d*", slot))
        need(ok, "data.channel_slots", f"{slot!r} is not BAS/RESP/EKG/EMG + optional number")
    for label, slot in cfg.data.channel_map.items():
        need(slot in slots, f"data.channel_map.{label}", f"slot {slot!r} is not one of data.channel_slots")
    outcomes = cfg.data.outcomes
    need(len(outcomes) >= 1 and len(set(outcomes)) == len(outcomes), "data.outcomes", "needs at least one outcome, no repeats")
    for outcome in outcomes:
        need(bool(re.fullmatch(r"[A-Za-z0-9_]+", outcome)), "data.outcomes", f"{outcome!r} must be letters, digits, _")
    if cfg.task in TABULAR_TASKS:
        from shared.data.tabular import check_tabular_config

        check_tabular_config(cfg)  # raises InputError(data.covariates[i]...); fills in each covariate's model inputs
    sm = cfg.data.synth_minutes
    need(sm is None or sm > 0, "data.synth_minutes", "must be > 0")
    need(cfg.train.rounds >= 1, "train.rounds", "must be >= 1")
    need(cfg.train.local_epochs >= 1, "train.local_epochs", "must be >= 1")
    need(cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1")
    mpb = cfg.train.max_physical_batch_size
    need(mpb is None or mpb >= 1, "train.max_physical_batch_size", "must be >= 1")
    need(cfg.train.lr > 0, "train.lr", "must be > 0")
    need(cfg.train.optimizer in OPTIMIZERS, "train.optimizer", f"one of {', '.join(OPTIMIZERS)}")
    pre = cfg.pretrain
    need(pre.rounds >= 1, "pretrain.rounds", "must be >= 1")
    need(pre.local_epochs >= 1, "pretrain.local_epochs", "must be >= 1")
    need(pre.lr is None or pre.lr > 0, "pretrain.lr", "must be > 0")
    need(pre.temperature > 0, "pretrain.temperature", f"must be > 0, got {pre.temperature}")
    need(pre.projection_dim is None or pre.projection_dim >= 1, "pretrain.projection_dim", "must be >= 1")
    need(not pre.enabled or cfg.task in PRETRAINABLE_TASKS, "pretrain.enabled",
         f"no pretraining phase for task {cfg.task!r} (available: {', '.join(PRETRAINABLE_TASKS)})")
    p = cfg.privacy
    need(p.target_epsilon > 0, "privacy.target_epsilon", f"must be > 0, got {p.target_epsilon}")
    need(0 < p.delta < 1, "privacy.delta", f"must be in (0, 1), got {p.delta}")
    need(p.max_grad_norm > 0, "privacy.max_grad_norm", "must be > 0")
    need(p.accountant in ACCOUNTANTS, "privacy.accountant", f"one of {', '.join(ACCOUNTANTS)}")
    need(p.grad_sample_mode in GRAD_SAMPLE_MODES, "privacy.grad_sample_mode", f"one of {', '.join(GRAD_SAMPLE_MODES)}")
    for site, eps in p.site_targets.items():
        need(site in cfg.data.sites, f"privacy.site_targets.{site}", "not one of data.sites")
        need(eps > 0, f"privacy.site_targets.{site}", f"must be > 0, got {eps}")
    _check_site_level_dp(cfg, need)
    need(p.count_noise_multiplier > 0, "privacy.count_noise_multiplier", f"must be > 0, got {p.count_noise_multiplier:g}")
    e = p.evaluation
    where = "privacy.evaluation"
    need(e.noise_multiplier > 0, f"{where}.noise_multiplier", f"must be > 0 (no noise, no DP), got {e.noise_multiplier:g}")
    need(2 <= e.bins <= 50, "privacy.evaluation.bins", f"must be in [2, 50], got {e.bins}")
    need(e.rounds in EVALUATION_ROUNDS, "privacy.evaluation.rounds", f"one of {', '.join(EVALUATION_ROUNDS)}")
    need(cfg.strategy.name in STRATEGIES, "strategy.name", f"unknown strategy; known: {', '.join(STRATEGIES)}")
    need(cfg.strategy.min_sites >= 1, "strategy.min_sites", "must be >= 1")
    need(cfg.federation.mode in ("simulation", "deployment"), "federation.mode", "simulation or deployment")
    need(cfg.federation.cpus_per_site > 0, "federation.cpus_per_site", "must be > 0")
    need(cfg.federation.gpus_per_site >= 0, "federation.gpus_per_site", "must be >= 0")
    need(cfg.explain.patients >= 1, "explain.patients", f"must be >= 1, got {cfg.explain.patients}")
    if cfg.explain.final_round:
        from shared.explain.registry import explainable_tasks

        need(cfg.task in explainable_tasks(), "explain.final_round",
             f"no site explainer for task {cfg.task!r} yet (available: {', '.join(explainable_tasks())})")
    for site, policy in cfg.federation.site_policies.items():
        need(site in cfg.data.sites, f"federation.site_policies.{site}", "not one of data.sites")
        need(
            cfg.federation.mode != "simulation" or Path(policy).is_file(),
            f"federation.site_policies.{site}", f"policy file {policy!r} not found",
        )
    need(cfg.federation.round_timeout_s > 0, "federation.round_timeout_s", "must be > 0")
    need(cfg.federation.wait_for_sites_s >= 0, "federation.wait_for_sites_s", "must be >= 0")
    need(not (cfg.pretrain.enabled and cfg.secure_aggregation.enabled), "pretrain.enabled",
         "the pretraining phase runs without secure aggregation; switch one of them off")
    if cfg.secure_aggregation.enabled:
        from shared.privacy.secagg_params import derive_secagg_parameters

        derive_secagg_parameters(cfg)  # raises InputError naming the field that cannot be met
    need(cfg.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
    need(
        cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
        "device", "auto, cpu, cuda or cuda:N",
    )


def _check_site_level_dp(cfg: RunConfig, need: Any) -> None:
    d, where = cfg.privacy.site_level_dp, "privacy.site_level_dp"
    if not d.enabled:
        return
    need(d.noise_multiplier > 0, f"{where}.noise_multiplier", f"must be > 0 (no noise, no DP), got {d.noise_multiplier}")
    need(d.clipping_norm > 0, f"{where}.clipping_norm", f"must be > 0, got {d.clipping_norm}")
    need(d.mode in SITE_DP_MODES, f"{where}.mode", f"one of {', '.join(SITE_DP_MODES)}")
    need(0.0 <= d.target_clipped_quantile <= 1.0, f"{where}.target_clipped_quantile", "must be in [0, 1]")
    need(d.clip_norm_lr > 0, f"{where}.clip_norm_lr", "must be > 0")
    need(d.max_site_weight is None or d.max_site_weight > 0, f"{where}.max_site_weight", "must be > 0")
    need(cfg.strategy.name in SITE_DP_STRATEGIES, "strategy.name",
         f"site-level DP needs a weighted-mean strategy ({', '.join(SITE_DP_STRATEGIES)}), not {cfg.strategy.name!r}")
    if d.mode == "adaptive":
        stddev = d.clipped_count_stddev if d.clipped_count_stddev is not None else len(cfg.data.sites) / 20
        need(
            stddev > d.noise_multiplier / 2, f"{where}.clipped_count_stddev",
            f"must exceed noise_multiplier / 2 = {d.noise_multiplier / 2:g} for adaptive clipping "
            f"(got {stddev:g}{'' if d.clipped_count_stddev is not None else ', the default number of sites / 20'})",
        )


def config_from_dict(raw: Any, source: str = "<dict>") -> RunConfig:
    cfg = _build(RunConfig, raw, source, "")
    cfg.source = source
    _check(cfg)
    return cfg


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        hint = " (it looks like UTF-16: save it as UTF-8)" if path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise InputError(path, None, f"not UTF-8 text at byte {err.start}{hint}") from None
    except OSError as err:
        raise InputError(path, None, f"cannot read ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise InputError(path, where, f"not valid YAML ({getattr(err, 'problem', err)})") from None
    if raw is None:  # an empty file must not silently become the default event config
        raise InputError(path, None, "the config is empty; it needs at least `task:` (see configs/)")
    return config_from_dict(raw, str(path))


def config_from_json(text: str) -> RunConfig:
    """The resolved config as it travels inside a Flower run config."""
    return config_from_dict(json.loads(text), "<run config>")
