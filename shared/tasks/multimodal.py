"""Outcome from omics + clinical notes (multimodal model, seed 003); binary or survival labels.

Run config (every key below sits in the `model:` section, beside the model's own hyper-parameters,
which the model builder reads and this task ignores):

- `features` (required): the pinned omics panel, a list of column names. Server and sites build
  the model from the config alone, so the panel travels with the run and omics_dim is
  `len(features) * (2 if missing_indicators else 1)` everywhere (shared/data/omics.py).
- `log1p` (default false): log1p before standardisation (counts); `missing_indicators` (default true).
- `omics_blocks` (optional, explanations only): {block name: [pinned features]}, e.g. a pathway or
  an assay; site explanations ablate and rank each block (a feature's value and its missing-value
  indicator go together). Pinned features in no block form "other panel features". Default: one
  block per pinned feature.
- `label_type`: "binary" or "survival". Default: "survival" when `train.loss` is coxph, else
  "binary". Binary runs train with `train.loss` bce, weighted_bce or focal (`train.loss_params`
  go to the loss; weighted_bce takes a public pos_weight from the run config, never the site's label counts)
  and report AUROC, AUPRC, Brier, ECE, sensitivity at 90 % specificity with bootstrap CIs;
  survival runs train with coxph (risk = the model's output) and report the C-index.

Text: each note is embedded by `data.text_model` (a local Hugging Face directory, frozen, CLS
vector; None = hashed bag of words of size `data.text_dim`), cached by SHA-256 in
`<state_dir>/embeddings`, and averaged per patient. A patient's missing modality (no omics row,
no notes) is flagged in `present` and the model predicts from what is there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from torch import nn
from torch.utils.data import TensorDataset

from shared.config_schema import MultimodalDataConfig, RunConfig, Section
from shared.data.omics import (
    EVENT,
    LABEL,
    TIME,
    MultimodalSiteData,
    OmicsPreprocessor,
    load_multimodal_site,
    omics_input_dim,
    patient_text_vectors,
    standardize_text_vectors,
)
from shared.data.omics_schema import LABEL_TYPES
from shared.data.splits import split_rows
from shared.data.synth import synthesize_sites
from shared.data.text_embedding import make_text_embedder, text_model_dim
from shared.errors import InputError
from shared.tasks.base import SiteData, Task

EMBEDDINGS_DIR = "embeddings"
BINARY_LOSSES = ("bce", "weighted_bce", "focal")
SURVIVAL_LOSSES = ("coxph",)
# aggregate validation scalars a site reports (all on the outgoing whitelist)
BINARY_METRICS = frozenset({
    "auroc", "auprc", "brier", "ece", "sens_at_spec", "threshold",
    "auroc_ci_low", "auroc_ci_high", "auprc_ci_low", "auprc_ci_high", "brier_ci_low", "brier_ci_high",
})  # fmt: skip
SURVIVAL_METRICS = frozenset({"c_index", "c_index_ci_low", "c_index_ci_high"})


def label_type_of(cfg: RunConfig) -> str:
    """model.label_type, else survival for a coxph loss and binary otherwise; checked against the loss."""
    params = cfg.model.params
    label_type = params.get("label_type", "survival" if cfg.train.loss in SURVIVAL_LOSSES else "binary")
    if label_type not in LABEL_TYPES:
        raise InputError(cfg.source, "model.label_type", f"one of {', '.join(LABEL_TYPES)}, got {label_type!r}")
    losses = SURVIVAL_LOSSES if label_type == "survival" else BINARY_LOSSES
    if cfg.train.loss not in losses:
        allowed = " or ".join(losses)
        raise InputError(cfg.source, "train.loss", f"{label_type} labels train with {allowed}, not {cfg.train.loss!r}")
    return label_type


def pinned_features(cfg: RunConfig) -> list[str]:
    features = cfg.model.params.get("features")
    if not isinstance(features, list) or not features or not all(isinstance(f, str) and f.strip() for f in features):
        raise InputError(
            cfg.source, "model.features",
            "the multimodal task needs the pinned omics panel: a non-empty list of column names",
        )
    if len(set(features)) != len(features):
        raise InputError(cfg.source, "model.features", "feature names must be unique")
    return list(features)


OTHER_BLOCK = "other panel features"


def omics_blocks_of(cfg: RunConfig, features: list[str]) -> dict[str, list[str]]:
    """model.omics_blocks checked against the pinned panel (see the module docstring)."""
    blocks = cfg.model.params.get("omics_blocks")
    if blocks is None:
        return {feature: [feature] for feature in features}
    if not isinstance(blocks, dict) or not blocks:
        raise InputError(cfg.source, "model.omics_blocks", "expected a mapping: block name -> list of pinned features")
    pinned = set(features)
    for name, members in blocks.items():
        where = f"model.omics_blocks.{name}"
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise InputError(cfg.source, where, "expected a non-empty list of pinned feature names")
        unknown = [m for m in members if m not in pinned]
        if unknown:
            raise InputError(cfg.source, where, f"not in model.features: {', '.join(unknown[:5])}")
    out = {str(name): list(members) for name, members in blocks.items()}
    covered = {m for members in out.values() for m in members}
    rest = [f for f in features if f not in covered]
    if rest:
        out[OTHER_BLOCK] = rest
    return out


class MultimodalModelOptions(Section):
    """Keys of `model:` the task reads (the omics panel and its preprocessing), beside the model's own."""

    label_type: str | None = None  # binary | survival; None: from train.loss (label_type_of)
    log1p: bool = False
    missing_indicators: bool = True
    features: list[str] | None = None  # the pinned omics panel (required; pinned_features)
    omics_blocks: dict[str, list[str]] | None = None  # block name -> pinned features (omics_blocks_of)


class MultimodalTask(Task):
    name = "multimodal"
    id_column = "patient_id"
    data_config = MultimodalDataConfig
    models = ("multimodal",)
    model_options = MultimodalModelOptions

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.kind = label_type_of(cfg)
        self.primary_metric = "auroc" if self.kind == "binary" else "c_index"
        self.log1p = self._flag("log1p", False)
        self.missing_indicators = self._flag("missing_indicators", True)
        if "omics_blocks" in cfg.model.params:
            omics_blocks_of(cfg, self.features)  # a bad block stops the run at config time
        self._loss_module: nn.Module | None = None

    # -- config-only facts (the server knows them without data) ---------------------------
    @property
    def features(self) -> list[str]:
        return pinned_features(self.cfg)

    @property
    def omics_blocks(self) -> dict[str, list[str]]:
        return omics_blocks_of(self.cfg, self.features)

    def _flag(self, key: str, default: bool) -> bool:
        value = self.cfg.model.params.get(key, default)
        if not isinstance(value, bool):
            raise InputError(self.cfg.source, f"model.{key}", f"expected true or false, got {value!r}")
        return value

    def input_dims(self) -> dict[str, int]:
        d = self.cfg.data
        return {
            "omics_dim": omics_input_dim(len(self.features), self.missing_indicators),
            "text_dim": text_model_dim(d.text_model, d.text_dim),
        }

    # -- data ------------------------------------------------------------------------------
    def synthesize(self, out_dir: Path, sites: list[str], seed: int) -> None:
        synthesize_sites("multimodal", out_dir, sites, seed, self.cfg.data.synth_sizes, label=self.kind)

    def _load(self, site_dir: Path, site: str | None, label_type: str | None) -> MultimodalSiteData:
        data = load_multimodal_site(site_dir, self.features, label_type, site)
        if self.log1p and (data.omics.to_numpy() < 0).any():
            col = data.omics.columns[int(np.flatnonzero((data.omics.to_numpy() < 0).any(axis=0))[0])]
            raise InputError(data.omics_path, col, "negative value, but model.log1p is on (log1p needs values >= 0)")
        return data

    def _split(self, data: MultimodalSiteData, site_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        strata = data.labels[LABEL if self.kind == "binary" else EVENT].to_numpy()
        return split_rows(data.split, strata, self.cfg.data.val_fraction, self.cfg.data.split_seed, site_dir)

    def _inputs(self, data: MultimodalSiteData, state_dir: Path) -> list[torch.Tensor]:
        """[omics (N, omics_dim), text (N, D), present (N, 2)] in labels order, scaled with public statistics
        (the run config's, else the shipped reference) and per patient: nothing fitted on the site's data."""
        ids = data.patient_ids
        embedder = make_text_embedder(self.cfg.data.text_model, self.cfg.data.text_dim, state_dir / EMBEDDINGS_DIR)
        text, has_text = patient_text_vectors(data.notes, ids, embedder)
        has_omics = np.isin(ids, data.omics.index)
        raw_omics = data.omics.reindex(ids).to_numpy()  # NaN rows for patients without omics
        prep = self.omics_preprocessor()
        omics = np.zeros((len(ids), prep.dim), dtype=np.float32)
        omics[has_omics] = prep.transform(raw_omics[has_omics])
        text[has_text] = standardize_text_vectors(text[has_text])
        present = np.stack([has_omics, has_text], axis=1).astype(np.float32)
        return [torch.from_numpy(omics), torch.from_numpy(text), torch.from_numpy(present)]

    def omics_preprocessor(self) -> OmicsPreprocessor:
        return OmicsPreprocessor.reference(
            self.features, self.log1p, self.missing_indicators, self.cfg.data.standardize, self.cfg.source)

    def _targets(self, data: MultimodalSiteData) -> torch.Tensor:
        if self.kind == "binary":
            return torch.from_numpy(data.labels[LABEL].to_numpy(dtype=np.float32))  # (N,)
        return torch.from_numpy(data.labels[[TIME, EVENT]].to_numpy(dtype=np.float32))  # (N, 2)

    def prepare_site(self, site_dir: Path, site: str, state_dir: Path) -> SiteData:
        data = self._load(site_dir, site, self.kind)
        train_idx, val_idx, test_idx = self._split(data, site_dir)
        inputs = self._inputs(data, state_dir)
        targets = self._targets(data)
        if self.kind == "binary":
            self._loss_module = None
        present = inputs[2].numpy().astype(bool)
        info: dict[str, Any] = {
            "dropped": dict(data.dropped),
            "patients": int(len(data.labels)),
            "without_omics": int((~present[:, 0]).sum()),
            "without_notes": int((~present[:, 1]).sum()),
            "without_any_modality": int((~present.any(axis=1)).sum()),
            "ignored_omics_columns": len(data.ignored_omics_columns),
            "notes": int(len(data.notes)),
            "train": int(train_idx.size), "val": int(val_idx.size), "test": int(test_idx.size),
        }
        train, val, test = (TensorDataset(*(t[idx] for t in inputs), targets[idx]) for idx in (train_idx, val_idx, test_idx))
        return SiteData(train, val, info, test if test_idx.size else None)

    def prediction_inputs(self, data_dir: Path, encoder_dir: Path) -> tuple[np.ndarray, TensorDataset]:
        """New patients (labels.csv optional) featurised with a site's saved preprocessing and cache.

        The dataset holds (omics, text, present); patients are labels.csv's when present, else every
        patient id found in omics and notes.
        """
        data = self._load(Path(data_dir), None, None)
        inputs = self._inputs(data, Path(encoder_dir))
        return data.patient_ids, TensorDataset(*inputs)

    # -- model, loss, metrics -----------------------------------------------------------------
    def forward(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        omics, text, present = batch[0], batch[1], batch[2]
        return model(omics, text, present)  # (B,) logits or risks

    def _loss(self) -> nn.Module:
        if self._loss_module is None:
            from shared.losses.registry import build_configured_loss

            with torch.inference_mode(False):  # maybe first built inside an evaluation: buffers must be normal tensors
                self._loss_module = build_configured_loss(self.cfg.train.loss, self.cfg.train.loss_params, self.cfg.source)
        return self._loss_module

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.forward(model, batch).float()
        target, loss_fn = batch[-1], self._loss().to(out.device)
        if self.kind == "survival":
            return loss_fn(out, target[:, 0], target[:, 1])
        return loss_fn(out, target.float())

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        from shared.metrics import binary_report, calibration_bins, survival_report

        if self.kind == "survival":
            report = survival_report(targets[:, 0], targets[:, 1], outputs, n_boot=200, seed=self.cfg.seed)
            return {k: v for k, v in report.items() if k in SURVIVAL_METRICS}
        probs = expit(outputs)
        report = binary_report(targets, probs, n_boot=200, seed=self.cfg.seed)
        # reliability-curve bins holding >= 10 patients (smaller ones are never sent)
        return {k: v for k, v in report.items() if k in BINARY_METRICS} | calibration_bins(targets, probs)
