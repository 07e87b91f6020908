"""The FTRL-Proximal baseline (trainer/ftrl.py): it learns, it is deterministic, it scores before it
trains, and its vectorised minibatch step is textbook per-example FTRL when a minibatch is one row."""

import dataclasses
import math

import numpy as np
import pytest

from trainer.data import load_spec
from trainer.ftrl import FTRLConfig, FTRLProximal, hash_coordinates, progressive_ftrl
from trainer.metrics import auc
from trainer.quality import synthetic_file

SPEC = load_spec("taobao")


def _separable(n: int, seed: int):
    """A synthetic file whose label is a function of the item id alone (a "good" half of the items)."""
    b = synthetic_file(SPEC, n, seed)
    good = (b.sparse["item"] * 2654435761 % 97) % 2 == 0
    return dataclasses.replace(b, label=good.astype(np.float32))


def test_learns_a_separable_problem():
    lr = FTRLProximal(SPEC, FTRLConfig(alpha=0.5, l1=0.0, batch_size=8))
    train, test = _separable(4000, 1), _separable(2000, 2)
    before = auc(test.label, lr.score(test))
    lr.train(train, epochs=2)
    after = auc(test.label, lr.score(test))
    assert math.isnan(before) or before == pytest.approx(0.5)  # all weights 0: every score 0.5
    assert after > 0.97


def test_state_is_deterministic_for_a_seed_and_the_seed_moves_the_hash():
    files = [_separable(500, s) for s in (3, 4, 5)]
    runs = []
    for seed in (7, 7, 8):
        lr = FTRLProximal(SPEC, FTRLConfig(seed=seed, bits=12))
        scores = [lr.step_file(f) for f in files]
        runs.append((lr.state(), scores))
    (a, sa), (b, sb), (c, _) = runs
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert all(np.array_equal(x, y) for x, y in zip(sa, sb))
    assert not np.array_equal(a["z"], c["z"])  # another hash seed: other coordinates
    ids = np.arange(1000)
    assert not np.array_equal(hash_coordinates(ids, 0, 7, 12), hash_coordinates(ids, 0, 8, 12))
    assert not np.array_equal(hash_coordinates(ids, 0, 7, 12), hash_coordinates(ids, 1, 7, 12))


def test_progressive_validation_scores_each_file_before_training_on_it():
    files = [_separable(600, s) for s in (11, 12, 13)]
    cfg = FTRLConfig(alpha=0.3, l1=0.0)
    progressive = progressive_ftrl(SPEC, files, cfg)
    # replay by hand: file t is scored by a model trained on files < t only
    ref = FTRLProximal(SPEC, cfg)
    for f, got in zip(files, progressive):
        before = ref.state()
        np.testing.assert_array_equal(got, ref.score(f))
        after = ref.state()
        assert all(np.array_equal(before[k], after[k]) for k in before)  # scoring changes nothing
        ref.train(f)
    assert np.all(progressive[0] == np.float32(0.5))  # untrained: nothing learned from file 0 itself
    assert auc(files[2].label, progressive[2]) > 0.7


def _textbook(spec, batch, cfg: FTRLConfig):
    """Per-example FTRL-Proximal (McMahan et al. 2013, Algorithm 1), one coordinate at a time: the reference."""
    lr = FTRLProximal(spec, cfg)  # for its design matrix (hashing, dense normalisation) only
    lr.stats.update(batch.dense)
    d = lr._design(batch)
    z, n = np.zeros_like(lr.z), np.zeros_like(lr.n)
    for r in range(len(batch)):
        s, e = d.offsets[r], d.offsets[r + 1]
        idx, x = d.coords[s:e], d.values[s:e]
        w = {}
        for i in idx:
            zi = z[i]
            w[i] = (
                0.0
                if abs(zi) <= cfg.l1
                else -(zi - math.copysign(cfg.l1, zi)) / ((cfg.beta + math.sqrt(n[i])) / cfg.alpha + cfg.l2)
            )
        p = 1.0 / (1.0 + math.exp(-sum(w[i] * xi for i, xi in zip(idx, x))))
        for i, xi in zip(idx, x):
            g = (p - d.label[r]) * xi
            sigma = (math.sqrt(n[i] + g * g) - math.sqrt(n[i])) / cfg.alpha
            z[i] += g - sigma * w[i]
            n[i] += g * g
    return z, n


def test_one_row_minibatches_are_textbook_per_example_ftrl():
    batch = synthetic_file(SPEC, 300, 21)
    cfg = FTRLConfig(alpha=0.1, l1=0.5, l2=0.3, batch_size=1, bits=16)
    lr = FTRLProximal(SPEC, cfg)
    lr.train(batch)
    z, n = _textbook(SPEC, batch, cfg)
    np.testing.assert_allclose(lr.z, z, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(lr.n, n, rtol=1e-9, atol=1e-12)
    assert (lr.weights()[: 1 << cfg.bits] != 0).sum() < (np.abs(z[: 1 << cfg.bits]) > 0).sum()  # l1: sparse


def test_bad_hyper_parameters_are_refused_with_the_key():
    for bad in (dict(alpha=0), dict(l1=-1), dict(bits=40), dict(batch_size=0)):
        with pytest.raises(ValueError, match="ftrl."):
            FTRLConfig(**bad)
