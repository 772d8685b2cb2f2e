"""Server-side optimisers (server/server_optimizer.py) and their Flower strategy (server/strategy.py)."""

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from rich.console import Console

from server.history import RunHistory
from server.server_optimizer import DEFAULTS, ServerOptimized, ServerOptimizer
from server.strategy import make_strategy
from shared.config import config_from_dict
from shared.errors import InputError

SITES = ["site_a", "site_b"]


def _weights(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, value, dtype=np.float32), "count": np.array([7], dtype=np.int64)}


def test_fedavgm_without_momentum_at_lr_1_is_fedavg_and_momentum_accumulates() -> None:
    plain = ServerOptimizer.create("fedavgm", lr=1.0, momentum=0.0)
    assert np.allclose(plain.step(_weights(1.0), _weights(1.5))["w"], 1.5)
    heavy = ServerOptimizer.create("fedavgm", lr=1.0, momentum=0.5)
    first = heavy.step(_weights(0.0), _weights(1.0))["w"]  # m = 1
    second = heavy.step({"w": first, "count": np.array([7])}, {"w": first + 1.0, "count": np.array([8])})  # m = 0.5 + 1
    assert np.allclose(first, 1.0) and np.allclose(second["w"], 2.5)
    assert second["count"].tolist() == [8] and second["w"].dtype == np.float32  # counters take the mean, dtypes kept


def test_adam_at_tiny_tau_takes_sign_steps_and_a_large_tau_keeps_noise_small() -> None:
    """The DP problem: at tau ~ 0 Adam's first step moves every coordinate by lr, whatever the size of Δ (noise
    included); with tau above the update scale a small (noisy) Δ gives a proportionally small step."""
    current = {"w": np.zeros(3)}
    averaged = {"w": np.array([1e-4, -2.0, 5e-3])}
    sign_step = ServerOptimizer("fedadam", lr=0.1, momentum=0.9, tau=1e-9).step(current, averaged)["w"]
    assert np.allclose(sign_step, 0.1 * np.sign(averaged["w"]), rtol=1e-3)
    damped = ServerOptimizer("fedadam", lr=0.1, momentum=0.9, tau=1.0).step(current, averaged)["w"]
    assert abs(damped[0]) < 1e-4 and abs(damped[1]) > 0.05


def test_warm_up_takes_fedavg_steps_then_yogi_adapts() -> None:
    opt = ServerOptimizer("fedyogi", lr=0.2, momentum=0.0, tau=0.0, warmup_rounds=1)
    first = opt.step({"w": np.zeros(2)}, {"w": np.array([0.5, -0.5])})["w"]
    assert np.allclose(first, [0.5, -0.5])  # warm-up: the FedAvg mean itself; v starts at Δ² = 0.25
    second = opt.step({"w": first}, {"w": first + np.array([0.1, 0.1])})["w"]
    # v = 0.25 - 0.01 x (1 - 0.99) x sign(0.25 - 0.01), Δ = 0.1: step 0.2 x 0.1 / sqrt(v)
    assert np.allclose(second - first, 0.2 * 0.1 / np.sqrt(0.25 - 0.01 * 0.01), rtol=1e-9)
    assert ServerOptimizer.create("fedyogi").settings()["lr"] == DEFAULTS["fedyogi"][0]
    with pytest.raises(ValueError, match="unknown server optimiser"):
        ServerOptimizer.create("sgd")


def _reply(node: int, site: str, value: float) -> Message:
    metadata = Metadata(run_id=1, message_id=f"r{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="m",
                        group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    return Message(metadata=metadata, content=RecordDict({
        "metrics": MetricRecord({"num-examples": 10, "epsilon": 1.0, "steps": 1}),
        "site": ConfigRecord({"name": site, "status": "trained", "reason": ""}),
        "arrays": ArrayRecord({"w": Array(np.full(4, value, dtype=np.float32))})}))


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_strategy_steps_from_the_weights_it_sent(tmp_path, name) -> None:
    cfg = config_from_dict({"data": {"sites": SITES}, "strategy": {"name": name, "server_lr": 0.5, "server_momentum": 0.0,
                                                                   "server_tau": 0.0, "server_warmup_rounds": 0}})
    history = RunHistory(tmp_path, SITES, console=Console(file=open("/dev/null", "w")))
    strategy = make_strategy(cfg, history)
    assert isinstance(strategy, ServerOptimized) and strategy.server_optimizer.lr == 0.5
    strategy._sent_arrays = {"w": np.ones(4, dtype=np.float32)}  # what configure_train keeps
    arrays, _ = strategy.aggregate_train(1, [_reply(1, "site_a", 3.0), _reply(2, "site_b", 5.0)])
    w = arrays["w"].numpy()
    # mean 4, Δ = 3: FedAvgM x + 0.5 Δ = 2.5; Adam/Yogi first step x + 0.5 sign(Δ) = 1.5
    assert np.allclose(w, 2.5 if name == "fedavgm" else 1.5, atol=1e-5)


def test_bad_server_settings_name_the_field() -> None:
    with pytest.raises(InputError) as info:
        config_from_dict({"strategy": {"name": "fedadam", "server_momentum": 1.0}})
    assert info.value.field == "strategy.server_momentum"
    with pytest.raises(InputError) as info:
        config_from_dict({"strategy": {"name": "fedadam", "server_lr": 0}})
    assert info.value.field == "strategy.server_lr"
