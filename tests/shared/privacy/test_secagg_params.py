import numpy as np
import pytest
import torch
from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_combine, factor_extract, parameters_mod
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from fedcare.configs import CONFIG_DIR
from shared.config import config_from_dict
from shared.errors import InputError
from shared.privacy.secagg_params import derive_secagg_parameters

SITES = ["a", "b", "c"]


def _cfg(sites=SITES, strategy="fedavg", site_dp=False, **secagg):
    return config_from_dict({
        "data": {"sites": sites}, "strategy": {"name": strategy},
        "privacy": {"site_level_dp": {"enabled": site_dp}},
        "secure_aggregation": {"enabled": True, "max_num_examples": 500, **secagg},
    }, "run.yaml")


def test_parameters_are_derived_so_nothing_is_clipped_and_no_sum_wraps():
    p = derive_secagg_parameters(_cfg(weight_bound=8.0))
    assert (p.num_shares, p.reconstruction_threshold) == (3, 2)
    assert p.clipping_range == 8.0 and p.max_weight == 500.0
    assert p.quantization_range == (2**32 - 1) // 3 and 3 * p.quantization_range < p.modulus_range == 2**32
    assert p.quantization_step == pytest.approx(16 / p.quantization_range)
    five = derive_secagg_parameters(_cfg(sites=list("abcde"), num_shares=3))
    assert (five.num_shares, five.reconstruction_threshold, five.quantization_range) == (3, 2, (2**32 - 1) // 5)


@pytest.mark.parametrize("changes, field", [
    ({"clipping_range": 4.0, "weight_bound": 8.0}, "secure_aggregation.clipping_range"),
    ({"max_weight": 100.0}, "secure_aggregation.max_weight"),
    ({"quantization_range": 2**31 - 1}, "secure_aggregation.quantization_range"),  # 3 x 2**31 > 2**32: wraps
    ({"quantization_range": 2**22, "modulus_range": 2**23}, "secure_aggregation.quantization_range"),
    ({"modulus_range": 2**33}, "secure_aggregation.modulus_range"),
    ({"modulus_range": 3 * 2**20}, "secure_aggregation.modulus_range"),
    ({"max_num_examples": None}, "secure_aggregation.max_num_examples"),
    ({"reconstruction_threshold": 1}, "secure_aggregation.reconstruction_threshold"),
    ({"reconstruction_threshold": 3}, "secure_aggregation.reconstruction_threshold"),
    ({"weight_bound": 0.0}, "secure_aggregation.weight_bound"),
])
def test_configs_that_would_lose_data_are_refused_naming_the_field(changes, field):
    with pytest.raises(InputError) as err:
        _cfg(**changes)
    assert field in str(err.value) and "run.yaml" in str(err.value)


@pytest.mark.parametrize("kwargs, field", [
    ({"sites": ["a", "b"]}, "secure_aggregation.enabled"),
    ({"strategy": "fedmedian"}, "strategy.name"),
    ({"site_dp": True}, "privacy.site_level_dp.enabled"),
    ({"sites": list("abcde"), "num_shares": 4}, "secure_aggregation.num_shares"),
    ({"sites": list("abcde"), "num_shares": 6}, "secure_aggregation.num_shares"),
])
def test_unsupported_setups_are_refused(kwargs, field):
    with pytest.raises(InputError, match=field.replace(".", "\\.")):
        _cfg(**kwargs)


def test_update_problem_names_what_would_be_clipped():
    p = derive_secagg_parameters(_cfg(weight_bound=8.0))
    fine = [np.full((3,), 7.9), np.zeros(2)]
    assert p.update_problem(fine, 500) is None
    assert "exceeds clipping_range 8" in p.update_problem([np.full((3,), 9.0)], 500)
    assert p.update_problem([np.full((3,), 9.0)], 250) is None  # scaled by 250/500 before clipping: fits
    assert "num_examples 501 > max_weight 500" in p.update_problem(fine, 501)
    assert "non-finite" in p.update_problem([np.array([np.nan])], 10)


def _secure_sum(params, updates, weights, masked=True):
    """Flower's SecAgg+ arithmetic for one round without dropouts: each site quantises its weighted update,
    the masks cancel in the modular sum, the center dequantises and divides by the summed weights."""
    c, t, m = params.clipping_range, params.quantization_range, params.modulus_range
    total = None
    for update, n in zip(updates, weights):
        q = round(n / params.max_weight * t)
        vec = [a.astype(np.int64) for a in factor_combine(q, quantize([u * (q / t) for u in update], c, t))]
        total = vec if total is None else [x + y for x, y in zip(total, vec)]
    q_total, summed = factor_extract(parameters_mod(total, m))
    values = dequantize(summed, c, t)
    return [(v - (len(updates) - 1) * c) * t / q_total for v in values]


def test_derived_parameters_reproduce_fedavg_within_1e_5():
    rng = np.random.default_rng(0)
    params = derive_secagg_parameters(_cfg(weight_bound=4.0))
    updates = [[rng.uniform(-4, 4, size=(64, 32)), rng.uniform(-4, 4, size=7)] for _ in SITES]
    weights = [500, 260, 31]
    fedavg = [sum(u[i] * n for u, n in zip(updates, weights)) / sum(weights) for i in range(2)]
    for got, want in zip(_secure_sum(params, updates, weights), fedavg):
        assert np.abs(got - want).max() < 1e-5
    # Flower's defaults (clipping_range 8, max_weight 1000, quantization_range 2**22) on weights up to 50:
    # silently clipped, far from FedAvg
    from dataclasses import replace

    big = [[u[0] * 12.5, u[1]] for u in updates]
    defaults = replace(params, clipping_range=8.0, max_weight=1000.0, quantization_range=2**22)
    fedavg_big = sum(u[0] * n for u, n in zip(big, weights)) / sum(weights)
    assert np.abs(_secure_sum(defaults, big, weights)[0] - fedavg_big).max() > 1.0
    with pytest.raises(InputError, match="clipping_range"):
        _cfg(weight_bound=50.0, clipping_range=8.0)


def test_the_center_refuses_an_initial_model_beyond_the_bound_before_training():
    from server.secure_aggregation import check_initial_weights

    cfg = _cfg(weight_bound=1.0)
    params = derive_secagg_parameters(cfg)
    check_initial_weights(cfg, params, {"w": torch.full((2,), 0.5)})
    with pytest.raises(InputError, match="secure_aggregation.weight_bound"):
        check_initial_weights(cfg, params, {"w": torch.tensor([0.5, -1.5])})


def test_the_default_event_model_aggregates_like_fedavg_within_1e_5():
    """The shipped event model and config (weight_bound 16, 3 sites of the synthetic sizes): three
    site updates around the initial weights go through Flower's quantise / sum / dequantise."""
    from shared.config import load_config
    from shared.tasks.registry import build_task

    cfg = load_config(CONFIG_DIR / "event_mortality.yaml")
    cfg.secure_aggregation.enabled, cfg.secure_aggregation.max_num_examples = True, max(cfg.data.synth_sizes)
    params = derive_secagg_parameters(cfg)
    torch.manual_seed(cfg.seed)
    initial = [t.numpy().astype(np.float64) for t in build_task(cfg).build_model().state_dict().values()]
    rng = np.random.default_rng(1)
    updates = [[w + rng.normal(0, 0.05, size=w.shape) for w in initial] for _ in cfg.data.sites]
    weights = [int(n * (1 - cfg.data.val_fraction)) for n in cfg.data.synth_sizes]
    fedavg = [sum(u[i] * n for u, n in zip(updates, weights)) / sum(weights) for i in range(len(initial))]
    worst = max(float(np.abs(got - want).max()) for got, want in zip(_secure_sum(params, updates, weights), fedavg))
    assert worst < 1e-5
