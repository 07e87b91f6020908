"""The publish gate: which committed versions serving may follow, and the pointers that say so.

Training commits every version (LATEST); serving follows the **published** one. After each
commit the gate decides::

    candidate v13: checksums of its chain ──bad──► HOLD("checksum")
                   progressive AUC of v13's window (its new data files, scored before training
                   on them) vs. that of the last published version (PUBLISHED -> v12):
                   dropped by more than max_auc_drop ──► HOLD("auc_drop")
                   otherwise ──► PUBLISH: PUBLISHED <- 13 (atomic, like LATEST)

A held version stays committed (training goes on from it: the next version is a delta on it,
and is judged against the last *published* one again). Each decision is kept beside the
version as ``vNNNNNNNN/GATE.json``. An operator overrides the gate with ``PINNED``
(``freshrec snapshots rollback V`` / ``unpin``)::

    ROOT/LATEST      "13\\n"   newest committed              (the writer)
    ROOT/PUBLISHED   "12\\n"   newest that passed the gate   (the writer's gate)
    ROOT/PINNED      "9\\n"    served instead of anything    (an operator; absent when not pinned)

What a replica serves: :func:`serving_target` = PINNED, else PUBLISHED, else LATEST (a store
written before the gate existed, or by a writer without it, has no PUBLISHED).

    gate = PublishGate(PublishConfig(max_auc_drop=0.05))
    d = gate.decide(VersionMetrics(auc=0.61, examples=4000), problems=[], baseline=VersionMetrics(auc=0.70, ...), ...)
    d.publish, d.code, d.reason    # False, "auc_drop", "progressive AUC 0.6100 dropped 0.0900 below ..."
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from typing import Any

from common.config import ConfigError, check_keys

log = logging.getLogger(__name__)

PUBLISHED = "PUBLISHED"
PINNED = "PINNED"
GATE = "GATE.json"
HOLD_CODES = ("checksum", "auc_drop")  # the reasons a version is held back (a fixed set: metric tags)


@dataclasses.dataclass(frozen=True)
class PublishConfig:
    """The ``publish:`` section of the run config.

    max_auc_drop: hold a version back when its progressive AUC is more than this (absolute AUC)
    below the last published version's; ``null`` turns the AUC check off (checksums only).
    min_examples: a version whose window holds fewer validated examples is not compared on AUC
    (too few to tell a drop from noise); its checksums still decide.
    verify_checksums: re-read every part of the version's chain (parts already verified by this
    writer are not read again) before publishing.
    baseline_versions: the AUC a candidate is compared with is the example-weighted AUC of the
    windows of the last this-many published versions (1: the last published version alone). One
    window's AUC is noisy (a few hundred examples); against a single lucky window every following
    version would be held back, so the baseline pools several.
    """

    max_auc_drop: float | None = 0.05
    min_examples: int = 500
    verify_checksums: bool = True
    baseline_versions: int = 5

    def __post_init__(self) -> None:
        d = self.max_auc_drop
        if d is not None and not (isinstance(d, (int, float)) and not isinstance(d, bool) and 0 <= d <= 1):
            raise ConfigError(f"publish.max_auc_drop must be an AUC difference in [0, 1] or null (no AUC check), "
                              f"got {d!r}")
        if not isinstance(self.min_examples, int) or isinstance(self.min_examples, bool) or self.min_examples < 0:
            raise ConfigError(f"publish.min_examples must be an integer >= 0, got {self.min_examples!r}")
        b = self.baseline_versions
        if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= 1000:
            raise ConfigError(f"publish.baseline_versions must be an integer in [1, 1000], got {b!r}")
        if not isinstance(self.verify_checksums, bool):
            raise ConfigError(f"publish.verify_checksums must be true or false, got {self.verify_checksums!r}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "PublishConfig":
        raw = {} if raw is None else raw
        check_keys(cls, raw, "publish")
        return cls(**raw)


@dataclasses.dataclass(frozen=True)
class VersionMetrics:
    """Progressive validation of a version's window: the data files it trained on since the
    version before it, each scored before training on it. ``auc`` is the example-weighted mean of
    the files' AUCs (files with one class only left out); None when there is none."""

    auc: float | None = None
    log_loss: float | None = None
    examples: int = 0
    files: int = 0

    def to_dict(self) -> dict:
        return {"progressive_auc": self.auc, "progressive_log_loss": self.log_loss,
                "examples_validated": self.examples, "files_validated": self.files}

    @classmethod
    def from_extra(cls, extra: dict | None) -> "VersionMetrics":
        """From a manifest's ``extra["metrics"]`` (a version written before the gate has none)."""
        m = (extra or {}).get("metrics") or {}
        return cls(_finite(m.get("progressive_auc")), _finite(m.get("progressive_log_loss")),
                   int(m.get("examples_validated") or 0), int(m.get("files_validated") or 0))

    @classmethod
    def of_files(cls, files) -> "VersionMetrics":
        """From per-file records with ``examples``, ``auc`` and ``log_loss`` (trainer.metrics.FileMetrics)."""
        files = list(files)
        n = sum(int(f.examples) for f in files)
        with_auc = [(int(f.examples), float(f.auc)) for f in files if _finite(f.auc) is not None and f.examples]
        w = sum(e for e, _ in with_auc)
        auc = sum(e * a for e, a in with_auc) / w if w else None
        with_ll = [(int(f.examples), float(f.log_loss)) for f in files if _finite(f.log_loss) is not None and f.examples]
        wl = sum(e for e, _ in with_ll)
        ll = sum(e * x for e, x in with_ll) / wl if wl else None
        return cls(auc, ll, n, len(files))


@dataclasses.dataclass(frozen=True)
class PublishDecision:
    """PUBLISH (``publish=True``, code "ok") or HOLD with ``code`` in :data:`HOLD_CODES` and a reason."""

    publish: bool
    code: str
    reason: str
    auc: float | None = None
    baseline_version: int | None = None
    baseline_auc: float | None = None

    def to_dict(self) -> dict:
        return {"decision": "publish" if self.publish else "hold", **dataclasses.asdict(self)}


class PublishGate:
    """Pure policy: a decision from the candidate's checksum problems and metrics and the baseline's."""

    def __init__(self, cfg: PublishConfig | None = None) -> None:
        self.cfg = cfg or PublishConfig()

    def decide(self, candidate: VersionMetrics, problems: list[str], baseline: VersionMetrics | None = None,
               baseline_version: int | None = None) -> PublishDecision:
        if problems:
            return PublishDecision(False, "checksum", f"its chain does not verify: {'; '.join(problems[:3])}"
                                   f"{' ...' if len(problems) > 3 else ''}", candidate.auc, baseline_version,
                                   baseline.auc if baseline else None)
        c = self.cfg
        base_auc = baseline.auc if baseline is not None else None
        if c.max_auc_drop is None:
            why = "checksums verify (the AUC check is off)"
        elif baseline_version is None:
            why = "checksums verify; no version was published before (nothing to compare with)"
        elif candidate.auc is None or base_auc is None:
            which = "this version" if candidate.auc is None else f"version {baseline_version}"
            why = f"checksums verify; {which} has no progressive AUC to compare"
        elif candidate.examples < c.min_examples:
            why = (f"checksums verify; {candidate.examples} validated examples < publish.min_examples "
                   f"{c.min_examples}: AUC not compared")
        elif base_auc - candidate.auc > c.max_auc_drop:
            return PublishDecision(False, "auc_drop",
                                   f"progressive AUC {candidate.auc:.4f} is {base_auc - candidate.auc:.4f} below "
                                   f"{base_auc:.4f} of the published versions up to {baseline_version} (publish.max_auc_drop "
                                   f"{c.max_auc_drop:g})", candidate.auc, baseline_version, base_auc)
        else:
            why = (f"progressive AUC {candidate.auc:.4f} vs {base_auc:.4f} of the published versions up to {baseline_version} "
                   f"(allowed drop {c.max_auc_drop:g})")
        return PublishDecision(True, "ok", why, candidate.auc, baseline_version, base_auc)


class Publisher:
    """Runs the gate on a committed version of a store and moves PUBLISHED (the writer's side).

    ``verified`` remembers the versions whose parts this publisher has checked, so a delta chain is
    read once, not once per version. ``recent`` holds the windows of the last
    ``baseline_versions`` published versions (after a restart: the published version's alone,
    refilled as versions are published).
    """

    def __init__(self, store, cfg: PublishConfig | None = None) -> None:
        self.store = store
        self.gate = PublishGate(cfg)
        self.verified: dict[int, list[str]] = {}
        self.recent: list[tuple[int, VersionMetrics]] = []

    def baseline(self, base_v: int) -> VersionMetrics:
        """The pooled window metrics of the last published versions (``base_v`` the newest of them)."""
        if not self.recent or self.recent[-1][0] != base_v:
            self.recent = [(base_v, VersionMetrics.from_extra(self.store.manifest(base_v).extra))]
        windows = [m for _, m in self.recent[-self.gate.cfg.baseline_versions:]]
        pooled = VersionMetrics.of_files(_Window(m.examples, m.auc, m.log_loss) for m in windows)
        return dataclasses.replace(pooled, files=sum(m.files for m in windows))

    def __call__(self, version: int) -> PublishDecision:
        store = self.store
        manifest = store.manifest(version)
        problems = store.verify_chain(version, self.verified) if self.gate.cfg.verify_checksums else []
        base_v = store.published()
        if base_v is not None and base_v >= version:  # re-judging an old version: compare with nothing newer
            base_v = None
        baseline = self.baseline(base_v) if base_v is not None else None
        candidate = VersionMetrics.from_extra(manifest.extra)
        decision = self.gate.decide(candidate, problems, baseline, base_v)
        store.write_gate_decision(version, {**decision.to_dict(), "version": version, "decided_at": time.time()})
        if decision.publish:
            store.publish(version)
            self.recent = [*self.recent, (version, candidate)][-self.gate.cfg.baseline_versions:]
            log.info("version %d published: %s", version, decision.reason)
        else:
            log.warning("version %d held back (%s): %s; serving stays on version %s; training goes on",
                        version, decision.code, decision.reason, base_v)
        return decision


@dataclasses.dataclass(frozen=True)
class _Window:
    examples: int
    auc: float | None
    log_loss: float | None


def serving_target(pinned: int | None, published: int | None, latest: int | None) -> tuple[int | None, str]:
    """(the version a replica should serve, why): PINNED, else PUBLISHED, else LATEST."""
    if pinned is not None:
        return pinned, "pinned"
    if published is not None:
        return published, "published"
    return latest, "latest"


def _finite(v) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
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
