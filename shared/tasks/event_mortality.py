"""ICU mortality from clinical event sequences + static features (event transformer, seed 002)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from shared.config_schema import EventDataConfig
from shared.data.event_features import EventEncoder, EventTensors, encode_events, event_dim, static_dim
from shared.data.events import load_event_site
from shared.data.splits import split_rows
from shared.data.synth import synthesize_sites
from shared.data.text_embedding import make_text_embedder, text_model_dim
from shared.tasks.base import BINARY_REPORTED_METRICS as REPORTED_METRICS
from shared.tasks.base import SiteData, Task

ENCODER_FILE = "event_encoder.json"


class EventMortalityTask(Task):
    name = "event_mortality"
    kind = "binary"
    data_config = EventDataConfig
    models = ("event_transformer",)
    id_column = "stay_id"

    def input_dims(self) -> dict[str, int]:
        d = self.cfg.data
        return {"event_dim": event_dim(text_model_dim(d.text_model, d.text_dim)), "static_dim": static_dim()}

    def synthesize(self, out_dir: Path, sites: list[str], seed: int) -> None:
        synthesize_sites("event_mortality", out_dir, sites, seed, self.cfg.data.synth_sizes)

    def encode(self, site_dir: Path, site: str, state_dir: Path, fit: bool) -> tuple[EventTensors, dict]:
        data = load_event_site(site_dir, site)
        enc_path = state_dir / ENCODER_FILE
        stays = data.stays
        labels = stays["hospital_expire_flag"].to_numpy()
        d = self.cfg.data
        train_idx, val_idx, test_idx = split_rows(data.split, labels, d.val_fraction, d.split_seed, site_dir)
        if fit or not enc_path.is_file():  # public reference scalers, not fitted on the site's patients (issue 17)
            encoder = EventEncoder.reference(self.cfg.data.standardize, self.cfg.source)
            encoder.save(enc_path)
        else:
            encoder = EventEncoder.load(enc_path)
        embedder = make_text_embedder(self.cfg.data.text_model, self.cfg.data.text_dim, state_dir / "embeddings")
        tensors = encode_events(stays, data.events, encoder, embedder, self.cfg.data.max_events)
        info = {
            "dropped": dict(data.dropped),
            "stays": int(len(stays)),
            "truncated_stays": tensors.truncated_stays,
            "max_events": self.cfg.data.max_events,
            "split": (train_idx, val_idx, test_idx),
        }
        return tensors, info

    def check_site(self, site_dir: Path, site: str) -> None:
        load_event_site(site_dir, site)

    def prepare_site(self, site_dir: Path, site: str, state_dir: Path) -> SiteData:
        tensors, info = self.encode(site_dir, site, state_dir, fit=True)
        train_idx, val_idx, test_idx = info.pop("split")
        info |= {"train": int(train_idx.size), "val": int(val_idx.size), "test": int(test_idx.size)}
        test = self.dataset(tensors, test_idx) if test_idx.size else None
        return SiteData(self.dataset(tensors, train_idx), self.dataset(tensors, val_idx), info, test)

    def prediction_inputs(self, data_dir: Path, encoder_dir: Path) -> tuple[np.ndarray, TensorDataset]:
        """New stays (label column optional) encoded with a site's saved encoder."""
        data = load_event_site(data_dir, require_label=False)
        encoder = EventEncoder.load(encoder_dir / ENCODER_FILE)
        embedder = make_text_embedder(self.cfg.data.text_model, self.cfg.data.text_dim, encoder_dir / "embeddings")
        tensors = encode_events(data.stays, data.events, encoder, embedder, self.cfg.data.max_events)
        return tensors.stay_ids, self.dataset(tensors)

    @staticmethod
    def dataset(t: EventTensors, idx: np.ndarray | None = None) -> TensorDataset:
        idx = np.arange(len(t.labels)) if idx is None else idx
        return TensorDataset(
            torch.from_numpy(t.events[idx]),
            torch.from_numpy(t.valid[idx]),
            torch.from_numpy(t.statics[idx]),
            torch.from_numpy(t.hours[idx]),
            torch.from_numpy(t.labels[idx]),
        )

    def forward(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        events, valid, statics = batch[0], batch[1], batch[2]
        return model(events, valid, statics)

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        logits = self.forward(model, batch).float()
        return nn.functional.binary_cross_entropy_with_logits(logits, batch[-1].float())

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        from shared.metrics import binary_report, calibration_bins

        probs = 1.0 / (1.0 + np.exp(-outputs))
        report = binary_report(targets, probs, n_boot=200, seed=self.cfg.seed)
        # reliability-curve bins holding >= 10 patients (smaller ones are never sent)
        return {k: v for k, v in report.items() if k in REPORTED_METRICS} | calibration_bins(targets, probs)
