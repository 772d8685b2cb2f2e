"""Tabular cohorts: a binary outcome (`tabular_binary`) or a time to event (`tabular_survival`) from
named numeric and categorical covariates, one table per site.

Data: shared/data/tabular.py (format, covariate declaration, DP-safe standardisation from the
config, fixed ``split`` column). Synthetic sites: shared/data/synth/tabular.py.

Models (``model.name``): ``linear`` (logistic regression; for survival the linear predictor of a Cox
model, without intercept) or ``tabular_mlp``. A survival MLP's output layer has no bias either: the
partial likelihood does not depend on a constant, so under DP noise a bias would only drift.

Losses: binary ``bce``, ``weighted_bce`` (its ``pos_weight`` from the run config: public, never the
site's own label counts) or ``focal``; survival ``coxph`` with ``loss_params: {ties: breslow|efron}``
(the risk set is the Poisson batch). Metrics at the sites: binary AUROC, AUPRC, Brier, ECE, sensitivity
at 90 % specificity (bootstrap CIs) and reliability bins; survival the C-index with its CI.

Output (`fedcare predict`): binary ``probability``; survival ``risk_score`` (the log relative hazard,
relative to a patient whose standardised covariates are all 0 at the reference levels) and, with
``--horizons``, survival probabilities from the Breslow baseline hazard the site estimated
(shared/survival_baseline.py).
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

from shared.config_schema import RunConfig, TabularBinaryDataConfig, TabularSurvivalDataConfig
from shared.data.splits import split_rows
from shared.data.synth import synthesize_sites
from shared.data.tabular import TEST_FOLDER, TabularSchema, TabularSite, load_tabular_site, schema_from_config
from shared.errors import InputError
from shared.tasks.base import BINARY_REPORTED_METRICS, SiteData, Task

BINARY_LOSSES = ("bce", "weighted_bce", "focal")
SURVIVAL_LOSSES = ("coxph",)
SURVIVAL_METRICS = frozenset({"c_index", "c_index_ci_low", "c_index_ci_high"})
MODELS = ("linear", "tabular_mlp")


class TabularTask(Task):
    losses: tuple[str, ...] = BINARY_LOSSES
    models = ("linear", "tabular_mlp")
    fixed_test_split = True
    site_fitted_inputs = False  # inputs depend on the config alone: `fedcare predict` needs no site encoder

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.schema: TabularSchema = schema_from_config(cfg)
        self.id_column = self.schema.id_column
        if cfg.train.loss not in self.losses:
            raise InputError(cfg.source, "train.loss", f"{cfg.train.loss!r} does not fit task {self.name}; "
                                                      f"one of {', '.join(self.losses)}")
        if cfg.model.name not in MODELS:
            raise InputError(cfg.source, "model.name", f"task {self.name} runs {' or '.join(MODELS)}, not {cfg.model.name!r}")
        self._loss_module: nn.Module | None = None

    def input_dims(self) -> dict[str, int]:
        return {"n_features": self.schema.n_inputs}

    def synthesize(self, out_dir: Path, sites: list[str], seed: int) -> None:
        synthesize_sites(self.cfg.task, out_dir, sites, seed, self.cfg.data.synth_sizes)

    # -- data ------------------------------------------------------------------------------
    def _strata(self, site: TabularSite) -> np.ndarray:
        assert site.outcome is not None
        return site.outcome if self.kind == "binary" else site.outcome[:, 1]

    def split_rows(self, site: TabularSite) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row indices (train, val, test), each in file order (shared/data/splits.py)."""
        return split_rows(site.split, self._strata(site), self.cfg.data.val_fraction, self.cfg.data.split_seed, site.path)

    def _targets(self, site: TabularSite) -> torch.Tensor:
        assert site.outcome is not None
        return torch.from_numpy(site.outcome)  # binary (N,), survival (N, 2) [time, event]

    def _with_test_folder(self, data: TabularSite, site_dir: Path) -> tuple[TabularSite, np.ndarray]:
        """`data` plus the rows of ``<site_dir>/test/table.csv`` when that folder exists; their indices."""
        if not (Path(site_dir) / TEST_FOLDER).is_dir():
            return data, np.zeros(0, dtype=int)
        extra = load_tabular_site(Path(site_dir) / TEST_FOLDER, self.schema, require_train=False)
        clash = np.isin(extra.ids, data.ids)
        if clash.any():
            raise InputError(extra.path, self.schema.id_column, f"id {str(extra.ids[int(np.flatnonzero(clash)[0])])!r} is also "
                                                                f"in {data.path.name} (ids must be unique across both)")
        assert data.outcome is not None and extra.outcome is not None
        split = None if data.split is None else np.concatenate([data.split, np.full(len(extra.ids), "test")])
        merged = TabularSite(data.path, np.concatenate([data.ids, extra.ids]), np.concatenate([data.x, extra.x]),
                             np.concatenate([data.outcome, extra.outcome]), split)
        return merged, np.arange(len(data.ids), len(merged.ids))

    def prepare_site(self, site_dir: Path, site: str, state_dir: Path) -> SiteData:
        main = load_tabular_site(site_dir, self.schema)
        if len(main.ids) < 2:
            raise InputError(main.path, self.schema.id_column, f"needs at least 2 rows, found {len(main.ids)}")
        data, test_folder_rows = self._with_test_folder(main, site_dir)
        n_main = len(main.ids)
        train, val, test = self.split_rows(main)
        test = np.concatenate([test, test_folder_rows])
        x, y = torch.from_numpy(data.x), self._targets(data)
        if self.kind == "binary":
            self._loss_module = None

        def rows(idx: np.ndarray) -> TensorDataset:
            index = torch.from_numpy(idx)
            return TensorDataset(x[index], y[index])

        info: dict[str, Any] = {"rows": int(len(data.ids)), "train": int(train.size), "val": int(val.size),
                                "test": int(test.size), "fixed_split": main.split is not None,
                                "test_folder_rows": int(len(data.ids) - n_main)}
        return SiteData(rows(train), rows(val), info, rows(test) if test.size else None)

    def prediction_inputs(self, data_dir: Path, encoder_dir: Path) -> tuple[np.ndarray, TensorDataset]:
        """Every row of ``<data_dir>/table.csv`` (outcome columns not needed); nothing site-fitted is used
        (the standardisation is in the config), so `encoder_dir` is not read."""
        data = load_tabular_site(Path(data_dir), self.schema, require_outcome=False)
        return data.ids, TensorDataset(torch.from_numpy(data.x))

    # -- model, loss, metrics -----------------------------------------------------------------
    def forward(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return model(batch[0])  # (B,) logits or log relative hazards

    def _loss(self) -> nn.Module:
        if self._loss_module is None:
            from shared.losses.registry import build_configured_loss

            with torch.inference_mode(False):  # maybe first built inside an evaluation: buffers must be normal tensors
                self._loss_module = build_configured_loss(self.cfg.train.loss, self.cfg.train.loss_params, self.cfg.source)
        return self._loss_module


class TabularBinaryTask(TabularTask):
    name = "tabular_binary"
    kind = "binary"
    data_config = TabularBinaryDataConfig
    primary_metric = "auroc"
    default_loss = "bce"
    losses = BINARY_LOSSES

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        logits = self.forward(model, batch).float()
        return self._loss().to(logits.device)(logits, batch[-1].float())

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        from shared.metrics import binary_report, calibration_bins

        probs = expit(outputs)
        report = binary_report(targets, probs, n_boot=200, seed=self.cfg.seed)
        return {k: v for k, v in report.items() if k in BINARY_REPORTED_METRICS} | calibration_bins(targets, probs)


class TabularSurvivalTask(TabularTask):
    name = "tabular_survival"
    kind = "survival"
    data_config = TabularSurvivalDataConfig
    primary_metric = "c_index"
    default_loss = "coxph"
    losses = SURVIVAL_LOSSES

    def build_model(self) -> nn.Module:
        from shared.models.registry import build_model

        params = self.model_params()
        if self.cfg.model.name == "linear":
            params["bias"] = False
        model = build_model(self.cfg.model.name, **params, **self.input_dims())
        out = getattr(model, "out", None)
        if isinstance(out, nn.Linear) and out.bias is not None:  # the MLP's read-out: no intercept in a Cox model
            model.out = nn.Linear(out.in_features, out.out_features, bias=False)
        return model

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        risk = self.forward(model, batch).float()
        target = batch[-1]
        return self._loss().to(risk.device)(risk, target[:, 0], target[:, 1])

    def metrics(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        from shared.metrics import survival_report

        report = survival_report(targets[:, 0], targets[:, 1], outputs, n_boot=200, seed=self.cfg.seed)
        return {k: v for k, v in report.items() if k in SURVIVAL_METRICS}
