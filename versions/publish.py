"""The publish gate: which committed versions serving may follow, and the pointers that say so.

Training commits every version (LATEST); serving follows the **published** one. After each
commit the gate decides, in this order (every decision carries a code and a reason string, is
kept beside the version as ``vNNNNNNNN/GATE.json``, logged, and counted in ``Publisher.counts``
and the trainer's ``freshrec_versions_held_total{reason}``)::

    candidate v13: checksums of its chain ─────────────────────────bad──► HOLD checksum
                   its window's scores (the new data files, each scored before training on it):
                     any NaN / inf ──────────────────────────────────────► HOLD nonfinite_scores
                     any outside [0, 1] ─────────────────────────────────► HOLD scores_out_of_range
                     all equal (once a version is published) ────────────► HOLD constant_scores
                   window (plus held-back small windows before it) has fewer than
                     publish.min_examples examples, or one class only ───► HOLD small_window
                     (its examples are carried: the next version is judged on both windows)
                   one-sided DeLong test of "window AUC >= baseline AUC - max_auc_drop"
                     rejected at publish.significance ───────────────────► HOLD auc_drop
                   otherwise ────────────────────────────────────────────► PUBLISH: PUBLISHED <- 13

The AUC comparison works on **sufficient statistics**, not on a fixed drop of two noisy numbers:
the trainer's progressive validator writes, in the manifest's ``extra["metrics"]``, a
:class:`ScoreHistogram` of the window: per class, how many scores fell in each of 2048 bins
uniform in log-odds over [-12, 12] (sparse: only the non-empty bins), the count of non-finite and
out-of-range scores and the smallest and largest score. From it the gate computes the window's
AUC (the binned scores' exact Mann-Whitney AUC; it differs from the unbinned AUC by at most
``auc_bin_error`` = half the share of positive/negative pairs that share a bin, reported with
every decision) and DeLong's variance of it (exact for the binned scores). The baseline is the
pooled histogram of the windows of the last ``baseline_versions`` published versions; the two
windows are different examples, so the test is unpaired::

    z = (auc_window - auc_baseline + max_auc_drop) / sqrt(var_window + var_baseline)
    hold when Phi(z) < significance        (default 0.001: a drop beyond the margin, surely)

A held version stays committed (training goes on from it: the next version is a delta on it,
and is judged against the last *published* one again). A version compacted from another one
(``extra["compacted_from"]``, the same model) gets the decision its source got, unless its own
parts do not verify. Manifests written before the histogram existed (``extra["metrics"]`` with
a progressive AUC only) are compared with the old rule: a drop of more than ``max_auc_drop``.
After a restart of the writer, the small windows carried so far are forgotten (the next window
is judged alone). An operator overrides the gate with ``PINNED``
(``freshrec snapshots rollback V`` / ``unpin``)::

    ROOT/LATEST      "13\\n"   newest committed              (the writer)
    ROOT/PUBLISHED   "12\\n"   newest that passed the gate   (the writer's gate)
    ROOT/PINNED      "9\\n"    served instead of anything    (an operator; absent when not pinned)

What a replica serves: :func:`serving_target` = PINNED, else PUBLISHED, else LATEST (a store
written before the gate existed, or by a writer without it, has no PUBLISHED).

    gate = PublishGate(PublishConfig(max_auc_drop=0.02))
    d = gate.decide(candidate_metrics, problems=[], baseline=baseline_metrics, baseline_version=12)
    d.publish, d.code, d.reason    # False, "auc_drop", "window AUC 0.6100 is 0.0900 below ... p=2e-09 ..."
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import time
from typing import Any

import numpy as np

from common.config import ConfigError, check_keys

log = logging.getLogger(__name__)

PUBLISHED = "PUBLISHED"
PINNED = "PINNED"
GATE = "GATE.json"
# the reasons a version is held back (a fixed set: metric tags)
HOLD_CODES = ("checksum", "nonfinite_scores", "scores_out_of_range", "constant_scores", "small_window", "auc_drop")
HIST_BINS = 2048  # score histogram bins, uniform in log-odds over [-HIST_LOGIT, HIST_LOGIT]
HIST_LOGIT = 12.0


# ------------------------------------------------------------------ sufficient statistics of a window
def score_bins(scores: np.ndarray, bins: int = HIST_BINS, logit_range: float = HIST_LOGIT) -> np.ndarray:
    """The histogram bin of each score in [0, 1] (monotone: a higher score never gets a lower bin)."""
    s = np.asarray(scores, np.float64)
    with np.errstate(divide="ignore"):
        z = np.log(s) - np.log1p(-s)  # 0 -> -inf, 1 -> +inf
    z = np.clip(z, -logit_range, logit_range)
    return np.minimum(((z + logit_range) * (bins / (2.0 * logit_range))).astype(np.int64), bins - 1)


@dataclasses.dataclass(frozen=True, eq=False)
class ScoreHistogram:
    """Per-class counts of binned scores, plus what does not belong in a histogram: the counts of
    non-finite scores and of scores outside [0, 1] (never binned), the smallest and largest score
    (over every score; NaN-free). Fixed size whatever the number of examples; ``+`` pools two.

    ``auc()`` -> (AUC, DeLong variance, bin error bound): the Mann-Whitney AUC of the binned scores
    (ties half), its DeLong variance (exact for binned scores), and ``bound`` with
    ``|AUC of the binned scores - AUC of the raw scores| <= bound`` (pairs that share a bin count
    one half; their true contribution is anywhere in [0, 1])."""

    pos: np.ndarray
    neg: np.ndarray
    nonfinite: int = 0
    out_of_range: int = 0
    score_min: float | None = None
    score_max: float | None = None
    bins: int = HIST_BINS
    logit_range: float = HIST_LOGIT

    @classmethod
    def empty(cls, bins: int = HIST_BINS, logit_range: float = HIST_LOGIT) -> ScoreHistogram:
        return cls(np.zeros(bins, np.int64), np.zeros(bins, np.int64), bins=bins, logit_range=logit_range)

    @classmethod
    def of(
        cls, labels: np.ndarray, scores: np.ndarray, bins: int = HIST_BINS, logit_range: float = HIST_LOGIT
    ) -> ScoreHistogram:
        y = np.asarray(labels).reshape(-1) > 0.5
        s = np.asarray(scores, np.float64).reshape(-1)
        if len(y) != len(s):
            raise ValueError(f"ScoreHistogram: {len(y)} labels but {len(s)} scores")
        finite = np.isfinite(s)
        ok = finite & (s >= 0.0) & (s <= 1.0)
        b = score_bins(s[ok], bins, logit_range)
        yk = y[ok]
        pos = np.bincount(b[yk], minlength=bins).astype(np.int64)
        neg = np.bincount(b[~yk], minlength=bins).astype(np.int64)
        fs = s[finite]
        return cls(
            pos,
            neg,
            int((~finite).sum()),
            int((finite & ~ok).sum()),
            float(fs.min()) if len(fs) else None,
            float(fs.max()) if len(fs) else None,
            bins,
            logit_range,
        )

    def __add__(self, other: ScoreHistogram) -> ScoreHistogram:
        if (self.bins, self.logit_range) != (other.bins, other.logit_range):
            raise ValueError(
                f"cannot pool score histograms of {self.bins} bins / logit {self.logit_range} and "
                f"{other.bins} / {other.logit_range}"
            )
        lo = [x for x in (self.score_min, other.score_min) if x is not None]
        hi = [x for x in (self.score_max, other.score_max) if x is not None]
        return ScoreHistogram(
            self.pos + other.pos,
            self.neg + other.neg,
            self.nonfinite + other.nonfinite,
            self.out_of_range + other.out_of_range,
            min(lo) if lo else None,
            max(hi) if hi else None,
            self.bins,
            self.logit_range,
        )

    @property
    def positives(self) -> int:
        return int(self.pos.sum())

    @property
    def negatives(self) -> int:
        return int(self.neg.sum())

    @property
    def examples(self) -> int:
        """Every example, binned or not."""
        return self.positives + self.negatives + self.nonfinite + self.out_of_range

    def auc(self) -> tuple[float, float, float]:
        """(AUC, DeLong variance, bin error bound); NaNs when a class is missing."""
        p, n = self.pos.astype(np.float64), self.neg.astype(np.float64)
        P, N = p.sum(), n.sum()
        if P == 0 or N == 0:
            return float("nan"), float("nan"), float("nan")
        v10 = (np.cumsum(n) - n + 0.5 * n) / N  # each positive's share of negatives below it (ties 1/2)
        v01 = (P - np.cumsum(p) + 0.5 * p) / P  # each negative's share of positives above it
        a = float((p * v10).sum() / P)
        s10 = float((p * (v10 - a) ** 2).sum() / (P - 1)) if P > 1 else 0.0
        s01 = float((n * (v01 - a) ** 2).sum() / (N - 1)) if N > 1 else 0.0
        return a, s10 / P + s01 / N, float(0.5 * (p * n).sum() / (P * N))

    def to_dict(self) -> dict:
        """Sparse (non-empty bins only): JSON for a manifest's ``extra["metrics"]``."""

        def sparse(h):
            nz = np.flatnonzero(h)
            return {"bin": nz.tolist(), "count": h[nz].tolist()}

        return {
            "bins": self.bins,
            "logit_range": self.logit_range,
            "pos": sparse(self.pos),
            "neg": sparse(self.neg),
            "nonfinite": self.nonfinite,
            "out_of_range": self.out_of_range,
            "score_min": self.score_min,
            "score_max": self.score_max,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ScoreHistogram:
        bins = int(d["bins"])

        def dense(s):
            h = np.zeros(bins, np.int64)
            np.add.at(h, np.asarray(s["bin"], np.int64), np.asarray(s["count"], np.int64))
            return h

        return cls(
            dense(d["pos"]),
            dense(d["neg"]),
            int(d.get("nonfinite", 0)),
            int(d.get("out_of_range", 0)),
            _finite(d.get("score_min")),
            _finite(d.get("score_max")),
            bins,
            float(d["logit_range"]),
        )


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


# ------------------------------------------------------------------ config
@dataclasses.dataclass(frozen=True)
class PublishConfig:
    """The ``publish:`` section of the run config.

    max_auc_drop: the margin: a window's AUC may be this much (absolute AUC) below the baseline's
    before the drop counts; ``null`` turns the AUC check off (checksums and score checks only).
    significance: hold a version only when a drop beyond the margin is this sure: the one-sided
    DeLong p-value of "window AUC >= baseline AUC - max_auc_drop" is below it.
    min_examples: a window with fewer validated examples (or one class only) is too small to
    judge: the version is held (``small_window``) and its examples are judged together with the
    next version's.
    verify_checksums: re-read every part of the version's chain (parts already verified by this
    writer are not read again) before publishing.
    baseline_versions: the baseline is the pooled window of the last this-many published
    versions (1: the last published version alone).
    """

    max_auc_drop: float | None = 0.02
    min_examples: int = 500
    verify_checksums: bool = True
    baseline_versions: int = 5
    significance: float = 0.001

    def __post_init__(self) -> None:
        d = self.max_auc_drop
        if d is not None and not (isinstance(d, (int, float)) and not isinstance(d, bool) and 0 <= d <= 1):
            raise ConfigError(
                f"publish.max_auc_drop must be an AUC difference in [0, 1] or null (no AUC check), got {d!r}"
            )
        if not isinstance(self.min_examples, int) or isinstance(self.min_examples, bool) or self.min_examples < 0:
            raise ConfigError(f"publish.min_examples must be an integer >= 0, got {self.min_examples!r}")
        b = self.baseline_versions
        if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= 1000:
            raise ConfigError(f"publish.baseline_versions must be an integer in [1, 1000], got {b!r}")
        if not isinstance(self.verify_checksums, bool):
            raise ConfigError(f"publish.verify_checksums must be true or false, got {self.verify_checksums!r}")
        a = self.significance
        if not (isinstance(a, (int, float)) and not isinstance(a, bool) and 0 < a < 0.5):
            raise ConfigError(
                f"publish.significance must be a p-value in (0, 0.5) (e.g. 0.001: hold only a drop "
                f"that sure), got {a!r}"
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> PublishConfig:
        raw = {} if raw is None else raw
        check_keys(cls, raw, "publish")
        return cls(**raw)


# ------------------------------------------------------------------ a window's metrics
@dataclasses.dataclass(frozen=True)
class VersionMetrics:
    """Progressive validation of a version's window: the data files it trained on since the
    version before it, each scored before training on it. ``auc`` is the example-weighted mean of
    the files' exact AUCs (files with one class only left out); None when there is none.
    ``nonfinite``: examples whose score (or log-loss) was NaN or infinite; ``out_of_range``: scores
    outside [0, 1]. ``histogram``: the window's :class:`ScoreHistogram` (None in manifests written
    before it existed)."""

    auc: float | None = None
    log_loss: float | None = None
    examples: int = 0
    files: int = 0
    nonfinite: int = 0
    out_of_range: int = 0
    score_min: float | None = None
    score_max: float | None = None
    histogram: ScoreHistogram | None = None

    def to_dict(self) -> dict:
        d = {
            "progressive_auc": self.auc,
            "progressive_log_loss": self.log_loss,
            "examples_validated": self.examples,
            "files_validated": self.files,
            "nonfinite_scores": self.nonfinite,
            "scores_out_of_range": self.out_of_range,
            "score_min": self.score_min,
            "score_max": self.score_max,
        }
        if self.histogram is not None:
            d["score_histogram"] = self.histogram.to_dict()
        return d

    @classmethod
    def from_extra(cls, extra: dict | None) -> VersionMetrics:
        """From a manifest's ``extra["metrics"]`` (a version written before the gate has none). A
        log-loss that is there but not finite counts the window's examples as non-finite."""
        m = (extra or {}).get("metrics") or {}
        n = int(m.get("examples_validated") or 0)
        nonfinite = int(m.get("nonfinite_scores") or 0)
        ll = m.get("progressive_log_loss")
        if ll is not None and _finite(ll) is None and n and not nonfinite:
            nonfinite = n
        hist = m.get("score_histogram")
        return cls(
            _finite(m.get("progressive_auc")),
            _finite(ll),
            n,
            int(m.get("files_validated") or 0),
            nonfinite,
            int(m.get("scores_out_of_range") or 0),
            _finite(m.get("score_min")),
            _finite(m.get("score_max")),
            ScoreHistogram.from_dict(hist) if hist else None,
        )

    @classmethod
    def of_files(cls, files, histogram: ScoreHistogram | None = None) -> VersionMetrics:
        """From per-file records with ``examples``, ``auc`` and ``log_loss`` (and, from
        trainer.metrics.FileMetrics, ``nonfinite``, ``out_of_range``, ``score_min``, ``score_max``),
        and the window's pooled histogram. A file whose log-loss is not finite never disappears
        from the window: its examples count as non-finite."""
        files = list(files)
        n = sum(int(f.examples) for f in files)
        with_auc = [(int(f.examples), float(f.auc)) for f in files if _finite(f.auc) is not None and f.examples]
        w = sum(e for e, _ in with_auc)
        auc = sum(e * a for e, a in with_auc) / w if w else None
        with_ll = [
            (int(f.examples), float(f.log_loss)) for f in files if _finite(f.log_loss) is not None and f.examples
        ]
        wl = sum(e for e, _ in with_ll)
        ll = sum(e * x for e, x in with_ll) / wl if wl else None
        nonfinite = 0
        for f in files:
            bad = int(getattr(f, "nonfinite", 0) or 0)
            if not bad and f.examples and _finite(f.log_loss) is None:
                bad = int(f.examples)  # a record without the count: its NaN log-loss says it
            nonfinite += bad
        out = sum(int(getattr(f, "out_of_range", 0) or 0) for f in files)
        lo = [v for f in files if (v := _finite(getattr(f, "score_min", None))) is not None]
        hi = [v for f in files if (v := _finite(getattr(f, "score_max", None))) is not None]
        if nonfinite:
            ll = None  # the log-loss of the finite part alone would look good
        return cls(auc, ll, n, len(files), nonfinite, out, min(lo) if lo else None, max(hi) if hi else None, histogram)

    @classmethod
    def pooled(cls, windows: list[VersionMetrics]) -> VersionMetrics:
        """Several windows as one: example-weighted AUC and log-loss (windows without one left out),
        counts added, histograms added when every window has one."""
        windows = list(windows)

        def weighted(get):
            xs = [(w.examples, v) for w in windows if w.examples and (v := _finite(get(w))) is not None]
            n = sum(e for e, _ in xs)
            return sum(e * v for e, v in xs) / n if n else None

        nonfinite = sum(w.nonfinite for w in windows)
        lo = [w.score_min for w in windows if w.score_min is not None]
        hi = [w.score_max for w in windows if w.score_max is not None]
        hists = [w.histogram for w in windows]
        hist = None
        if hists and all(h is not None for h in hists):
            hist = hists[0]
            for h in hists[1:]:
                hist = hist + h
        return cls(
            weighted(lambda w: w.auc),
            None if nonfinite else weighted(lambda w: w.log_loss),
            sum(w.examples for w in windows),
            sum(w.files for w in windows),
            nonfinite,
            sum(w.out_of_range for w in windows),
            min(lo) if lo else None,
            max(hi) if hi else None,
            hist,
        )


@dataclasses.dataclass(frozen=True)
class PublishDecision:
    """PUBLISH (``publish=True``, code "ok") or HOLD with ``code`` in :data:`HOLD_CODES` and a reason.
    ``auc``/``baseline_auc``: the compared AUCs (the binned window AUCs when histograms were
    compared, else the progressive AUCs); ``p_value`` of the drop test, ``auc_bin_error`` the
    larger bin error bound of the two windows, ``examples_judged`` the examples of the judged
    window (carried small windows included)."""

    publish: bool
    code: str
    reason: str
    auc: float | None = None
    baseline_version: int | None = None
    baseline_auc: float | None = None
    p_value: float | None = None
    auc_bin_error: float | None = None
    examples_judged: int | None = None

    def to_dict(self) -> dict:
        return {"decision": "publish" if self.publish else "hold", **dataclasses.asdict(self)}


class PublishGate:
    """Pure policy: a decision from the candidate's checksum problems and metrics and the baseline's.
    ``carried``: the windows of versions held as ``small_window`` since the last judged one; the
    candidate's window is judged pooled with them."""

    def __init__(self, cfg: PublishConfig | None = None) -> None:
        self.cfg = cfg or PublishConfig()

    def decide(
        self,
        candidate: VersionMetrics,
        problems: list[str],
        baseline: VersionMetrics | None = None,
        baseline_version: int | None = None,
        carried: list[VersionMetrics] | tuple = (),
    ) -> PublishDecision:
        c = self.cfg
        base_auc = baseline.auc if baseline is not None else None

        def hold(code: str, reason: str, **kw) -> PublishDecision:
            kw = {"auc": candidate.auc, "baseline_version": baseline_version, "baseline_auc": base_auc, **kw}
            return PublishDecision(False, code, reason, **kw)

        if problems:
            return hold(
                "checksum", f"its chain does not verify: {'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}"
            )
        n = candidate.examples
        if candidate.nonfinite:
            return hold(
                "nonfinite_scores",
                f"{candidate.nonfinite} of the {n} scores of its window are NaN or "
                f"infinite (its log-loss is not finite): the model is broken",
            )
        if candidate.out_of_range:
            return hold(
                "scores_out_of_range",
                f"{candidate.out_of_range} of the {n} scores of its window are outside "
                f"[0, 1] (smallest {candidate.score_min!r}, largest {candidate.score_max!r})",
            )
        # a window is scored before training on it: with nothing published yet it was scored by the initial model,
        # which may rank nothing by design (the wide part and the deep head start at zero): not the candidate's fault
        if (
            baseline_version is not None
            and n >= 2
            and candidate.score_min is not None
            and candidate.score_min == candidate.score_max
        ):
            return hold(
                "constant_scores", f"all {n} scores of its window are {candidate.score_min!r}: the model ranks nothing"
            )
        if c.max_auc_drop is None:
            return PublishDecision(
                True,
                "ok",
                "checksums verify, scores finite in [0, 1] (the AUC check is off)",
                candidate.auc,
                baseline_version,
                base_auc,
            )
        if baseline_version is None:
            return PublishDecision(
                True,
                "ok",
                "checksums verify, scores finite in [0, 1]; no version was published before (nothing to compare with)",
                candidate.auc,
                None,
                None,
            )
        judged = VersionMetrics.pooled([*carried, candidate]) if carried else candidate
        note = f", {len(carried)} earlier small window(s) included" if carried else ""
        if judged.histogram is not None and baseline is not None and baseline.histogram is not None:
            return self._compare(judged, baseline, baseline_version, note, hold)
        # manifests without a score histogram (written before it): the old fixed-drop rule on the scalars
        if judged.auc is None or judged.examples < c.min_examples:
            return hold(
                "small_window",
                f"{judged.examples} validated examples{note} "
                f"{'with one class only' if judged.auc is None else '< publish.min_examples'} "
                f"({c.min_examples}): too few to judge; judged together with the next version",
                auc=judged.auc,
                examples_judged=judged.examples,
            )
        if base_auc is None:
            return PublishDecision(
                True,
                "ok",
                f"checksums verify; version {baseline_version} has no progressive AUC to compare",
                judged.auc,
                baseline_version,
                None,
                examples_judged=judged.examples,
            )
        if base_auc - judged.auc > c.max_auc_drop:
            return hold(
                "auc_drop",
                f"progressive AUC {judged.auc:.4f} is {base_auc - judged.auc:.4f} below "
                f"{base_auc:.4f} of the published versions up to {baseline_version} "
                f"(publish.max_auc_drop {c.max_auc_drop:g}; no score histogram: no significance test)",
                auc=judged.auc,
                examples_judged=judged.examples,
            )
        return PublishDecision(
            True,
            "ok",
            f"progressive AUC {judged.auc:.4f} vs {base_auc:.4f} of the published versions "
            f"up to {baseline_version} (allowed drop {c.max_auc_drop:g}; no score histogram)",
            judged.auc,
            baseline_version,
            base_auc,
            examples_judged=judged.examples,
        )

    def _compare(
        self, judged: VersionMetrics, baseline: VersionMetrics, baseline_version: int, note: str, hold
    ) -> PublishDecision:
        c = self.cfg
        h = judged.histogram
        a, va, ea = h.auc()
        n = judged.examples
        if h.positives == 0 or h.negatives == 0 or n < c.min_examples:
            why = (
                "one class only"
                if h.positives == 0 or h.negatives == 0
                else f"< publish.min_examples ({c.min_examples})"
            )
            return hold(
                "small_window",
                f"{n} validated examples ({h.positives} positive){note}, {why}: too few to "
                f"judge; judged together with the next version",
                auc=_finite(a),
                baseline_auc=None,
                examples_judged=n,
            )
        b, vb, eb = baseline.histogram.auc()
        if not math.isfinite(b):
            return PublishDecision(
                True,
                "ok",
                f"window AUC {a:.4f}; the published windows up to {baseline_version} "
                f"have one class only: nothing to compare",
                a,
                baseline_version,
                None,
                auc_bin_error=ea,
                examples_judged=n,
            )
        margin = float(c.max_auc_drop)
        se = math.sqrt(max(va + vb, 0.0))
        gap = a - b + margin
        z = gap / se if se > 0 else (math.inf if gap >= 0 else -math.inf)
        p = normal_cdf(z)
        stats = {"auc": a, "baseline_auc": b, "p_value": p, "auc_bin_error": max(ea, eb), "examples_judged": n}
        detail = (
            f"margin publish.max_auc_drop {margin:g}, one-sided DeLong p={p:.3g}, publish.significance "
            f"{c.significance:g}; {n} examples{note} vs {baseline.examples}; bin error <= {max(ea, eb):.4f}"
        )
        if p < c.significance:
            return hold(
                "auc_drop",
                f"window AUC {a:.4f} is {b - a:.4f} below {b:.4f} of the published versions up "
                f"to {baseline_version} ({detail})",
                **stats,
            )
        return PublishDecision(
            True,
            "ok",
            f"window AUC {a:.4f} vs {b:.4f} of the published versions up to "
            f"{baseline_version}: no drop beyond the margin ({detail})",
            baseline_version=baseline_version,
            **stats,
        )


class Publisher:
    """Runs the gate on a committed version of a store and moves PUBLISHED (the writer's side).

    ``verified`` remembers the versions whose parts this publisher has checked, so a delta chain is
    read once, not once per version. ``recent`` holds the windows of the last
    ``baseline_versions`` published versions (after a restart: the published version's alone,
    refilled as versions are published). ``carried``: the small windows held since the last judged
    one (lost on a restart). ``counts``: decisions by code ("ok" for published).
    """

    MAX_CARRIED = 1000
    MAX_VERIFIED = 128  # verified versions remembered (issue 21: bounded per-run state)

    def __init__(self, store, cfg: PublishConfig | None = None) -> None:
        self.store = store
        self.gate = PublishGate(cfg)
        self.verified: dict[int, list[str]] = {}  # version -> its problems, the latest MAX_VERIFIED
        self.recent: list[tuple[int, VersionMetrics]] = []
        self.carried: list[tuple[int, VersionMetrics]] = []
        self.counts: collections.Counter = collections.Counter()
        self._last: tuple[int, PublishDecision] | None = None  # the last version judged (for its compacted copy)

    def baseline(self, base_v: int) -> VersionMetrics:
        """The pooled window metrics of the last published versions (``base_v`` the newest of them)."""
        if not self.recent or self.recent[-1][0] != base_v:
            self.recent = [(base_v, VersionMetrics.from_extra(self.store.manifest(base_v).extra))]
        return VersionMetrics.pooled([m for _, m in self.recent[-self.gate.cfg.baseline_versions :]])

    def __call__(self, version: int) -> PublishDecision:
        store = self.store
        manifest = store.manifest(version)
        problems = store.verify_chain(version, self.verified) if self.gate.cfg.verify_checksums else []
        while len(self.verified) > self.MAX_VERIFIED:  # a long run forgets the oldest (re-verified if needed)
            del self.verified[min(self.verified)]
        base_v = store.published()
        if base_v is not None and base_v >= version:  # re-judging an old version: compare with nothing newer
            base_v = None
        candidate = VersionMetrics.from_extra(manifest.extra)
        source = (manifest.extra or {}).get("compacted_from")
        if not problems and self._last is not None and source == self._last[0]:
            prior = self._last[1]  # the same model, rewritten as a full version: the same decision
            decision = dataclasses.replace(
                prior, reason=f"the same model as version {source} (compacted from it): {prior.reason}"
            )
            if decision.publish and self.recent and self.recent[-1][0] == source:
                self.recent[-1] = (version, self.recent[-1][1])
        elif not problems and candidate.files == 0 and candidate.examples == 0 and not self.carried:
            # no data file was validated at all (a search ranker: its replay judges it by NDCG): there is no
            # window to judge, small or not; checksums only
            decision = PublishDecision(
                True,
                "ok",
                "checksums verify; the version validated no data file "
                "(no progressive window): nothing to judge on scores",
                None,
                base_v,
                None,
            )
        else:
            baseline = self.baseline(base_v) if base_v is not None else None
            carried = [m for _, m in self.carried]
            decision = self.gate.decide(candidate, problems, baseline, base_v, carried)
            if decision.code == "small_window":
                self.carried = [*self.carried, (version, candidate)][-self.MAX_CARRIED :]
            elif decision.publish or decision.code == "auc_drop":  # the carried windows are judged now
                judged = VersionMetrics.pooled([*carried, candidate]) if carried else candidate
                self.carried = []
                if decision.publish:
                    self.recent = [*self.recent, (version, judged)][-self.gate.cfg.baseline_versions :]
        self._last = (version, decision)
        store.write_gate_decision(version, {**decision.to_dict(), "version": version, "decided_at": time.time()})
        self.counts[decision.code] += 1
        if decision.publish:
            store.publish(version)
            log.info("version %d published: %s", version, decision.reason)
        else:
            log.warning(
                "version %d held back (%s): %s; serving stays on version %s; training goes on",
                version,
                decision.code,
                decision.reason,
                base_v,
            )
        return decision


def serving_target(pinned: int | None, published: int | None, latest: int | None) -> tuple[int | None, str]:
    """(the version a replica should serve, why): PINNED, else PUBLISHED, else LATEST."""
    if pinned is not None:
        return pinned, "pinned"
    if published is not None:
        return published, "published"
    return latest, "latest"


def _finite(v) -> float | None:
    if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def read_pointer(text: bytes) -> int | None:
    """A pointer file's version ("12\\n"); None when it holds no number."""
    try:
        return int(text.decode().strip())
    except ValueError:
        return None


def decision_json(d: dict) -> bytes:
    return json.dumps(d, sort_keys=True).encode()
