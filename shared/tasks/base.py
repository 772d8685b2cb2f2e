"""A task ties together data loading, model, loss, prediction and metrics for one use case.

Both the coordinating center and every site build the model from the config alone
(`build_model`), so all share one parameter layout before the first weights are sent. Site data
is prepared at the site (`prepare_site`): loaded, split, featurised with encoders fitted on the
site's training split, which are saved in the site's state folder and never leave it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from shared.config_schema import DataConfig, RunConfig, Section

# aggregate validation scalars a binary task's site reports (all on the outgoing whitelist)
BINARY_REPORTED_METRICS = frozenset({
    "auroc", "auprc", "brier", "ece", "sens_at_spec", "threshold",
    "auroc_ci_low", "auroc_ci_high", "auprc_ci_low", "auprc_ci_high", "brier_ci_low", "brier_ci_high",
})


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


class NoModelOptions(Section):
    """Keys of the config's `model:` section that the task reads itself (none by default)."""


class Task(ABC):
    """What the center, a site, `fedcare predict` and the explainers call on a task. A new task is a subclass
    and one line in shared/tasks/registry.py."""

    name: str
    kind: str  # "binary" | "multiclass" | "survival"
    primary_metric: str = "auroc"  # shown per round and weighted across sites ("kappa", "c_index", ...)
    id_column: str = "id"  # identifier column of `fedcare predict` output
    default_loss: str = "bce"  # a train.loss the task accepts (what `fedcare synth` configures)
    data_config: ClassVar[type[DataConfig]] = DataConfig  # the task's `data:` section (shared/config_schema.py)
    models: ClassVar[tuple[str, ...]] = ()  # model names (shared/models/registry.py) the task can build
    model_options: ClassVar[type[Section]] = NoModelOptions  # `model:` keys the task reads, beside the model's
    pretrainable: ClassVar[bool] = False  # has a contrastive pretraining phase (config `pretrain:`)
    fixed_test_split: ClassVar[bool] = False  # sites may hold a fixed test split (`fedcare evaluate`)
    site_fitted_inputs: ClassVar[bool] = True  # prediction needs the encoders a site fitted (`fedcare predict --encoder`)
    has_site_report: ClassVar[bool] = False  # `site_report` makes files (the site computes its metrics for them)

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def input_dims(self) -> dict[str, int]:
        """Model input sizes derived from the config and the task's fixed schema (no data)."""

    def model_params(self) -> dict[str, Any]:
        """The config's model parameters, less the keys the task reads itself (`model_options`)."""
        return {k: v for k, v in self.cfg.model.params.items() if k not in self.model_options.model_fields}

    def build_model(self) -> nn.Module:
        from shared.models.registry import build_model

        return build_model(self.cfg.model.name, **self.model_params(), **self.input_dims())

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
    def prediction_inputs(self, data_dir: Path, encoder_dir: Path) -> tuple[np.ndarray, TensorDataset]:
        """(ids, dataset) of every patient in `data_dir`, featurised with the encoders the site fitted and
        saved in `encoder_dir` at training (`fedcare predict`, the explainers); the labels may be absent."""

    @abstractmethod
    def forward(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Model outputs for a batch (logits / risks)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor: ...

    @abstractmethod
    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """Whitelisted aggregate scalars computed at the site."""

    def site_report(self, targets: np.ndarray, outputs: np.ndarray, metrics: dict[str, float]) -> dict[str, Any]:
        """Site-only report files of an evaluation: file name -> a JSON-ready dict (*.json) or a matplotlib
        Figure (*.png). The caller writes them into the site's reports folder (shared.plots.write_report_files);
        nothing of them is sent. None by default."""
        return {}

    def targets(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return batch[-1]

    # -- the optional pretraining phase (config `pretrain:`; only where `pretrainable`) ------------------
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
