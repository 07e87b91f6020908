"""AUC and log-loss against brute-force definitions; the progressive validator."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.metrics import ProgressiveValidator, auc, log_loss


def brute_auc(y, s):
    pos = [b for a, b in zip(y, s) if a > 0.5]
    neg = [b for a, b in zip(y, s) if a <= 0.5]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60))
def test_auc_equals_pairwise_count_with_ties(rows):
    y = np.array([r[0] for r in rows], np.float32)
    s = np.array([r[1] for r in rows], np.float64) / 6.0  # few distinct values: many ties
    if y.min() == y.max():
        assert math.isnan(auc(y, s))
    else:
        assert auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_auc_known_values():
    assert auc(np.array([0, 1]), np.array([0.2, 0.9])) == 1.0
    assert auc(np.array([0, 1]), np.array([0.9, 0.2])) == 0.0
    assert auc(np.array([0, 1, 0, 1]), np.full(4, 0.3)) == 0.5
    with pytest.raises(ValueError, match="labels but"):
        auc(np.array([0, 1]), np.array([0.1]))


def test_log_loss_matches_definition_and_clips():
    y = np.array([1, 0, 1, 0], np.float32)
    p = np.array([0.9, 0.2, 0.6, 0.5])
    want = -np.mean([math.log(0.9), math.log(0.8), math.log(0.6), math.log(0.5)])
    assert log_loss(y, p) == pytest.approx(want, rel=1e-12)
    assert math.isfinite(log_loss(np.array([1.0]), np.array([0.0])))  # clipped, not inf
    assert log_loss(np.array([1.0]), np.array([0.0])) == pytest.approx(-math.log(1e-7))


def test_progressive_validator_per_shard_and_cumulative():
    v = ProgressiveValidator()
    a = v.record("s0", np.array([0, 1, 0]), np.array([0.1, 0.8, 0.3]), train_seconds=0.5)
    b = v.record("s1", np.array([1, 0]), np.array([0.2, 0.4]))
    assert (a.auc, b.auc) == (1.0, 0.0)
    assert a.examples_per_s == 6.0
    cum = v.cumulative()
    y = np.array([0, 1, 0, 1, 0])
    s = np.array([0.1, 0.8, 0.3, 0.2, 0.4])
    assert cum["examples"] == 5
    assert cum["auc"] == pytest.approx(brute_auc(y, s))
    assert cum["log_loss"] == pytest.approx(log_loss(y, s))
    assert v.mean_shard_auc() == 0.5
