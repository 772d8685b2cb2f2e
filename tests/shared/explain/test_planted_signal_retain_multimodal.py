"""Planted signals (fixed seeds), small models trained without DP:

- RETAIN on the visit generator's site with every lab but creatinine shuffled across visits:
  integrated gradients and feature ablation both rank creatinine first, by a clear margin;
- the multimodal model on the omics generator's site, whose label rests on ten informative genes
  (and on the notes, which are handed to other patients here, so they carry nothing): among the
  omics blocks (the ten informative genes, nine blocks of ten other genes) both methods rank the
  informative block first, and ablation ranks the omics modality above the text.
"""

import numpy as np
import pytest
import torch

from shared.data.omics import LABEL, load_multimodal_site
from shared.data.synth.omics import _INFORMATIVE_GENES, SYNTHETIC_GENES
from shared.data.visits import FEATURES
from shared.explain.ablation import multimodal_ablation, retain_ablation
from shared.explain.cohort import cohort_importance, summed_over_steps
from shared.explain.integrated_gradients import multimodal_ig, retain_ig
from shared.explain.multimodal_explainer import omics_block_columns
from shared.metrics import binary_report
from shared.tasks.registry import build_task
from tests.shared.explain.explain_fixtures import (
    multimodal_config,
    planted_creatinine_tensors,
    prepared_site,
    train_plain_retain,
)

INFORMATIVE = [g for g in SYNTHETIC_GENES if g in _INFORMATIVE_GENES]
OTHER = [g for g in SYNTHETIC_GENES if g not in _INFORMATIVE_GENES]
BLOCKS = {"informative genes": INFORMATIVE, **{f"genes {i + 1}": OTHER[10 * i : 10 * (i + 1)] for i in range(9)}}


def _first_by_margin(ranking: dict[str, float], expected: str, margin: float = 2.0) -> None:
    ordered = list(ranking.items())
    assert ordered[0][0] == expected, ordered[:3]
    assert ordered[0][1] > margin * ordered[1][1], ordered[:3]


@pytest.fixture(scope="module")
def retain_trained(tmp_path_factory):
    tensors = planted_creatinine_tensors(tmp_path_factory.mktemp("planted_retain"), n=600, seed=0)
    return train_plain_retain(tensors, epochs=10, seed=0), tensors


def test_retain_ranks_creatinine_first(retain_trained):
    model, (x, valid, labels) = retain_trained
    with torch.no_grad():
        auroc = binary_report(labels.numpy(), torch.sigmoid(model(x, valid)).numpy(), n_boot=0)["auroc"]
    assert 0.75 < auroc < 0.97  # learned the signal without memorising the shuffled labs
    ig = retain_ig(model, x, valid, n_steps=20, max_steps=160)
    assert bool(ig.converged().all())
    _first_by_margin(cohort_importance(summed_over_steps(ig.attributions[0], valid), list(FEATURES)), "creatinine")
    ablation = retain_ablation(model, x, valid, list(FEATURES))
    _first_by_margin(cohort_importance(ablation.effects, ablation.names), "creatinine")


@pytest.fixture(scope="module")
def multimodal_trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted_mm")
    site = prepared_site(multimodal_config(root / "data", sizes=[300], blocks=BLOCKS, features=list(SYNTHETIC_GENES)),
                         root, seed=0)
    omics, text, present = site.tensors[:3]
    labels = load_multimodal_site(site.site_dir, list(SYNTHETIC_GENES), "binary").labels[LABEL].reindex(site.ids)
    y = torch.from_numpy(labels.to_numpy(np.float32))
    gen = torch.Generator().manual_seed(0)
    other = torch.randperm(len(y), generator=gen)
    text, present = text[other], torch.stack([present[:, 0], present[other, 1]], dim=1)  # notes of other patients
    present[:, 0] = torch.where(present.sum(1) == 0, 1.0, present[:, 0])  # never a patient without any modality
    torch.manual_seed(0)
    model = build_task(site.cfg).build_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(8):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(omics[idx], text[idx], present[idx].bool()), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    groups = omics_block_columns(build_task(site.cfg).omics_blocks, list(SYNTHETIC_GENES), True)
    return model.eval(), (omics, text, present, y), groups


def test_multimodal_ranks_the_informative_genes_first(multimodal_trained):
    model, (omics, text, present, y), groups = multimodal_trained
    assert set(groups) == set(BLOCKS)  # the ten blocks cover the panel
    ig = multimodal_ig(model, omics, text, present, n_steps=20, max_steps=160)
    assert bool(ig.converged().all())
    per_block = torch.stack([ig.attributions[0][:, cols].sum(1) for cols in groups.values()], dim=1)
    _first_by_margin(cohort_importance(per_block, list(groups)), "informative genes")
    ablation = multimodal_ablation(model, omics, text, present, groups)
    by_ablation = cohort_importance(ablation.effects, ablation.names)
    _first_by_margin({g: v for g, v in by_ablation.items() if g in BLOCKS}, "informative genes")
    assert by_ablation["omics"] > 2 * by_ablation["text"]
