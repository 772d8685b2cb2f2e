"""Tiny sites, models and planted-signal data for the explain tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shared.config import RunConfig, config_from_dict
from shared.data.event_features import EventEncoder, encode_events
from shared.data.event_schema import EVENT_TYPES
from shared.data.events import load_event_site
from shared.data.synth.events import synthesize_event_sites
from shared.data.synth.omics import SYNTHETIC_GENES
from shared.data.synth.visits import TRUTH_FILE, synthesize_visit_sites
from shared.data.text_embedding import CachedEmbedder, HashedBagOfWords
from shared.data.visit_features import VisitEncoder, encode_visits
from shared.data.visits import FEATURES, load_visit_site
from shared.models.registry import build_model
from shared.tasks.registry import build_task

TEXT_DIM = 8
MAX_EVENTS = 24
TINY_MODEL = {"name": "event_transformer", "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "pooling_heads": 2,
              "mlp_hidden": 16, "dropout": 0.0}


def tiny_config(root: Path, sites: list[str] | None = None, sizes: list[int] | None = None) -> RunConfig:
    sites = sites or ["site_a"]
    return config_from_dict(
        {
            "task": "event_mortality",
            "data": {"root": str(root), "sites": sites, "synth_sizes": sizes or [60] * len(sites),
                     "max_events": MAX_EVENTS, "text_dim": TEXT_DIM},
            "model": TINY_MODEL,
        },
        "tiny.yaml",
    )


@dataclass
class TinySite:
    cfg: RunConfig
    site_dir: Path
    state_dir: Path
    ids: np.ndarray
    tensors: tuple[torch.Tensor, ...]  # events, valid, statics, hours, labels


def prepared_site(cfg: RunConfig, root: Path, seed: int = 3) -> TinySite:
    """cfg's task synthesises site_a under root/data, prepares it (encoders into root/state/site_a)
    and encodes it for prediction."""
    task = build_task(cfg)
    task.synthesize(root / "data", ["site_a"], seed=seed)
    state = root / "state" / "site_a"
    task.prepare_site(root / "data" / "site_a", "site_a", state)
    ids, dataset = task.prediction_inputs(root / "data" / "site_a", state)
    return TinySite(cfg, root / "data" / "site_a", state, ids, dataset.tensors)


def tiny_site(root: Path, n: int = 60) -> TinySite:
    """One synthetic event site, prepared (encoder fitted into state_dir) and encoded for prediction."""
    return prepared_site(tiny_config(root / "data", sizes=[n]), root)


RETAIN_MODEL = {"name": "retain", "emb_dim": 8, "alpha_hidden": 8, "beta_hidden": 8, "dropout": 0.0}
MULTIMODAL_FEATURES = list(SYNTHETIC_GENES[:12])


def retain_config(root: Path, sites: list[str] | None = None, sizes: list[int] | None = None,
                  max_visits: int = 8) -> RunConfig:
    sites = sites or ["site_a"]
    return config_from_dict(
        {"task": "retain_aki", "data": {"root": str(root), "sites": sites, "synth_sizes": sizes or [40] * len(sites),
                                        "max_events": max_visits},
         "model": RETAIN_MODEL},
        "tiny_retain.yaml",
    )


def multimodal_config(root: Path, label_type: str = "binary", sizes: list[int] | None = None,
                      blocks: dict[str, list[str]] | None = None, features: list[str] | None = None) -> RunConfig:
    model = {"name": "multimodal", "hidden": 8, "dropout": 0.0, "modality_dropout": 0.0, "label_type": label_type,
             "log1p": True, "features": features or MULTIMODAL_FEATURES}
    return config_from_dict(
        {"task": "multimodal", "data": {"root": str(root), "sites": ["site_a"], "synth_sizes": sizes or [60],
                                        "text_dim": 16, "val_fraction": 0.2},
         "train": {"loss": "bce" if label_type == "binary" else "coxph"},
         "model": model | ({"omics_blocks": blocks} if blocks else {})},
        "tiny_multimodal.yaml",
    )


def planted_creatinine_tensors(root: Path, n: int = 600, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A visit site from the synthetic generator (the AKI logit rests on the recent creatinine course)
    where every other lab is shuffled across all visits (it says nothing about the patient), and
    label = the generator's true AKI logit in its top 30 %."""
    made = synthesize_visit_sites(root, n_sites=1, sizes=[n], seed=seed)[0]
    data = load_visit_site(made)
    truth = pd.read_csv(root / TRUTH_FILE, dtype={"patient_id": str}).set_index("patient_id")["true_logit"]
    rng = np.random.default_rng(seed)
    visits = data.visits.copy()
    for lab in FEATURES:
        if lab != "creatinine":
            visits[lab] = rng.permutation(visits[lab].to_numpy())
    t = encode_visits(visits, data.patients, VisitEncoder.reference(), 12)
    logit = truth.reindex(data.patients).to_numpy()
    labels = torch.from_numpy((logit > np.quantile(logit, 0.7)).astype(np.float32))
    return torch.from_numpy(t.x), torch.from_numpy(t.valid), labels


def train_plain_retain(tensors: tuple[torch.Tensor, ...], epochs: int = 10, seed: int = 0) -> torch.nn.Module:
    """Non-DP AdamW training of a tiny RETAIN (fixed seed; few epochs: the shuffled labs invite overfitting)."""
    x, valid, labels = tensors
    torch.manual_seed(seed)
    model = build_model(n_features=x.shape[-1], **RETAIN_MODEL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(labels), generator=gen).split(64):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[idx], valid[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def tiny_model(cfg: RunConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_task(cfg).build_model().eval()


def planted_microbiology_tensors(root: Path, n: int = 240, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A site where only microbiology events carry the label: event texts are shuffled across all
    events (the text says nothing about the type), microbiology events are removed from a random
    half of the stays, and label = the stay has a microbiology event among its kept events."""
    made = synthesize_event_sites(root, n_sites=1, sizes=[n], seed=seed)[0]
    data = load_event_site(made)
    rng = np.random.default_rng(seed)
    events = data.events.copy()
    events["event_text"] = rng.permutation(events["event_text"].to_numpy())
    events["value"] = np.nan  # values only exist for some types: keep them out of the experiment
    without = rng.choice(data.stays.index.to_numpy(), size=n // 2, replace=False)
    events = events[~((events["event_type"] == "microbiology") & events["stay_id"].isin(without))].reset_index(drop=True)
    encoder = EventEncoder.reference()
    t = encode_events(data.stays, events, encoder, CachedEmbedder(HashedBagOfWords(TEXT_DIM), None), MAX_EVENTS)
    events_t, valid = torch.from_numpy(t.events), torch.from_numpy(t.valid)
    micro = EVENT_TYPES.index("microbiology")
    labels = ((events_t[..., micro] > 0) & valid).any(1).float()
    return events_t, valid, torch.from_numpy(t.statics), labels


def planted_age_tensors(root: Path, n: int = 240, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The same site with label = age above the reference mean (standardised age > 0), nothing else."""
    made = synthesize_event_sites(root, n_sites=1, sizes=[n], seed=seed)[0]
    data = load_event_site(made)
    encoder = EventEncoder.reference()
    t = encode_events(data.stays, data.events, encoder, CachedEmbedder(HashedBagOfWords(TEXT_DIM), None), MAX_EVENTS)
    statics = torch.from_numpy(t.statics)
    return torch.from_numpy(t.events), torch.from_numpy(t.valid), statics, (statics[:, 0] > 0).float()


def train_plain(cfg: RunConfig, tensors: tuple[torch.Tensor, ...], epochs: int = 30, seed: int = 0) -> torch.nn.Module:
    """Non-DP full-batch-ish Adam training of the tiny event transformer (fixed seed)."""
    events, valid, statics, labels = tensors
    model = tiny_model(cfg, seed).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(labels), generator=gen).split(64):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(events[idx], valid[idx], statics[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def tiny_retain() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("retain", n_features=4, emb_dim=8, alpha_hidden=8, beta_hidden=8, dropout=0.0).eval()


def tiny_multimodal(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("multimodal", omics_dim=6, text_dim=5, hidden=8, dropout=0.0, modality_dropout=0.0).eval()


SLEEP_ENCODER = {"preset": "small", "patch_samples": 64, "conv_channels": [4, 8], "norm_groups": 2, "d_model": 16,
                 "channel_heads": 2, "n_heads": 2, "n_layers": 1, "d_ff": 16, "pool_heads": 2, "dropout": 0.0}


def tiny_staging() -> torch.nn.Module:
    """A few-thousand-parameter staging model on 64-sample patches (x: (B, C, N*6, 64))."""
    torch.manual_seed(0)
    return build_model("set_transformer_staging", **SLEEP_ENCODER, lstm_hidden=8, epoch_layers=1, epoch_heads=2,
                       epoch_ff=16).eval()


def tiny_diagnosis(n_outcomes: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("set_transformer_diagnosis", n_outcomes=n_outcomes, **SLEEP_ENCODER, lstm_hidden=8, hidden=8).eval()
