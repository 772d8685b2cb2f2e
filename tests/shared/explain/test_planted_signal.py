"""On a site where only microbiology events decide the label, a small model trained without DP
(fixed seed) is explained: integrated gradients and feature ablation both rank microbiology first,
far ahead of everything else."""

import pytest
import torch

from shared.explain.ablation import event_transformer_ablation
from shared.explain.cohort import cohort_importance, event_ig_groups
from shared.explain.event_layout import static_mean, static_reference
from shared.explain.integrated_gradients import event_transformer_ig
from tests.shared.explain.explain_fixtures import planted_microbiology_tensors, tiny_config, train_plain


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    tensors = planted_microbiology_tensors(root / "data", n=240, seed=0)
    model = train_plain(tiny_config(root), tensors, epochs=30, seed=0)
    return model, tensors


def test_the_model_learned_the_planted_signal(trained):
    model, (events, valid, statics, labels) = trained
    assert 0.15 < float(labels.mean()) < 0.85  # both classes present
    with torch.no_grad():
        accuracy = ((model(events, valid, statics) > 0).float() == labels).float().mean()
    assert accuracy > 0.95


def test_ig_and_ablation_rank_the_planted_event_type_first(trained):
    model, (events, valid, statics, _) = trained
    ig = event_transformer_ig(model, events, valid, statics, static_mean(statics), n_steps=20, max_steps=640)
    groups, names = event_ig_groups(ig.attributions[0], ig.attributions[1], events)
    by_ig = cohort_importance(groups, names)
    ablation = event_transformer_ablation(model, events, valid, statics, static_reference(statics))
    by_ablation = cohort_importance(ablation.effects, ablation.names)
    for ranking in (by_ig, by_ablation):
        ordered = list(ranking.items())
        assert ordered[0][0] == "microbiology events", ordered[:3]
        assert ordered[0][1] > 1.5 * ordered[1][1]  # first by a clear margin
    assert bool(ig.converged().all()) and int(ig.n_steps.max()) > 20  # the sharp stays needed more steps
