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


# ------------------------------------------------------------------ non-finite scores are never ranked
def test_nan_scores_are_never_ranked_and_never_look_good():
    y = np.array([1, 1, 0, 0], np.float32)
    s = np.array([np.nan, np.nan, 0.1, 0.2])  # the old ranking put NaN last: AUC 1.0
    assert math.isnan(auc(y, s)) and math.isnan(log_loss(y, s))
    assert math.isnan(auc(y, np.array([np.inf, 0.9, 0.1, 0.2])))
    v = ProgressiveValidator()
    good = v.record("good", y, np.array([0.9, 0.8, 0.1, 0.2]))
    bad = v.record("bad", y, s)
    assert (good.nonfinite, bad.nonfinite) == (0, 2) and math.isnan(bad.auc) and math.isnan(bad.log_loss)
    cum = v.cumulative()
    assert cum["nonfinite"] == 2 and math.isnan(cum["auc"]) and math.isnan(cum["log_loss"])
    out = v.record("out", y, np.array([1.5, 0.8, -0.1, 0.2]))
    assert out.out_of_range == 2 and (out.score_min, out.score_max) == (-0.1, 1.5)


# ------------------------------------------------------------------ the bounded (binned) cumulative AUC
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 3000), st.floats(0.01, 0.9), st.sampled_from([1, 10, 100, 10**6]))
def test_the_binned_auc_is_within_its_bound_of_the_exact_auc(seed, n, rate, resolution):
    """Random labels and scores (continuous, and rounded to few values: many ties), the exact AUC
    of the pooled examples against the validator's cumulative AUC and its reported error bound."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.float32)
    s = np.round(1 / (1 + np.exp(-(rng.normal(-1, 1.5, n) + rng.normal(1, 1) * y))) * resolution) / resolution
    v = ProgressiveValidator()
    for part in np.array_split(np.arange(n), 3):
        v.record("f", y[part], s[part])
    cum, exact = v.cumulative(), auc(y, s)
    if y.min() == y.max():
        assert math.isnan(cum["auc"]) and math.isnan(exact)
        return
    assert abs(cum["auc"] - exact) <= cum["auc_error_bound"] + 1e-12
    assert cum["log_loss"] == pytest.approx(log_loss(y, s), rel=1e-9)
    per_file = [auc(y[p], s[p]) for p in np.array_split(np.arange(n), 3)]
    np.testing.assert_array_equal([m.auc for m in v.files], per_file)  # exact per file (NaN for one class)


def test_the_error_bound_is_small_on_realistic_scores():
    rng = np.random.default_rng(11)
    n = 200_000
    y = (rng.random(n) < 0.1).astype(np.float32)
    s = 1 / (1 + np.exp(-(rng.normal(-2.2, 1.0, n) + y)))
    v = ProgressiveValidator()
    v.record("f", y, s)
    cum = v.cumulative()
    assert cum["auc_error_bound"] < 0.002 and abs(cum["auc"] - auc(y, s)) < 1e-4


def _state_bytes(v: ProgressiveValidator) -> int:
    import pickle

    return len(pickle.dumps(v.__dict__))


def test_the_validators_state_does_not_grow_with_the_number_of_rows():
    rng = np.random.default_rng(2)
    sizes = []
    for rows in (2_000, 20_000):  # 10x more rows, the same number of files
        v = ProgressiveValidator()
        for _ in range(20):
            y = (rng.random(rows) < 0.1).astype(np.float32)
            v.record("f", y, rng.random(rows))
        sizes.append(_state_bytes(v))
        assert v.cumulative()["examples"] == 20 * rows
    assert sizes[1] <= sizes[0] * 1.02, sizes  # counters grow by bytes, not by rows


def test_take_window_holds_the_scores_since_the_last_call():
    v = ProgressiveValidator()
    v.record("a", np.array([0, 1]), np.array([0.2, 0.9]))
    v.record("b", np.array([1, 0]), np.array([0.7, 0.1]))
    w = v.take_window()
    assert (w.positives, w.negatives, w.examples) == (2, 2, 4) and w.auc()[0] == 1.0
    v.record("c", np.array([1, 0, 0]), np.array([0.1, 0.9, np.nan]))
    w2 = v.take_window()
    assert (w2.examples, w2.nonfinite, w2.auc()[0]) == (3, 1, 0.0)
    assert v.take_window().examples == 0 and v.cumulative()["examples"] == 7


def test_the_quality_replays_mean_auc_never_averages_a_broken_model_away():
    from trainer.quality import mean_auc

    assert mean_auc([0.6, float("nan"), 0.8], [0.4, 0.3, 0.5]) == pytest.approx(0.7)  # one-class file left out
    assert math.isnan(mean_auc([0.6, float("nan")], [0.4, float("nan")]))  # NaN scores: no mean
    assert math.isnan(mean_auc([], [])) and math.isnan(mean_auc([float("nan")], [0.3]))
