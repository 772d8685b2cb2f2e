"""Sleep staging and sleep-based diagnosis from PSG recordings (SetTransformer, seed 001).

Both tasks read PSG site folders (shared/data/psg.py): one recording is one sample (the DP
privacy unit), in a fixed channel-slot layout x (C, N*6, 640) with channel and epoch masks.

* `SleepStagingTask` ("sleep_staging"): per-epoch stages W/N1/N2/N3/R. Loss ``ce``,
  ``weighted_ce`` or ``focal_ce`` (public class weights: ``train.loss_params.weight``, else the
  inverse of a typical adult night's stage fractions, never the site's own stage counts, issue 17;
  unscored and padded epochs ignored). Reports accuracy, macro-F1 and Cohen's kappa over the scored
  validation epochs, each with a 95% bootstrap CI over recordings. Per-stage F1 and the
  confusion matrix (JSON + PNG) are its `site_report`, which the site writes to ``<state_dir>/reports/``.
* `SleepDiagnosisTask` ("sleep_diagnosis"): K hazards (one per ``data.outcomes``) from the night
  plus age and sex, CoxPH loss (Breslow ties by default, ``train.loss_params.ties``). Reports the
  C-index averaged over the outcomes with a bootstrap CI; per-outcome C-indices are its `site_report`.

DP caveat (diagnosis): the Cox partial likelihood couples the samples of a batch through their
risk sets, so a sample's clipped per-sample gradient bounds its own term's contribution but not
its influence on the other samples' terms: the per-sample clipping bound, and with it the
epsilon, is an approximation here (see shared/losses/survival.py). Larger batches bring the risk
sets closer to the full data's.

Nothing is fitted on the data (each recording is normalised from its own signal only), so
`prediction_inputs` needs no saved encoder: age is scaled as (age - 50) / 15, sex is
1 for male, 0 for female.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

from shared.config_schema import RunConfig, SleepDiagnosisDataConfig, SleepStagingDataConfig
from shared.data.psg import (
    PATCHES_PER_EPOCH,
    STAGE_NAMES,
    UNSCORED,
    PSGSite,
    load_psg_site,
    slot_modality,
)
from shared.data.splits import split_rows
from shared.data.synth import synthesize_sites
from shared.errors import InputError
from shared.losses.contrastive import within_sample_info_nce
from shared.metrics import accuracy, add_with_ci, c_index, cohen_kappa, confusion, macro_f1, per_class_f1
from shared.models.sleep_heads import SLEEP_MODALITIES
from shared.tasks.base import SiteData, Task

if TYPE_CHECKING:
    from matplotlib.figure import Figure

N_BOOT = 200
STAGING_LOSSES = ("ce", "weighted_ce", "focal_ce")
DIAGNOSIS_LOSSES = ("coxph",)
AGE_CENTER, AGE_SCALE = 50.0, 15.0


def demographics(site: PSGSite) -> np.ndarray:
    """(R, 2) float32: scaled age, male 0/1 (fixed scaling: nothing fitted, nothing to save)."""
    return np.stack([(site.age - AGE_CENTER) / AGE_SCALE, site.male], axis=1).astype(np.float32)


def _scored(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], float]:
    """Metric on the scored epochs of (R, N) stage and prediction arrays."""

    def on_scored(stages: np.ndarray, predicted: np.ndarray) -> float:
        keep = stages != UNSCORED
        if not keep.any():
            raise ValueError("no scored epoch")
        return fn(stages[keep], predicted[keep])

    return on_scored


def _mean_c_index(times: np.ndarray, events: np.ndarray, risks: np.ndarray) -> float:
    """Mean over outcomes (columns) of Harrell's C-index, over the outcomes where it is defined."""
    values = []
    for k in range(times.shape[1]):
        try:
            values.append(c_index(times[:, k], events[:, k], risks[:, k]))
        except ValueError:
            continue
    if not values:
        raise ValueError("C-index undefined for every outcome")
    return float(np.mean(values))


def _confusion_figure(matrix: np.ndarray, labels: Sequence[str], title: str) -> Figure:
    from matplotlib.figure import Figure  # the Agg canvas, without pyplot's global state

    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(4.6, 4.0), dpi=120)
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted stage")
    ax.set_ylabel("scored stage")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of the scored stage")
    fig.tight_layout()
    return fig


# a typical adult night's share of W, N1, N2, N3, R (public reference; the weights are their inverses)
REFERENCE_STAGE_FRACTIONS = (0.15, 0.05, 0.50, 0.12, 0.18)


class SleepTask(Task):
    """What the two PSG tasks share: the channel slots and their modalities, the pretraining phase."""

    id_column = "record_id"
    pretrainable = True
    has_site_report = True  # per-stage F1 and confusion matrix, per-outcome C-index (site_report)
    allowed_losses: tuple[str, ...] = ()

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        if cfg.train.loss not in self.allowed_losses:
            allowed = ", ".join(self.allowed_losses)
            raise InputError(cfg.source, "train.loss", f"{cfg.train.loss!r} does not fit {self.name}; use one of {allowed}")

    def synthesize(self, out_dir: Path, sites: list[str], seed: int) -> None:
        synthesize_sites(self.cfg.task, out_dir, sites, seed, self.cfg.data.synth_sizes, minutes=self.cfg.data.synth_minutes)

    def load(
        self, site_dir: Path, outcomes: Sequence[str] = (), require_hypnogram: bool = True, max_epochs: int | None = None
    ) -> PSGSite:
        d = self.cfg.data
        return load_psg_site(
            site_dir, d.channel_slots, d.channel_map, max_epochs or d.max_epochs, d.lead_wake_epochs, outcomes,
            require_hypnogram,
        )

    def training_outcomes(self) -> tuple[str, ...]:
        """The outcome column pairs training needs (none for staging)."""
        return ()

    def check_site(self, site_dir: Path, site: str) -> None:
        """Every check of the loader (recordings.csv, each EDF and hypnogram opened and validated in
        full), reading and resampling only one epoch of signal per recording."""
        self.load(site_dir, outcomes=self.training_outcomes(), max_epochs=1)

    def split(self, n: int, stratify: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        idx = np.arange(n)
        if n < 2:
            return idx, idx[:0]
        if stratify is not None and (np.unique(stratify, return_counts=True)[1].min() < 2 or np.unique(stratify).size < 2):
            stratify = None
        d = self.cfg.data
        return train_test_split(idx, test_size=d.val_fraction, random_state=d.split_seed, stratify=stratify)

    def split_recordings(self, data: PSGSite, source: Path, stratify: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """(train, val, test) recording indices: recordings.csv's fixed split when it has one, else `split`."""
        if data.split is None:
            return (*self.split(len(data.record_ids), stratify), np.zeros(0, dtype=int))
        strata = np.zeros(len(data.record_ids)) if stratify is None else stratify
        return split_rows(data.split, strata, self.cfg.data.val_fraction, self.cfg.data.split_seed, source)

    def channel_modality(self) -> torch.Tensor:
        """(C,) long: index in SLEEP_MODALITIES of each channel slot's modality."""
        return torch.tensor([SLEEP_MODALITIES.index(slot_modality(s)) for s in self.cfg.data.channel_slots])

    def build_pretrain_model(self) -> nn.Module:
        """The contrastive pretrainer on the same encoder (config `model:`), projection `pretrain.projection_dim`."""
        from shared.models.registry import build_model, model_params

        encoder = model_params("set_transformer_contrastive").model_fields  # the encoder's keys, not the task head's
        params = {k: v for k, v in self.model_params().items() if k in encoder}
        if self.cfg.pretrain.projection_dim is not None:
            params["projection_dim"] = self.cfg.pretrain.projection_dim
        return build_model("set_transformer_contrastive", **params)

    def pretrain_loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """InfoNCE between the modalities (BAS, RESP, EKG, EMG) of each 30-s epoch, the recording's
        other epochs as negatives (temperature `pretrain.temperature`, default 0.07)."""
        x, channel_valid, epoch_valid = batch[0], batch[1].bool(), batch[2].bool()
        net = getattr(model, "_module", model)  # Opacus' GradSampleModule: its hooks sit on the inner layers
        modality = self.channel_modality().to(x.device)
        z = net.epoch_embeddings(x, channel_valid, epoch_valid, modality, PATCHES_PER_EPOCH)  # (B, M, N, D)
        present = net.modality_present(channel_valid, modality)  # (B, M)
        return within_sample_info_nce(z.float(), present, epoch_valid, net.modalities, self.cfg.pretrain.temperature)


class SleepStagingTask(SleepTask):
    """Dataset tensors: x (R, C, N*6, 640), channel_valid (R, C), epoch_valid (R, N),
    epoch_onset_s (R, N) (seconds from the PSG start, NaN on padding), stages (R, N)."""

    name = "sleep_staging"
    kind = "multiclass"
    data_config = SleepStagingDataConfig
    models = ("set_transformer_staging",)
    primary_metric = "kappa"
    allowed_losses = STAGING_LOSSES
    default_loss = "weighted_ce"

    def __init__(self, cfg) -> None:  # type: ignore[no-untyped-def]
        super().__init__(cfg)
        self.criterion: nn.Module | None = None

    def input_dims(self) -> dict[str, int]:
        return {"n_classes": len(STAGE_NAMES)}

    @staticmethod
    def dataset(site: PSGSite, idx: np.ndarray | None = None) -> TensorDataset:
        idx = np.arange(len(site.record_ids)) if idx is None else idx
        return TensorDataset(
            torch.from_numpy(site.signals[idx]),
            torch.from_numpy(site.channel_valid[idx]),
            torch.from_numpy(site.epoch_valid[idx]),
            torch.from_numpy(site.epoch_onset_s[idx]),
            torch.from_numpy(site.stages[idx]),
        )

    def build_criterion(self) -> nn.Module:
        """The configured loss; weighted_ce/focal_ce get public class weights (`train.loss_params.weight`, else
        `REFERENCE_STAGE_FRACTIONS` inverted, mean 1): the site's own stage counts are outside the DP guarantee."""
        from shared.losses.registry import build_loss

        t = self.cfg.train
        if t.loss == "ce":
            return build_loss("ce", **t.loss_params)
        inverse = 1.0 / torch.tensor(REFERENCE_STAGE_FRACTIONS, dtype=torch.float64)
        params = {"weight": (inverse / inverse.mean()).float(), **t.loss_params}
        params["weight"] = torch.as_tensor(params["weight"], dtype=torch.float32)
        return build_loss(t.loss, **params)

    def prepare_site(self, site_dir: Path, site: str, state_dir: Path) -> SiteData:
        data = self.load(site_dir)
        train_idx, val_idx, test_idx = self.split_recordings(data, site_dir)
        self.criterion = self.build_criterion()
        info = {**data.counts, "train_recordings": len(train_idx), "val_recordings": len(val_idx), "test": len(test_idx)}
        test = self.dataset(data, test_idx) if len(test_idx) else None
        return SiteData(self.dataset(data, train_idx), self.dataset(data, val_idx), info, test)

    def prediction_inputs(self, data_dir: Path, encoder_dir: Path | None = None) -> tuple[np.ndarray, TensorDataset]:
        """New recordings (hypnogram_file optional; no encoder needed): ids and the dataset."""
        data = self.load(data_dir, require_hypnogram=False)
        return data.record_ids, self.dataset(data)

    def prediction_frame(self, record_ids: np.ndarray, dataset: TensorDataset, outputs: np.ndarray) -> pd.DataFrame:
        """One row per real epoch: record_id, epoch (0-based within the kept window), onset_s
        (seconds from the PSG start), stage (predicted name), p_W ... p_R. `outputs`: the
        forward logits (R, N, 5) in dataset order."""
        valid = dataset.tensors[2].numpy()
        onsets = dataset.tensors[3].numpy()
        logits = torch.as_tensor(outputs).float()
        probs = torch.softmax(logits, dim=-1).numpy()
        rec, epoch = np.nonzero(valid)
        frame = pd.DataFrame(
            {
                self.id_column: np.asarray(record_ids)[rec],
                "epoch": epoch,
                "onset_s": onsets[rec, epoch],
                "stage": np.asarray(STAGE_NAMES)[probs[rec, epoch].argmax(-1)],
            }
        )
        for k, name in enumerate(STAGE_NAMES):
            frame[f"p_{name}"] = probs[rec, epoch, k]
        return frame

    def forward(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return model(batch[0], batch[1], batch[2])  # (B, N, 5)

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.criterion is None:  # prepare_site builds it; a site served from its data cache builds it here
            with torch.inference_mode(False):  # maybe inside an evaluation: its class weights must be normal tensors
                self.criterion = self.build_criterion()
        logits = self.forward(model, batch).float()
        return self.criterion.to(logits.device)(logits, batch[-1])

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """accuracy, macro_f1, kappa (+ CIs) over scored epochs."""
        stages = np.asarray(targets).astype(np.int64)
        predicted = np.asarray(outputs).argmax(-1)
        report: dict[str, float] = {}
        for name, fn in (("accuracy", accuracy), ("macro_f1", macro_f1), ("kappa", cohen_kappa)):
            add_with_ci(report, name, _scored(fn), stages, predicted, n_boot=N_BOOT, seed=self.cfg.seed)
        return report

    def site_report(self, targets: np.ndarray, outputs: np.ndarray, metrics: dict[str, float]) -> dict[str, Any]:
        """sleep_staging.json (the metrics, per-stage F1, confusion matrix) and its confusion-matrix figure."""
        stages = np.asarray(targets).astype(np.int64)
        predicted = np.asarray(outputs).argmax(-1)
        keep = stages != UNSCORED
        y, p = stages[keep], predicted[keep]
        matrix = confusion(y, p, len(STAGE_NAMES))
        f1 = per_class_f1(y, p, len(STAGE_NAMES))
        report = {
            **metrics,
            "recordings": int(stages.shape[0]),
            "scored_epochs": int(keep.sum()),
            "per_stage_f1": {name: (float(v) if np.isfinite(v) else None) for name, v in zip(STAGE_NAMES, f1)},
            "confusion": {"rows_scored_columns_predicted": list(STAGE_NAMES), "counts": matrix.tolist()},
        }
        title = f"sleep staging (kappa {metrics['kappa']:.2f})" if "kappa" in metrics else "sleep staging"
        return {"sleep_staging.json": report, "sleep_staging_confusion.png": _confusion_figure(matrix, STAGE_NAMES, title)}


class SleepDiagnosisTask(SleepTask):
    """Dataset tensors: x (R, C, N*6, 640), channel_valid (R, C), epoch_valid (R, N),
    demographics (R, 2), times (R, K) days, events (R, K) 0/1; targets() = (B, K, 2) [time, event]."""

    name = "sleep_diagnosis"
    kind = "survival"
    data_config = SleepDiagnosisDataConfig
    models = ("set_transformer_diagnosis",)
    primary_metric = "c_index"
    allowed_losses = DIAGNOSIS_LOSSES
    default_loss = "coxph"

    def __init__(self, cfg) -> None:  # type: ignore[no-untyped-def]
        super().__init__(cfg)
        from shared.losses.registry import build_loss

        self.criterion = build_loss("coxph", **cfg.train.loss_params)

    @property
    def outcomes(self) -> tuple[str, ...]:
        return tuple(self.cfg.data.outcomes)

    def training_outcomes(self) -> tuple[str, ...]:
        return self.outcomes

    def input_dims(self) -> dict[str, int]:
        return {"n_outcomes": len(self.outcomes), "n_demographics": 2}

    @staticmethod
    def dataset(site: PSGSite, n_outcomes: int, idx: np.ndarray | None = None) -> TensorDataset:
        idx = np.arange(len(site.record_ids)) if idx is None else idx
        times = site.times if site.times.shape[1] else np.zeros((len(site.record_ids), n_outcomes))
        events = site.events if site.events.shape[1] else np.zeros((len(site.record_ids), n_outcomes))
        return TensorDataset(
            torch.from_numpy(site.signals[idx]),
            torch.from_numpy(site.channel_valid[idx]),
            torch.from_numpy(site.epoch_valid[idx]),
            torch.from_numpy(demographics(site)[idx]),
            torch.from_numpy(times[idx].astype(np.float32)),
            torch.from_numpy(events[idx].astype(np.float32)),
        )

    def prepare_site(self, site_dir: Path, site: str, state_dir: Path) -> SiteData:
        data = self.load(site_dir, outcomes=self.outcomes)
        train_idx, val_idx, test_idx = self.split_recordings(data, site_dir, stratify=data.events.max(axis=1))
        info = {
            **data.counts,
            "train_recordings": len(train_idx),
            "val_recordings": len(val_idx),
            "events": {o: int(data.events[:, k].sum()) for k, o in enumerate(self.outcomes)},
        }
        info["test"] = len(test_idx)
        n = len(self.outcomes)
        test = self.dataset(data, n, test_idx) if len(test_idx) else None
        return SiteData(self.dataset(data, n, train_idx), self.dataset(data, n, val_idx), info, test)

    def prediction_inputs(self, data_dir: Path, encoder_dir: Path | None = None) -> tuple[np.ndarray, TensorDataset]:
        """New recordings (no hypnogram or outcome columns needed): ids and the dataset."""
        data = self.load(data_dir, require_hypnogram=False)
        return data.record_ids, self.dataset(data, len(self.outcomes))

    def prediction_frame(self, record_ids: np.ndarray, dataset: TensorDataset, outputs: np.ndarray) -> pd.DataFrame:
        """One row per recording: record_id, risk_<outcome> (log relative hazard, higher = earlier)."""
        frame = pd.DataFrame({self.id_column: np.asarray(record_ids)})
        for k, outcome in enumerate(self.outcomes):
            frame[f"risk_{outcome}"] = np.asarray(outputs)[:, k]
        return frame

    def forward(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return model(batch[0], batch[1], batch[2], batch[3])  # (B, K)

    def targets(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([batch[4], batch[5]], dim=-1)  # (B, K, 2): time, event

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        risks = self.forward(model, batch).float()
        return self.criterion(risks, batch[4], batch[5])

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """c_index (mean over outcomes, + bootstrap CI over recordings)."""
        targets = np.asarray(targets, dtype=float)
        times, events, risks = targets[..., 0], targets[..., 1], np.asarray(outputs, dtype=float)
        report: dict[str, float] = {}
        add_with_ci(report, "c_index", _mean_c_index, times, events, risks, n_boot=N_BOOT, seed=self.cfg.seed)
        return report

    def site_report(self, targets: np.ndarray, outputs: np.ndarray, metrics: dict[str, float]) -> dict[str, Any]:
        """sleep_diagnosis.json: the metrics and the C-index of each outcome."""
        targets = np.asarray(targets, dtype=float)
        times, events, risks = targets[..., 0], targets[..., 1], np.asarray(outputs, dtype=float)
        per_outcome = {}
        for k, outcome in enumerate(self.outcomes):
            try:
                per_outcome[outcome] = c_index(times[:, k], events[:, k], risks[:, k])
            except ValueError:
                per_outcome[outcome] = None
        return {"sleep_diagnosis.json": {
            **metrics, "recordings": int(times.shape[0]), "events": events.sum(0).astype(int).tolist(),
            "c_index_per_outcome": per_outcome,
        }}
