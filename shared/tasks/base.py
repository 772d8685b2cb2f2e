"""A task ties together data loading, model, loss, prediction and metrics for one use case.

Both the coordinating center and every site build the model from the config alone
(`build_model`), so all share one parameter layout before the first weights are sent. Site data
is prepared at the site (`prepare_site`): loaded, split, featurised with encoders fitted on the
site's training split, which are saved in the site's state folder and never leave it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from shared.config import RunConfig
from shared.errors import InputError

# aggregate validation scalars a binary task's site reports (all on the outgoing whitelist)
BINARY_REPORTED_METRICS = frozenset({
    "auroc", "auprc", "brier", "ece", "sens_at_spec", "threshold",
    "auroc_ci_low", "auroc_ci_high", "auprc_ci_low", "auprc_ci_high", "brier_ci_low", "brier_ci_high",
})


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int, source: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val), stratified by label when each class has at least two rows. A site too
    small to give both splits a row is an InputError naming `source` (the site folder)."""
    from sklearn.model_selection import train_test_split

    n_val = math.ceil(val_fraction * len(labels))  # sklearn's own rounding
    if n_val < 1 or len(labels) - n_val < 1:
        raise InputError(source, None, f"{len(labels)} patient(s) cannot be split into training and validation "
                                       f"(val_fraction {val_fraction:g}): the site needs more")
    idx = np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if len(counts) > 1 and counts.min() >= 2 else None
    return train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=stratify)


@dataclass
class SiteData:
    train: Dataset
    val: Dataset
    info: dict[str, Any] = field(default_factory=dict)  # counted drops, caps: stays at the site
    test: Dataset | None = None  # a fixed test split (e.g. a `split` column); used only by the final test evaluation

    @property
    def n_train(self) -> int:
        return len(self.train)  # type: ignore[arg-type]

    @property
    def n_val(self) -> int:
        return len(self.val)  # type: ignore[arg-type]


class Task(ABC):
    name: str
    kind: str  # "binary" | "multiclass" | "survival"
    primary_metric: str = "auroc"  # shown per round and weighted across sites ("kappa", "c_index", ...)
    id_column: str = "id"  # identifier column of `fedcare predict` output
    default_loss: str = "bce"  # a train.loss the task accepts (what `fedcare synth` configures)
    metrics_write_site_report: bool = False  # `metrics` also writes a report into the site's state folder

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def input_dims(self) -> dict[str, int]:
        """Model input sizes derived from the config and the task's fixed schema (no data)."""

    def build_model(self) -> nn.Module:
        from shared.models.registry import build_model

        return build_model(self.cfg.model.name, **self.cfg.model.params, **self.input_dims())

    @abstractmethod
    def synthesize(self, out_dir: Path, sites: list[str], seed: int) -> None:
        """Write synthetic site folders in the on-disk format `prepare_site` reads."""

    @abstractmethod
    def prepare_site(self, site_dir: Path, site: str, state_dir: Path) -> SiteData: ...

    def check_site(self, site_dir: Path, site: str) -> None:
        """Validate a site folder (raises InputError). `fedcare simulate` calls it for every site
        before the federation starts, so bad data stops the command with one line instead of
        failing inside a simulated hospital. Default: the full preparation in a scratch folder."""
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            self.prepare_site(site_dir, site, Path(scratch))

    @abstractmethod
    def forward(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Model outputs for a batch (logits / risks)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor: ...

    @abstractmethod
    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """Whitelisted aggregate scalars computed at the site."""

    def targets(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return batch[-1]

    # -- the optional pretraining phase (config `pretrain:`; shared.config.PRETRAINABLE_TASKS) ------
    def build_pretrain_model(self) -> nn.Module:
        """The model trained in the pretraining phase; its `encoder` is the task model's `encoder`."""
        raise NotImplementedError(f"task {self.name} has no pretraining phase")

    def pretrain_loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Self-supervised loss of a batch of the site's training dataset (labels unused); a mean of
        per-sample terms, each depending on its own sample only (sample-level DP)."""
        raise NotImplementedError(f"task {self.name} has no pretraining phase")

    @staticmethod
    def load_pretrained_encoder(model: nn.Module, pretrained_state: dict[str, torch.Tensor]) -> int:
        """Copy the pretrained `encoder.*` weights into `model.encoder`; returns how many tensors."""
        encoder = {k.removeprefix("encoder."): v for k, v in pretrained_state.items() if k.startswith("encoder.")}
        model.encoder.load_state_dict(encoder)  # strict: the same encoder layout
        return len(encoder)
