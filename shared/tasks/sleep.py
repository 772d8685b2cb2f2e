"""Sleep staging and sleep-based diagnosis from PSG recordings (SetTransformer, seed 001).

Both tasks read PSG site folders (shared/data/psg.py): one recording is one sample (the DP
privacy unit), in a fixed channel-slot layout x (C, N*6, 640) with channel and epoch masks.

* `SleepStagingTask` ("sleep_staging"): per-epoch stages W/N1/N2/N3/R. Loss ``ce``,
  ``weighted_ce`` or ``focal_ce`` (class weights from the site's training stages; unscored and
  padded epochs ignored). Reports accuracy, macro-F1 and Cohen's kappa over the scored
  validation epochs, each with a 95% bootstrap CI over recordings. Per-stage F1 and the
  confusion matrix (JSON + PNG) are written at the site, in ``<state_dir>/reports/``.
* `SleepDiagnosisTask` ("sleep_diagnosis"): K hazards (one per ``data.outcomes``) from the night
  plus age and sex, CoxPH loss (Breslow ties by default, ``train.loss_params.ties``). Reports the
  C-index averaged over the outcomes with a bootstrap CI; per-outcome C-indices go to the site's
  reports folder.

DP caveat (diagnosis): the Cox partial likelihood couples the samples of a batch through their
risk sets, so a sample's clipped per-sample gradient bounds its own term's contribution but not
its influence on the other samples' terms: the per-sample clipping bound, and with it the
epsilon, is an approximation here (see shared/losses/survival.py). Larger batches bring the risk
sets closer to the full data's.

Nothing is fitted on the data apart from the staging class weights (which stay in memory at the
site), so `prediction_inputs` needs no saved encoder: age is scaled as (age - 50) / 15, sex is
1 for male, 0 for female.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

from shared.data.psg import (
    DEFAULT_SYNTH_MINUTES,
    PATCHES_PER_EPOCH,
    STAGE_NAMES,
    UNSCORED,
    PSGSite,
    load_psg_site,
    slot_modality,
    synthesize_psg_sites,
)
from shared.errors import InputError
from shared.losses.contrastive import within_sample_info_nce
from shared.metrics import accuracy, add_with_ci, c_index, cohen_kappa, confusion, macro_f1, per_class_f1
from shared.models.sleep_heads import SLEEP_MODALITIES
from shared.privacy.atomic_write import write_atomically
from shared.tasks.base import SiteData, Task

REPORTS_DIR = "reports"
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


def _confusion_png(matrix: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=120)
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


class _SleepTask(Task):
    id_column = "record_id"
    allowed_losses: tuple[str, ...] = ()

    def __init__(self, cfg) -> None:  # type: ignore[no-untyped-def]
        super().__init__(cfg)
        if cfg.train.loss not in self.allowed_losses:
            allowed = ", ".join(self.allowed_losses)
            raise InputError(cfg.source, "train.loss", f"{cfg.train.loss!r} does not fit {self.name}; use one of {allowed}")
        self.report_dir: Path | None = None  # set by prepare_site: where site-only reports go

    def synthesize(self, out_dir: Path, sites: list[str], seed: int) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        d = self.cfg.data
        made = synthesize_psg_sites(
            out_dir, n_sites=len(sites), sizes=d.synth_sizes, seed=seed, minutes=d.synth_minutes or DEFAULT_SYNTH_MINUTES
        )
        for path, site in zip(made, sites):
            if path.name != site:
                if (out_dir / site).exists():
                    shutil.rmtree(out_dir / site)
                path.rename(out_dir / site)

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

    def channel_modality(self) -> torch.Tensor:
        """(C,) long: index in SLEEP_MODALITIES of each channel slot's modality."""
        return torch.tensor([SLEEP_MODALITIES.index(slot_modality(s)) for s in self.cfg.data.channel_slots])

    def build_pretrain_model(self) -> nn.Module:
        """The contrastive pretrainer on the same encoder (config `model:`), projection `pretrain.projection_dim`."""
        from shared.models.registry import build_model

        params = dict(self.cfg.model.params)
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

    def _write_report(self, name: str, report: dict, png: bytes | None = None) -> None:
        if self.report_dir is None:
            return
        write_atomically(self.report_dir / f"{name}.json", (json.dumps(report, indent=2) + "\n").encode())
        if png is not None:
            write_atomically(self.report_dir / f"{name}_confusion.png", png)


class SleepStagingTask(_SleepTask):
    """Dataset tensors: x (R, C, N*6, 640), channel_valid (R, C), epoch_valid (R, N),
    epoch_onset_s (R, N) (seconds from the PSG start, NaN on padding), stages (R, N)."""

    name = "sleep_staging"
    kind = "multiclass"
    metrics_write_site_report = True
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

    def build_criterion(self, train_stages: np.ndarray | None) -> nn.Module:
        """The configured loss; weighted_ce/focal_ce get inverse-frequency class weights of
        `train_stages` (uniform when None)."""
        from shared.losses.classification import class_weights_from_labels
        from shared.losses.registry import build_loss

        t = self.cfg.train
        if t.loss == "ce":
            return build_loss("ce", **t.loss_params)
        n = len(STAGE_NAMES)
        weight = torch.ones(n) if train_stages is None else class_weights_from_labels(train_stages, n)
        return build_loss(t.loss, **{"weight": weight, **t.loss_params})

    def prepare_site(self, site_dir: Path, site: str, state_dir: Path) -> SiteData:
        data = self.load(site_dir)
        train_idx, val_idx = self.split(len(data.record_ids))
        self.criterion = self.build_criterion(data.stages[train_idx])
        self.report_dir = Path(state_dir) / REPORTS_DIR
        info = {**data.counts, "train_recordings": len(train_idx), "val_recordings": len(val_idx)}
        return SiteData(self.dataset(data, train_idx), self.dataset(data, val_idx), info)

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
        if self.criterion is None:
            self.criterion = self.build_criterion(None)
        logits = self.forward(model, batch).float()
        return self.criterion.to(logits.device)(logits, batch[-1])

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """accuracy, macro_f1, kappa (+ CIs) over scored epochs; also writes the site-only
        report (per-stage F1, confusion matrix JSON + PNG) when prepare_site set a state folder."""
        stages = np.asarray(targets).astype(np.int64)
        predicted = np.asarray(outputs).argmax(-1)
        report: dict[str, float] = {}
        for name, fn in (("accuracy", accuracy), ("macro_f1", macro_f1), ("kappa", cohen_kappa)):
            add_with_ci(report, name, _scored(fn), stages, predicted, n_boot=N_BOOT, seed=self.cfg.seed)
        self.write_site_report(stages, predicted, report)
        return report

    def write_site_report(self, stages: np.ndarray, predicted: np.ndarray, summary: dict[str, float]) -> None:
        keep = stages != UNSCORED
        y, p = stages[keep], predicted[keep]
        matrix = confusion(y, p, len(STAGE_NAMES))
        f1 = per_class_f1(y, p, len(STAGE_NAMES))
        report = {
            **summary,
            "recordings": int(stages.shape[0]),
            "scored_epochs": int(keep.sum()),
            "per_stage_f1": {name: (float(v) if np.isfinite(v) else None) for name, v in zip(STAGE_NAMES, f1)},
            "confusion": {"rows_scored_columns_predicted": list(STAGE_NAMES), "counts": matrix.tolist()},
        }
        png = None
        if self.report_dir is not None:
            title = f"sleep staging (kappa {summary['kappa']:.2f})" if "kappa" in summary else "sleep staging"
            png = _confusion_png(matrix, STAGE_NAMES, title)
        self._write_report("sleep_staging", report, png)


class SleepDiagnosisTask(_SleepTask):
    """Dataset tensors: x (R, C, N*6, 640), channel_valid (R, C), epoch_valid (R, N),
    demographics (R, 2), times (R, K) days, events (R, K) 0/1; targets() = (B, K, 2) [time, event]."""

    name = "sleep_diagnosis"
    kind = "survival"
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
        train_idx, val_idx = self.split(len(data.record_ids), stratify=data.events.max(axis=1))
        self.report_dir = Path(state_dir) / REPORTS_DIR
        info = {
            **data.counts,
            "train_recordings": len(train_idx),
            "val_recordings": len(val_idx),
            "events": {o: int(data.events[:, k].sum()) for k, o in enumerate(self.outcomes)},
        }
        n = len(self.outcomes)
        return SiteData(self.dataset(data, n, train_idx), self.dataset(data, n, val_idx), info)

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
        """c_index (mean over outcomes, + bootstrap CI over recordings); per-outcome C-indices
        are written to the site's report folder."""
        targets = np.asarray(targets, dtype=float)
        times, events, risks = targets[..., 0], targets[..., 1], np.asarray(outputs, dtype=float)
        report: dict[str, float] = {}
        add_with_ci(report, "c_index", _mean_c_index, times, events, risks, n_boot=N_BOOT, seed=self.cfg.seed)
        per_outcome = {}
        for k, outcome in enumerate(self.outcomes):
            try:
                per_outcome[outcome] = c_index(times[:, k], events[:, k], risks[:, k])
            except ValueError:
                per_outcome[outcome] = None
        self._write_report(
            "sleep_diagnosis",
            {
                **report, "recordings": int(times.shape[0]), "events": events.sum(0).astype(int).tolist(),
                "c_index_per_outcome": per_outcome,
            },
        )
        return report
