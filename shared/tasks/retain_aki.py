"""Acute kidney injury from a patient's visit sequence of labs (RETAIN, seed 000).

Data: the visit site format of shared/data/visits.py (visits.csv + labels.csv per site). Features
(shared/data/visit_features.py): the eight labs per visit, imputed and standardised with scalers
fitted on the site's training split, saved in the site's state folder as ``retain_encoder.json``.
``data.max_events`` caps the visits per patient (the most recent are kept; fedcare/configs/retain_aki.yaml
sets 32); tensors are padded to min(cap, the site's longest history). Batches are
(x (B, T, F) float32, valid (B, T) bool, aki (B,) float32).

Loss: ``train.loss`` bce, weighted_bce or focal, built by shared.losses with ``train.loss_params``.
weighted_bce takes its ``pos_weight`` from the run config (a public number; the site's own
n_negative / n_positive would be outside the DP guarantee, issue 17).

A brand-new patient (JSON, format in shared/data/visits.py) is scored by `predict_patient`, which
also returns RETAIN's visit attention alpha, variable attention beta and per-(visit, lab)
contributions to the logit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from shared.config_schema import RetainDataConfig, RunConfig
from shared.data.splits import split_rows
from shared.data.synth import synthesize_sites
from shared.data.visit_features import VisitEncoder, VisitTensors, encode_visits
from shared.data.visits import FEATURES, load_visit_site, visits_from_records
from shared.errors import InputError
from shared.losses.registry import build_configured_loss
from shared.models.retain import Retain
from shared.tasks.base import BINARY_REPORTED_METRICS as REPORTED_METRICS
from shared.tasks.base import SiteData, Task

ENCODER_FILE = "retain_encoder.json"
MAX_VISITS = 32  # default cap of `predict_patient` (the task itself uses data.max_events)
# The output bias starts at the log-odds of this AKI rate (not 0, i.e. 50 %): with a zero bias the
# first DP-SGD steps mostly push every logit down along the mean context, which ranks the patients
# with the most abnormal labs lowest, and the noisy, short training rarely recovers from it.
INITIAL_AKI_RATE = 0.15
LOSSES = ("bce", "weighted_bce", "focal")


class RetainAkiTask(Task):
    name = "retain_aki"
    kind = "binary"
    data_config = RetainDataConfig
    models = ("retain",)
    primary_metric = "auroc"
    id_column = "patient_id"

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        t = cfg.train
        if t.loss not in LOSSES:
            raise InputError(cfg.source, "train.loss", f"{t.loss!r} does not fit task retain_aki; one of {', '.join(LOSSES)}")
        self._loss_fn: nn.Module = self._build_loss()

    def input_dims(self) -> dict[str, int]:
        return {"n_features": len(FEATURES)}

    def build_model(self) -> nn.Module:
        model = super().build_model()
        with torch.no_grad():
            model.out.bias.fill_(math.log(INITIAL_AKI_RATE / (1.0 - INITIAL_AKI_RATE)))
        return model

    def synthesize(self, out_dir: Path, sites: list[str], seed: int) -> None:
        synthesize_sites("retain_aki", out_dir, sites, seed, self.cfg.data.synth_sizes)

    # -- data -----------------------------------------------------------------------------
    def prepare_site(self, site_dir: Path, site: str, state_dir: Path) -> SiteData:
        """Load, split by patient (stratified), fit the encoder on the training split, save it."""
        data = load_visit_site(site_dir, site)
        labels = data.labels.to_numpy()
        if len(labels) < 2:
            raise InputError(site_dir, "patient_id", f"needs at least 2 labelled patients, found {len(labels)}")
        d = self.cfg.data
        train_idx, val_idx, test_idx = split_rows(data.split, labels, d.val_fraction, d.split_seed, site_dir)
        encoder = VisitEncoder.reference(self.cfg.data.standardize, self.cfg.source)  # public, not fitted (issue 17)
        encoder.save(Path(state_dir) / ENCODER_FILE)
        tensors = encode_visits(data.visits, data.patients, encoder, self.cfg.data.max_events)
        info = {
            "dropped": dict(data.dropped),
            "patients": int(len(labels)),
            "truncated_patients": tensors.truncated_patients,
            "max_visits": self.cfg.data.max_events,
            "train": int(train_idx.size), "val": int(val_idx.size), "test": int(test_idx.size),
        }
        test = self.dataset(tensors, labels, test_idx) if test_idx.size else None
        return SiteData(self.dataset(tensors, labels, train_idx), self.dataset(tensors, labels, val_idx), info, test)

    def prediction_inputs(self, data_dir: Path, encoder_dir: Path) -> tuple[np.ndarray, TensorDataset]:
        """New patients (visits.csv; labels.csv not read) encoded with a site's saved encoder.
        The dataset's label tensor is NaN (unknown)."""
        data = load_visit_site(data_dir, require_label=False)
        encoder = VisitEncoder.load(Path(encoder_dir) / ENCODER_FILE)
        tensors = encode_visits(data.visits, data.patients, encoder, self.cfg.data.max_events)
        return tensors.patient_ids, self.dataset(tensors, np.full(len(tensors.patient_ids), np.nan))

    @staticmethod
    def dataset(t: VisitTensors, labels: np.ndarray, idx: np.ndarray | None = None) -> TensorDataset:
        idx = np.arange(len(labels)) if idx is None else idx
        return TensorDataset(
            torch.from_numpy(t.x[idx]),
            torch.from_numpy(t.valid[idx]),
            torch.from_numpy(np.asarray(labels, np.float32)[idx]),
        )

    # -- model ----------------------------------------------------------------------------
    def _build_loss(self) -> nn.Module:
        return build_configured_loss(self.cfg.train.loss, self.cfg.train.loss_params, self.cfg.source)

    def forward(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        x, valid = batch[0], batch[1]
        return model(x, valid)

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        logits = self.forward(model, batch).float()
        return self._loss_fn(logits, batch[-1].float())

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        from shared.metrics import binary_report, calibration_bins

        probs = 1.0 / (1.0 + np.exp(-outputs))
        report = binary_report(targets, probs, n_boot=200, seed=self.cfg.seed)
        # reliability bins as the other binary tasks send them (exact path; under DP the histograms carry them)
        return {k: v for k, v in report.items() if k in REPORTED_METRICS} | calibration_bins(targets, probs)


def predict_patient(
    model: Retain,
    visits: object,
    encoder: VisitEncoder,
    max_visits: int = MAX_VISITS,
    source: str | Path = "<patient>",
) -> dict[str, Any]:
    """AKI probability and RETAIN's explanation for one new patient.

    `visits`: parsed JSON, a list of visit objects or {"patient_id": ..., "visits": [...]}
    (format in shared/data/visits.py; bad input raises InputError naming `source` and the field).
    The most recent `max_visits` visits are used, in time order. Returns a JSON-ready dict:
    patient_id, probability, logit, bias (the output bias), features (lab names), n_visits (used),
    dropped_visits (older than the cap), and per used visit: visit_ids, timestamps, alpha (visit
    attention, sums to 1), beta (variable attention, n_visits x emb_dim) and contributions
    (n_visits x features, in logit units on the standardised labs: their sum plus bias is the logit).
    """
    frame = visits_from_records(visits, source)
    patients = frame["patient_id"].drop_duplicates()
    tensors = encode_visits(frame, patients, encoder, max_visits)
    x, valid = torch.from_numpy(tensors.x), torch.from_numpy(tensors.valid)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits, alpha, beta = model.forward_with_attention(x, valid)
            contributions = model.variable_contributions(x, valid)
    finally:
        model.train(was_training)
    n = int(valid[0].sum())
    used = frame.iloc[len(frame) - n :]
    logit = float(logits.reshape(-1)[0])
    return {
        "patient_id": str(patients.iloc[0]),
        "probability": float(torch.sigmoid(torch.tensor(logit))),
        "logit": logit,
        "bias": float(model.out.bias[0].detach()),
        "features": list(FEATURES),
        "n_visits": n,
        "dropped_visits": tensors.dropped_visits,
        "visit_ids": [str(v) for v in used["visit_id"]],
        "timestamps": [t.isoformat() for t in used["timestamp"]],
        "alpha": alpha[0, :n].tolist(),
        "beta": beta[0, :n].tolist(),
        "contributions": contributions[0, :n].tolist(),
    }
