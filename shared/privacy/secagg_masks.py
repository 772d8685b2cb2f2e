"""Full-strength SecAgg+ masks for Flower 1.41.0: why this module patches Flower, in one place.

Flower's SecAgg+ expands every mask seed (a site's 32-byte private seed, or the 32-byte key a pair
of sites agree on by ECDH) with `flwr.common.secure_aggregation.secaggplus_utils.pseudo_rand_gen`,
which XOR-folds the seed to 32 bits and seeds `np.random.RandomState` (Mersenne Twister) with them.
A mask then carries at most 32 bits of entropy: whoever sees a masked vector can search all 2**32
seeds, and Mersenne Twister output is not a cryptographic stream anyway.

This module replaces that function, on both sides, by a ChaCha20 keystream (`cryptography`) keyed
with SHA-256 of a domain tag and the whole seed; each mask entry is 64 keystream bits reduced
modulo the power-of-two `modulus_range`, so it is uniform on [0, modulus_range). The site's mod
(`flwr.client.mod.secure_aggregation.secaggplus_mod`) and the center's workflow
(`flwr.server.workflow.secure_aggregation.secaggplus_workflow`) import the name into their own
modules, so it is replaced there too. Both sides must run this patch (client/app.py and
server/secure_aggregation.py import this module), or the masks no longer cancel and the
aggregate is garbage (never a leak).

The patch is written against Flower 1.41.0 exactly; importing this module with any other version
raises, so an upgrade cannot silently drop or misapply it.
"""

from __future__ import annotations

import hashlib
from importlib import import_module
from importlib.metadata import version
from types import ModuleType

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

PINNED_FLOWER_VERSION = "1.41.0"
MASK_ALGORITHM = "chacha20-sha256/v1"  # what a site states (signed) in its SecAgg+ keys; peers must state the same
STOCK_MASK_ALGORITHM = f"flwr-{PINNED_FLOWER_VERSION}-randomstate32"  # Flower's own 32-bit Mersenne Twister expansion
_DOMAIN = b"fedcare/secagg+/mask/v1"
_NONCE = bytes(16)  # every key is used for one stream only: SHA-256 of a fresh per-round secret

_installed_flower = version("flwr")
if _installed_flower != PINNED_FLOWER_VERSION:
    raise RuntimeError(
        f"shared.privacy.secagg_masks patches Flower {PINNED_FLOWER_VERSION}'s SecAgg+ mask generator; "
        f"installed flwr is {_installed_flower}. Re-check flwr's secaggplus_utils.pseudo_rand_gen and its "
        "importers, then update PINNED_FLOWER_VERSION."
    )

# import_module, not `from package import name`: flwr.client.mod.secure_aggregation re-exports the function
# `secaggplus_mod` under its module's name, and setting an attribute on that function patches nothing.
_utils = import_module("flwr.common.secure_aggregation.secaggplus_utils")
_client_mod = import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
_server_workflow = import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")

STOCK_PSEUDO_RAND_GEN = _utils.pseudo_rand_gen


def full_strength_pseudo_rand_gen(seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Masks uniform on [0, num_range) (a power of two) expanded from all of `seed` with ChaCha20; one int64
    array per shape, in order (a shape () gives a 0-d array, as Flower's generator does)."""
    if num_range & (num_range - 1) or not 2 <= num_range <= 2**62:
        raise ValueError(f"modulus range must be a power of two in [2, 2**62], got {num_range}")
    key = hashlib.sha256(_DOMAIN + len(seed).to_bytes(4, "little") + bytes(seed)).digest()
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in dimensions_list]
    stream = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor().update(bytes(8 * sum(sizes)))
    values = (np.frombuffer(stream, dtype="<u8") & np.uint64(num_range - 1)).astype(np.int64)
    masks, start = [], 0
    for shape, size in zip(dimensions_list, sizes):
        masks.append(values[start:start + size].reshape(shape))
        start += size
    return masks


for _module in (_utils, _client_mod, _server_workflow):
    if not isinstance(_module, ModuleType) or not hasattr(_module, "pseudo_rand_gen"):
        raise RuntimeError(f"Flower layout changed: {_module!r} no longer uses pseudo_rand_gen")
    _module.pseudo_rand_gen = full_strength_pseudo_rand_gen


def mask_algorithm() -> str:
    """The mask expansion this process's SecAgg+ client mod actually uses (stated in the site's signed keys)."""
    live = _client_mod.pseudo_rand_gen
    if live is full_strength_pseudo_rand_gen:
        return MASK_ALGORITHM
    return STOCK_MASK_ALGORITHM if live is STOCK_PSEUDO_RAND_GEN else f"unknown ({getattr(live, '__qualname__', live)!r})"
