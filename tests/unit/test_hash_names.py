"""The two splitmix64 functions are different functions with different outputs, both baked into stored data
(shard routing, cut slices, initial rows and the serving cache; string and cross ids in the data layer and the
FTRL coordinates). They have names that say which is which, and their outputs are pinned here forever."""

from __future__ import annotations

import numpy as np

from paramserver.hashing import splitmix64_next
from trainer.data.hashing import splitmix64_mix

X = np.array([0, 1, 2**63 + 5], np.uint64)


def test_splitmix64_next_adds_the_golden_gamma_then_mixes():
    assert splitmix64_next(X).tolist() == [16294208416658607535, 10451216379200822465, 6099647518701997872]


def test_splitmix64_mix_is_the_finaliser_alone():
    assert splitmix64_mix(X).tolist() == [0, 6238072747940578789, 5517130817076012570]
    gamma = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(splitmix64_mix(X + gamma), splitmix64_next(X))  # next = mix(x + gamma)


def test_ftrl_coordinates_hash_with_splitmix64_next():
    from trainer.ftrl import hash_coordinates

    ids = np.array([7, 123456789, -3], np.int64)
    salt = splitmix64_next(np.array([(11 & 0xFFFFFFFF) << 32 | 2], np.uint64))[0]
    want = (splitmix64_next(ids.view(np.uint64) ^ salt) & np.uint64((1 << 12) - 1)).astype(np.int64)
    assert hash_coordinates(ids, 2, 11, 12).tolist() == want.tolist() == [3134, 2753, 831]
