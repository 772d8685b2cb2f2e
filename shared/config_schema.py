"""The typed run configuration: every section a pydantic model, each task's data section its own class.

This is the bottom layer of `shared/`: it imports no other fedcare module but `shared.errors`, so any
module may use `RunConfig`. Reading a YAML file and the checks that need the task, model or explainer
registries live above, in `shared/config.py` (`load_config`, `config_from_dict`, `config_from_json`).

Unknown keys, wrong types and out-of-range values are `InputError(<yaml file>, <section.field>, problem)`,
one line. A new data field of a task goes into that task's class below (e.g. `RetainDataConfig`), with its
default; fields every task reads stay in `DataConfig`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, SerializeAsAny, ValidationError

from shared.errors import InputError

STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedmedian", "trimmed_mean", "krum")
ACCOUNTANTS = ("rdp", "prv")
OPTIMIZERS = ("adamw", "adam", "sgd")
PRECISIONS = ("fp32", "tf32", "bf16")
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost", "bookkeeping", "auto")  # see shared/training/dp_trainer.py
SITE_DP_MODES = ("fixed", "adaptive")
EVALUATION_ROUNDS = ("all", "final")
SITE_DP_STRATEGIES = ("fedavg", "fedprox")  # site-level DP bounds a weighted mean (server/site_level_dp.py)
TRAIN_PHASE, PRETRAIN_PHASE = "train", "pretrain"  # `phase` in a round's train/evaluate message config
DEFAULT_TASK = "event_mortality"
RECALIBRATION_METHODS = ("none", "platt", "temperature")  # evaluation.recalibrate (shared/calibration.py)
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # no path separators, no leading dot
Need = Callable[[bool, str, str], None]  # need(ok, "section.field", problem) raises InputError unless ok


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads 1e-5 (no dot) as a string; such a string is still the number it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Float = Annotated[float, BeforeValidator(_yaml_float)]


class Section(BaseModel):
    """A config section: unknown keys are errors, no silent type coercion (an int is a float, not a bool)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# -- data: what every task reads, then one class per task --------------------------------------------
class DataConfig(Section):
    root: str = "data/synthetic/event_mortality"
    sites: list[str] = Field(default_factory=lambda: ["hospital_a", "hospital_b", "hospital_c"])
    val_fraction: Float = 0.25
    split_seed: int = 0
    synth_sizes: list[int] | None = None  # patients per synthetic site; None = task default

    def check(self, need: Need) -> None:
        """Cross-field rules of the section (a task's class adds its own, after super().check)."""
        need(len(self.sites) >= 1, "data.sites", "needs at least one site")
        need(len(set(self.sites)) == len(self.sites), "data.sites", "site names must be unique")
        for site in self.sites:  # a site name becomes a folder name at the center and the sites
            need(bool(SITE_NAME.match(site)), "data.sites", f"{site!r} is not a valid site name (letters, digits, _ . -)")
        need(0.0 < self.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1)")


class EventDataConfig(DataConfig):
    """event_mortality (ICU event sequences, shared/data/events.py)."""

    max_events: int = Field(256, ge=1)  # most recent N events per stay are kept; the cap is reported
    text_model: str | None = None  # local HF model dir; None = hashed bag-of-words embedding
    text_dim: int = Field(64, ge=4)  # dimension of the hashed embedding (ignored with text_model)
    # public scaling statistics overriding the shipped reference values (shared/data/event_features.py): key -> {mean, sd}
    standardize: dict[str, dict[str, Float]] = Field(default_factory=dict)


class RetainDataConfig(DataConfig):
    """retain_aki (lab visits, shared/data/visits.py)."""

    max_events: int = Field(256, ge=1)  # most recent N visits per stay are kept; the cap is reported
    # public scaling statistics overriding the shipped reference values (shared/data/visit_features.py): lab -> {mean, sd}
    standardize: dict[str, dict[str, Float]] = Field(default_factory=dict)


class MultimodalDataConfig(DataConfig):
    """multimodal (omics + clinical text, shared/data/omics.py); the omics panel is `model.features`."""

    text_model: str | None = None  # local HF model dir (frozen, cached); None = hashed bag-of-words embedding
    text_dim: int = Field(64, ge=4)
    # public scaling statistics of the pinned omics features (shared/data/omics.py): feature -> {mean, sd}
    standardize: dict[str, dict[str, Float]] = Field(default_factory=dict)


class SleepStagingDataConfig(DataConfig):
    """sleep_staging (PSG sites, format in shared/data/psg.py)."""

    max_epochs: int = Field(10, ge=1)  # 30-s epochs kept per recording (10 = 5 min; a whole night is ~960)
    lead_wake_epochs: int = Field(20, ge=0)  # wake epochs kept before the first sleep epoch
    channel_slots: list[str] = Field(default_factory=lambda: ["BAS1", "BAS2", "BAS3", "RESP", "EKG", "EMG"])
    channel_map: dict[str, str] = Field(default_factory=dict)  # EDF channel label -> slot, on top of the defaults
    synth_minutes: Float | None = Field(None, gt=0)  # length of a synthetic recording; None = task default

    def check(self, need: Need) -> None:
        super().check(need)
        slots = self.channel_slots
        need(len(slots) >= 1 and len(set(slots)) == len(slots), "data.channel_slots", "needs at least one slot, no repeats")
        for slot in slots:
            ok = bool(re.fullmatch(r"(BAS|RESP|EKG|EMG)\d*", slot))
            need(ok, "data.channel_slots", f"{slot!r} is not BAS/RESP/EKG/EMG + optional number")
        for label, slot in self.channel_map.items():
            need(slot in slots, f"data.channel_map.{label}", f"slot {slot!r} is not one of data.channel_slots")


class SleepDiagnosisDataConfig(SleepStagingDataConfig):
    outcomes: list[str] = Field(default_factory=lambda: ["cvd", "death"])  # time_<o>/event_<o> columns

    def check(self, need: Need) -> None:
        super().check(need)
        outcomes = self.outcomes
        unique = len(outcomes) >= 1 and len(set(outcomes)) == len(outcomes)
        need(unique, "data.outcomes", "needs at least one outcome, no repeats")
        for outcome in outcomes:
            need(bool(re.fullmatch(r"[A-Za-z0-9_]+", outcome)), "data.outcomes", f"{outcome!r} must be letters, digits, _")


class TabularDataConfig(DataConfig):
    """One table.csv per site (format and checks in shared/data/tabular.py)."""

    id_column: str = "id"
    covariates: list[dict[str, Any]] = Field(default_factory=list)  # [{name, type: numeric|categorical, levels}]
    standardize: dict[str, dict[str, Float]] = Field(default_factory=dict)  # numeric covariate -> {mean, sd} (public)


class TabularBinaryDataConfig(TabularDataConfig):
    label_column: str = "label"  # 0/1


class TabularSurvivalDataConfig(TabularDataConfig):
    time_column: str = "time"  # time to event or censoring (> 0)
    event_column: str = "event"  # 1 = event, 0 = censored


class ModelConfig(Section):
    """`model: {name, ...}`: the other keys are checked against the model's and the task's parameters
    (shared/config.py) and kept in `params` as written."""

    name: str = "event_transformer"
    params: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(Section):
    rounds: int = 5
    local_epochs: int = 1
    batch_size: int = 32  # expected (Poisson) logical batch size
    max_physical_batch_size: int | None = None  # cap per forward pass (Opacus BatchMemoryManager)
    lr: Float = 1.0e-3
    weight_decay: Float = 0.0
    optimizer: str = "adamw"
    loss: str = "bce"
    loss_params: dict[str, Any] = Field(default_factory=dict)


class PretrainConfig(Section):
    """An optional first federated phase: contrastive pretraining of the task's encoder (sleep tasks:
    InfoNCE between modalities of the same recording). Its rounds come first (global rounds
    1..rounds), the fine-tuning rounds follow; the fine-tuning phase starts from the pretrained
    encoder. Both phases run under one noise plan and one ledger: the run's epsilon covers both."""

    enabled: bool = False
    rounds: int = 2
    local_epochs: int = 1
    lr: Float | None = None  # None = train.lr
    temperature: Float = 0.07
    projection_dim: int | None = None  # None = the encoder's d_model


class SiteLevelDPConfig(Section):
    """Central (site-level) DP at the coordinating center: each site's update is clipped to an L2 norm
    and Gaussian noise is added to the aggregate (Flower's server-side DP wrappers)."""

    enabled: bool = False
    noise_multiplier: Float = 0.5  # noise std = noise_multiplier x clipping_norm / number of sites
    clipping_norm: Float = 1.0  # L2 bound of one site's update (adaptive: the initial bound)
    mode: str = "fixed"  # fixed | adaptive (Andrew et al. 2021 quantile-tracking clip norm)
    target_clipped_quantile: Float = 0.5  # adaptive only
    clip_norm_lr: Float = 0.2  # adaptive only
    clipped_count_stddev: Float | None = None  # adaptive only; None = Flower's default (number of sites / 20)
    # aggregation weight of a site = min(num-examples, max_site_weight) / max_site_weight; None = every site weighs 1.
    # The mean divides by the number of configured sites, so one site moves it by <= clipping_norm / sites
    # (server/site_level_dp.py).
    max_site_weight: Float | None = None


class EvaluationPrivacyConfig(Section):
    """Validation metrics under DP (shared/privacy/dp_evaluation.py): each evaluation a site answers releases
    noisy score histograms (binary) or a noisy confusion matrix (multiclass), one Gaussian mechanism of
    noise_multiplier (x the L2 sensitivity) recorded in its ledger and planned with the training noise under
    the one target. The center computes the metrics. Survival tasks release no validation metric under DP."""

    noise_multiplier: Float = 4.0
    bins: int = 20  # equal-width score bins over [0, 1] (binary tasks)
    # "all": every fine-tuning round's model is evaluated; "final": only the last round's. With DP at every site
    # the center sends evaluate messages only in these rounds (server/strategy.py: evaluated_rounds)
    rounds: str = "all"


class PrivacyConfig(Section):
    # false (or a target epsilon of .inf) really trains without DP: no clipping, no noise, plain shuffled
    # batches; the ledger says "no_dp", the audit reports epsilon inf, a site policy refuses it
    enabled: bool = True
    target_epsilon: Float = 8.0  # per site, for this run
    # true: the DP randomness is seeded from the run's seed, site and round (tests, debugging): anyone who
    # knows the config can replay the noise. Recorded in the ledger; the audit reports it as not private
    # against the center.
    reproducible_noise: bool = False
    delta: Float = 1.0e-5
    max_grad_norm: Float = 1.0
    accountant: str = "rdp"
    grad_sample_mode: str = "auto"  # book-keeping DP (exact, one backward) where the model allows, else hooks
    max_noise_multiplier: Float = 20.0  # a plan needing more noise than this counts as no budget
    site_targets: dict[str, float] = Field(default_factory=dict)  # per-site override of target_epsilon
    site_level_dp: SiteLevelDPConfig = Field(default_factory=SiteLevelDPConfig)
    # the FedAvg weight a site sends (num-examples): its training size + N(0, this^2), released once per run
    # through a Gaussian mechanism in its ledger, planned with the training noise (client/site_worker.py)
    count_noise_multiplier: Float = 10.0
    evaluation: EvaluationPrivacyConfig = Field(default_factory=EvaluationPrivacyConfig)


class StrategyConfig(Section):
    name: str = "fedavg"
    min_sites: int = 2
    params: dict[str, Any] = Field(default_factory=dict)  # e.g. proximal_mu, trim_beta
    # fedavgm / fedadam / fedyogi (server/server_optimizer.py); None = the optimiser's DP-tuned default
    server_lr: Float | None = None
    server_momentum: Float | None = None  # fedavgm: momentum; fedadam/fedyogi: beta_1
    server_tau: Float | None = None  # fedadam/fedyogi: added to sqrt(v); keeps noisy coordinates' steps small
    server_warmup_rounds: int | None = None  # first rounds: plain FedAvg steps while the optimiser's state fills


class FederationConfig(Section):
    mode: str = "simulation"
    cpus_per_site: Float = 1.0
    gpus_per_site: Float = 0.0
    round_timeout_s: Float = 3600.0  # how long a round phase waits for replies (a dead site is detected within ~60 s anyway)
    wait_for_sites_s: Float = 300.0  # deployment: how long the first round waits for every site to connect
    site_state_root: str | None = None  # persistent per-site state (lifetime ledgers); None = inside the run dir
    site_policies: dict[str, str] = Field(default_factory=dict)  # simulation: site -> its site policy YAML


class EvaluationConfig(Section):
    # binary tasks: the calibration map fitted at the center on the sites' released validation histograms
    # (shared/calibration.py; no privacy cost), stored with every checkpoint and applied by `fedcare predict`
    recalibrate: str = "platt"  # platt | temperature | none


class ExplainConfig(Section):
    final_round: bool = False  # after the last round's evaluation each site writes an explanation report locally
    patients: int = 10  # stays explained one by one (the highest predicted risks)


class SecureAggregationConfig(Section):
    """SecAgg+ (Flower's legacy workflow): the center only ever sees the sum of the sites' masked updates.

    clipping_range, max_weight and quantization_range are derived from weight_bound, max_num_examples and
    the number of sites so that nothing is clipped and no sum wraps modulus_range (shared.privacy.secagg_params);
    set explicitly, they are checked against the same conditions."""

    enabled: bool = False
    num_shares: int | None = None  # shares each site's secrets are split into; None = number of sites
    reconstruction_threshold: int | None = None  # shares needed to rebuild a secret; None = a majority of num_shares
    weight_bound: Float = 16.0  # largest |value| of any model parameter a site may send; checked at center and sites
    max_num_examples: int | None = None  # largest training set of any site (its update's weight); required
    modulus_range: int = 2**32
    clipping_range: Float | None = None  # None = weight_bound
    max_weight: Float | None = None  # None = max_num_examples
    quantization_range: int | None = None  # None = the largest with sites x quantization_range < modulus_range
    timeout_s: Float | None = None  # per protocol stage; None = federation.round_timeout_s


class RunConfig(Section):
    task: str = DEFAULT_TASK
    data: SerializeAsAny[DataConfig] = Field(default_factory=EventDataConfig)  # the task's own class (shared/config.py)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    secure_aggregation: SecureAggregationConfig = Field(default_factory=SecureAggregationConfig)
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    output_dir: str = "runs"
    _source: str = PrivateAttr(default="<defaults>")  # the YAML file (error messages), not part of the config

    @property
    def source(self) -> str:
        return self._source

    @source.setter
    def source(self, value: str) -> None:
        self._source = value

    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump()
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


# -- parsing -------------------------------------------------------------------------------------------
def _dotted(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else (f"{out}.{part}" if out else str(part))
    return out or "<top level>"


def _allowed_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section at `loc` (the parent of an unknown key)."""
    for part in loc:
        info = cls.model_fields.get(str(part))
        inner = getattr(info, "annotation", None) if info else None
        inner = getattr(inner, "__origin__", inner)  # SerializeAsAny[X] -> X
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return []
        cls = inner
    return list(cls.model_fields)


def validate_section(cls: type[BaseModel], raw: Any, source: str, prefix: str) -> Any:
    """`raw` (a mapping from YAML) as an instance of `cls`; the first problem as one InputError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(source, prefix or "<top level>", f"expected a mapping, got {type(raw).__name__}")
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise input_error(err, cls, source, prefix) from None


def input_error(err: ValidationError, cls: type[BaseModel], source: str, prefix: str) -> InputError:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    where = _dotted(prefix, loc)
    if first["type"] == "extra_forbidden":
        return InputError(source, where, f"unknown key (allowed: {', '.join(_allowed_keys(cls, loc[:-1]))})")
    if first["type"] == "missing":
        return InputError(source, where, "missing")
    return InputError(source, where, f"{first['msg'].replace('Input should be', 'must be').rstrip('.')}, got {first['input']!r}")


def parse_config(raw: Any, source: str, data_config: type[DataConfig], default_model: str = "event_transformer") -> RunConfig:
    """The config's sections, typed and range-checked, with the task's data class (no registry checks)."""
    if not isinstance(raw, dict):
        raise InputError(source, "<top level>", f"expected a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    data = validate_section(data_config, raw.pop("data", None), source, "data")
    model = raw.pop("model", None)
    if model is not None and not isinstance(model, dict):
        raise InputError(source, "model", f"expected a mapping, got {type(model).__name__}")
    model = dict(model or {})
    name = model.pop("name", default_model)
    if not isinstance(name, str):
        raise InputError(source, "model.name", "must be a string")
    cfg = validate_section(RunConfig, raw, source, "")
    cfg.data, cfg.model = data, ModelConfig(name=name, params=model)
    cfg.source = source
    check_sections(cfg)
    return cfg


def check_sections(cfg: RunConfig) -> None:
    """Ranges and cross-field rules that need no registry (the task, model and explainer checks: shared/config.py)."""
    s = cfg.source

    def need(ok: bool, where: str, problem: str) -> None:
        if not ok:
            raise InputError(s, where, problem)

    cfg.data.check(need)
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
    sc = cfg.strategy
    need(sc.server_lr is None or sc.server_lr > 0, "strategy.server_lr", "must be > 0")
    need(sc.server_momentum is None or 0 <= sc.server_momentum < 1, "strategy.server_momentum", "must be in [0, 1)")
    need(sc.server_tau is None or sc.server_tau >= 0, "strategy.server_tau", "must be >= 0")
    need(sc.server_warmup_rounds is None or sc.server_warmup_rounds >= 0, "strategy.server_warmup_rounds", "must be >= 0")
    need(cfg.evaluation.recalibrate in RECALIBRATION_METHODS, "evaluation.recalibrate",
         f"one of {', '.join(RECALIBRATION_METHODS)}")
    need(cfg.federation.mode in ("simulation", "deployment"), "federation.mode", "simulation or deployment")
    need(cfg.federation.cpus_per_site > 0, "federation.cpus_per_site", "must be > 0")
    need(cfg.federation.gpus_per_site >= 0, "federation.gpus_per_site", "must be >= 0")
    need(cfg.explain.patients >= 1, "explain.patients", f"must be >= 1, got {cfg.explain.patients}")
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
    need(cfg.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
    need(
        cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
        "device", "auto, cpu, cuda or cuda:N",
    )


def _check_site_level_dp(cfg: RunConfig, need: Need) -> None:
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


