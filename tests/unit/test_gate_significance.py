"""The honest gate on score histograms (versions.publish): DeLong's variance against simulation,
flipped labels / a NaN model / constant scores held, a stationary run mostly published, small
windows carried to the next version, a compacted copy decided like its source. Seeded, no Ray."""

from __future__ import annotations

import types

import numpy as np
import pytest

from trainer.metrics import ProgressiveValidator
from versions.publish import (
    PublishConfig,
    Publisher,
    PublishGate,
    ScoreHistogram,
    VersionMetrics,
)


def window(rng, n=940, sep=1.0, rate=0.1, flip=False, scores=None):
    """``n`` examples of a model with AUC about 0.76 (sep 1.0) on a 10% positive rate, as the
    trainer's validator would write them into a manifest (``extra["metrics"]``)."""
    y = (rng.random(n) < rate).astype(np.float32)
    s = 1 / (1 + np.exp(-(rng.normal(-2.2, 1.0, n) + sep * y))) if scores is None else scores(n)
    v = ProgressiveValidator()
    v.record("f", 1 - y if flip else y, s)
    return VersionMetrics.of_files(v.files, v.take_window()).to_dict()


class FakeStore:
    """The store calls a Publisher makes, in memory."""

    def __init__(self):
        self.extra, self.pointer, self.decisions = {}, None, {}

    def add(self, metrics, **extra) -> int:
        v = len(self.extra) + 1
        self.extra[v] = {"metrics": metrics, **extra}
        return v

    def manifest(self, v):
        return types.SimpleNamespace(extra=self.extra[v])

    def verify_chain(self, v, memo=None):
        return []

    def published(self):
        return self.pointer

    def publish(self, v):
        self.pointer = v if self.pointer is None else max(v, self.pointer)

    def write_gate_decision(self, v, d):
        self.decisions[v] = d


def test_delong_variance_matches_the_spread_of_window_aucs():
    rng = np.random.default_rng(7)
    hs = [ScoreHistogram.from_dict(window(rng)["score_histogram"]) for _ in range(300)]
    a = np.array([h.auc()[0] for h in hs])
    se = np.sqrt(np.mean([h.auc()[1] for h in hs]))
    assert 0.8 < se / a.std() < 1.25  # the DeLong standard error is the windows' real spread


def test_a_stationary_run_is_published_flipped_labels_a_nan_and_a_constant_model_are_held():
    rng = np.random.default_rng(0)
    store, pub = FakeStore(), Publisher(FakeStore(), PublishConfig())
    pub.store = store
    good = [store.add(window(rng)) for _ in range(150)]
    decisions = [pub(v) for v in good]
    held = [d for d in decisions if not d.publish]
    assert len(held) <= 1, [d.reason for d in held]  # target: at most 1 in 100
    assert all(d.p_value is not None and d.reason for d in decisions[1:])
    flipped = pub(store.add(window(rng, flip=True)))
    assert not flipped.publish and flipped.code == "auc_drop" and flipped.auc < 0.4 and flipped.p_value < 1e-6
    assert "below" in flipped.reason and "DeLong" in flipped.reason
    nan = pub(store.add(window(rng, scores=lambda n: np.full(n, np.nan))))
    assert not nan.publish and nan.code == "nonfinite_scores" and "940 of the 940" in nan.reason
    some_nan = pub(
        store.add(window(rng, scores=lambda n: np.where(np.arange(n) == 3, np.nan, 0.2 + 0.5 * rng.random(n))))
    )
    assert not some_nan.publish and some_nan.code == "nonfinite_scores" and "1 of the 940" in some_nan.reason
    const = pub(store.add(window(rng, scores=lambda n: np.full(n, 0.1))))
    assert not const.publish and const.code == "constant_scores"
    out = pub(store.add(window(rng, scores=lambda n: rng.random(n) * 3 - 1)))
    assert not out.publish and out.code == "scores_out_of_range"
    assert pub(store.add(window(rng))).publish  # a good one after them is published again
    assert sum(pub.counts.values()) == len(store.extra) and pub.counts["auc_drop"] >= 1
    assert pub.counts["nonfinite_scores"] == 2 and pub.counts["constant_scores"] == 1
    assert all(store.decisions[v]["reason"] for v in store.extra)


def test_a_lucky_window_does_not_hold_ordinary_ones_but_a_real_drop_is_held():
    rng = np.random.default_rng(3)
    store = FakeStore()
    pub = Publisher(store, PublishConfig(baseline_versions=1))
    assert pub(store.add(window(rng, sep=3.0))).publish  # a lucky window: AUC about 0.98
    ordinary = [pub(store.add(window(rng, sep=2.6))) for _ in range(10)]  # AUC about 0.96
    assert all(d.publish for d in ordinary), [d.reason for d in ordinary]
    d = pub(store.add(window(rng, sep=1.0)))  # AUC about 0.76: a real drop
    assert not d.publish and d.code == "auc_drop"


def test_small_windows_are_held_and_judged_together_with_the_next():
    rng = np.random.default_rng(5)
    store = FakeStore()
    pub = Publisher(store, PublishConfig(min_examples=500))
    assert pub(store.add(window(rng, n=2000))).publish
    a = pub(store.add(window(rng, n=200)))
    b = pub(store.add(window(rng, n=200)))
    assert (a.code, b.code) == ("small_window", "small_window") and "judged together with the next" in a.reason
    assert b.examples_judged == 400 and "1 earlier small window(s)" in b.reason
    c = pub(store.add(window(rng, n=200)))
    assert c.publish and c.examples_judged == 600 and store.pointer == 4 and pub.carried == []
    one_class = pub(store.add(window(rng, n=900, rate=0.0)))
    assert one_class.code == "small_window" and "one class only" in one_class.reason
    after = pub(store.add(window(rng, n=900)))
    assert after.publish and after.examples_judged == 1800  # the one-class window was judged with it
    # small flipped windows pooled: held for the drop once there are enough examples
    d1 = pub(store.add(window(rng, n=300, flip=True)))
    d2 = pub(store.add(window(rng, n=300, flip=True)))
    assert d1.code == "small_window" and not d2.publish and d2.code == "auc_drop" and d2.examples_judged == 600


def test_a_compacted_copy_gets_its_sources_decision_and_the_baseline_stays_pooled():
    rng = np.random.default_rng(9)
    store = FakeStore()
    pub = Publisher(store, PublishConfig())
    for _ in range(3):
        pub(store.add(window(rng)))
    src = store.add(window(rng))
    assert pub(src).publish
    copy = store.add(store.extra[src]["metrics"], compacted_from=src)
    d = pub(copy)
    assert d.publish and f"the same model as version {src}" in d.reason and store.pointer == copy
    assert [v for v, _ in pub.recent][-2:] == [src - 1, copy] and len(pub.recent) == 4
    bad = store.add(window(rng, flip=True))
    assert pub(bad).code == "auc_drop"
    held_copy = pub(store.add(store.extra[bad]["metrics"], compacted_from=bad))
    assert not held_copy.publish and held_copy.code == "auc_drop" and store.pointer == copy


def test_the_gate_needs_no_torch_and_reports_its_statistics():
    rng = np.random.default_rng(1)
    base = VersionMetrics.from_extra({"metrics": window(rng, n=3000)})
    cand = VersionMetrics.from_extra({"metrics": window(rng)})
    d = PublishGate().decide(cand, [], base, 7)
    assert d.publish and d.baseline_version == 7 and 0 < d.auc_bin_error < 0.01 and 0 <= d.p_value <= 1
    assert d.to_dict()["examples_judged"] == 940 and "no drop beyond the margin" in d.reason
    import subprocess
    import sys

    code = (
        "import sys, versions.publish; bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'trainer', 'serving', 'paramserver')]; print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode == 0


def test_a_nan_log_loss_in_an_older_manifest_is_not_dropped():
    m = VersionMetrics.from_extra(
        {
            "metrics": {
                "progressive_auc": 0.9,
                "progressive_log_loss": float("nan"),
                "examples_validated": 800,
                "files_validated": 1,
            }
        }
    )
    assert m.nonfinite == 800
    d = PublishGate().decide(m, [], None, None)
    assert not d.publish and d.code == "nonfinite_scores"


@pytest.mark.parametrize("field", ["pos", "neg"])
def test_histograms_of_different_binning_do_not_pool(field):
    a = ScoreHistogram.empty()
    with pytest.raises(ValueError, match="cannot pool"):
        a + ScoreHistogram.empty(bins=16)
    assert getattr(a, field).shape == (2048,)


def test_every_decision_is_logged_with_its_reason(caplog):
    import logging

    rng = np.random.default_rng(4)
    store = FakeStore()
    pub = Publisher(store, PublishConfig())
    with caplog.at_level(logging.INFO, logger="versions.publish"):
        pub(store.add(window(rng)))
        pub(store.add(window(rng, scores=lambda n: np.full(n, np.nan))))
    published, held = caplog.records[-2:]
    assert published.levelno == logging.INFO and "version 1 published" in published.getMessage()
    assert held.levelno == logging.WARNING and "version 2 held back (nonfinite_scores)" in held.getMessage()
    assert store.decisions[2]["decision"] == "hold" and store.decisions[2]["code"] == "nonfinite_scores"
