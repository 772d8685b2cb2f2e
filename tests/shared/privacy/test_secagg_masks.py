import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.privacy import secagg_masks
from shared.privacy.secagg_masks import STOCK_PSEUDO_RAND_GEN, full_strength_pseudo_rand_gen

REPO = Path(__file__).resolve().parents[3]
SHAPES = [(1,), (3, 4), (), (1000,)]


def _fold_alike(seed: bytes) -> bytes:
    """Another seed Flower's generator cannot tell apart: it XOR-folds the seed to 32 bits."""
    flip = bytes([0x5A, 0xC3, 0x01, 0xFF])
    out = bytearray(seed)
    for i in range(4):
        out[i] ^= flip[i]
        out[4 + i] ^= flip[i]
    return bytes(out)


def test_masks_no_longer_come_from_a_32_bit_seed():
    seed = os.urandom(32)
    other = _fold_alike(seed)
    assert other != seed
    stock_a, stock_b = STOCK_PSEUDO_RAND_GEN(seed, 2**32, SHAPES), STOCK_PSEUDO_RAND_GEN(other, 2**32, SHAPES)
    assert all(np.array_equal(a, b) for a, b in zip(stock_a, stock_b))  # Flower: the same mask
    ours_a, ours_b = full_strength_pseudo_rand_gen(seed, 2**32, SHAPES), full_strength_pseudo_rand_gen(other, 2**32, SHAPES)
    assert not np.array_equal(ours_a[3], ours_b[3])
    assert np.mean(ours_a[3] == ours_b[3]) < 0.01


def test_masks_are_deterministic_uniform_int64_in_the_modulus_with_flowers_shapes():
    seed = os.urandom(44)  # pairwise seeds are base64 ECDH keys, 44 bytes
    first, again = full_strength_pseudo_rand_gen(seed, 2**32, SHAPES), full_strength_pseudo_rand_gen(seed, 2**32, SHAPES)
    assert [a.shape for a in first] == SHAPES and all(a.dtype == np.int64 for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    big = full_strength_pseudo_rand_gen(seed, 2**32, [(200_000,)])[0]
    assert big.min() >= 0 and big.max() < 2**32 and big.max() > 2**32 - 2**24  # reaches the top of the range
    assert abs(big.mean() / 2**32 - 0.5) < 0.01
    small = full_strength_pseudo_rand_gen(seed, 2**8, [(10_000,)])[0]
    assert set(np.unique(small)) == set(range(256))
    with pytest.raises(ValueError, match="power of two"):
        full_strength_pseudo_rand_gen(seed, 1000, SHAPES)


def test_flowers_client_mod_and_server_workflow_use_the_full_strength_generator():
    from importlib import import_module

    for name in ("flwr.common.secure_aggregation.secaggplus_utils", "flwr.client.mod.secure_aggregation.secaggplus_mod",
                 "flwr.server.workflow.secure_aggregation.secaggplus_workflow"):
        assert import_module(name).pseudo_rand_gen is full_strength_pseudo_rand_gen
    assert secagg_masks.PINNED_FLOWER_VERSION == "1.41.0"


def test_another_flower_version_fails_loudly():
    code = ("import importlib.metadata as m; real = m.version; "
            "m.version = lambda name: '1.42.0' if name == 'flwr' else real(name); "
            "import shared.privacy.secagg_masks")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode != 0
    assert "patches Flower 1.41.0" in done.stderr and "installed flwr is 1.42.0" in done.stderr
