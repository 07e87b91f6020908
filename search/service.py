"""The Search service: messages in, messages out; one ranker version and one catalogue per answer.

    service = SearchService(SearchServeConfig(store_url="runs/s1/versions", catalogue="products.tsv")).start()
    service.search(pb.SearchRequest(query="king poster bed", k=10))   # SearchResponse, best first

A background thread (``poll_interval_s``) follows the version store (a newer committed version is
loaded off the request path with :func:`trainer.versioning.load_trainer` and swapped in by one
reference assignment) and the catalogue file (when its size or modification time changes it is
re-read and the lexical index refreshed in place: only added, changed and removed products are
re-indexed). A request reads the current (ranker, corpus) pair once, so it is answered by one of
each. A version or catalogue that fails to load is logged and the last good one keeps serving.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

import numpy as np

from search.data import read_catalogue
from search.ranker import RankerConfig, SearchCorpus, rank
from search.spec import SearchSpec
from search.validation import SearchLimits, validate
from search.wire import pb
from serving.errors import NotReadyError, VersionMismatchError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SearchServeConfig:
    store_url: str
    catalogue: str
    pin_version: int | None = None
    poll_interval_s: float = 0.5
    limits: SearchLimits = SearchLimits()


@dataclasses.dataclass(frozen=True)
class ServedRanker:
    version: int
    trainer: object  # trainer.local.LocalTrainer holding the version
    spec: SearchSpec
    num_candidates: int
    lock: threading.Lock  # scoring stages rows in the trainer's collection: one request at a time


def load_ranker(store_url: str, version: int | None = None) -> ServedRanker:
    """The ranker of committed ``version`` (default: the newest valid one) of a search run's store."""
    from trainer import bundle
    from trainer.versioning import load_trainer
    from versions import NoSuchVersionError, VersionStore

    store = VersionStore(str(store_url))
    if version is None:
        version = store.latest_valid()
        if version is None:
            raise NoSuchVersionError(None, store.versions())
    m = store.manifest(version)
    if bundle.search_spec(m) is None:
        raise ValueError(f"version {version} of {store_url} is not a search ranker (no extra.search_spec): "
                         "train one with `freshrec search-train`")
    spec = SearchSpec.from_dict(bundle.search_spec(m))
    trainer, manifest = load_trainer(store_url, version, spec=spec.feature_spec())
    n = int(bundle.run_config(m).get("search", {}).get("num_candidates", RankerConfig.num_candidates))
    return ServedRanker(manifest.version, trainer, spec, n, threading.Lock())


class SearchService:
    def __init__(self, cfg: SearchServeConfig) -> None:
        self.cfg = cfg
        self.ranker: ServedRanker | None = None
        self.corpus: SearchCorpus | None = None
        self.pinned = cfg.pin_version
        self._catalogue_stamp: tuple | None = None
        self._refused: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    # ------------------------------------------------------------ following
    def start(self, wait_s: float = 0.0) -> "SearchService":
        self.poll_once()
        self._thread = threading.Thread(target=self._follow, name="freshrec-search-follower", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + wait_s
        while self.ranker is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _follow(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval_s):
            self.poll_once()

    def poll_once(self) -> None:
        """Refresh the catalogue if its file changed; load a newer (or the pinned) version."""
        try:
            st = os.stat(self.cfg.catalogue)
            stamp = (st.st_size, st.st_mtime_ns)
            if stamp != self._catalogue_stamp:
                spec = self.ranker.spec if self.ranker is not None else SearchSpec()
                catalogue = read_catalogue(self.cfg.catalogue, spec)
                if self.corpus is None:
                    self.corpus = SearchCorpus(catalogue, spec)
                    log.info("search: catalogue of %d products indexed", len(catalogue))
                else:
                    stats = self.corpus.refresh(catalogue)
                    log.info("search: catalogue refreshed: %s", stats)
                self._catalogue_stamp = stamp
        except Exception as exc:  # noqa: BLE001 (serving goes on with the last good catalogue)
            self.last_error = f"catalogue {self.cfg.catalogue}: {exc}"
            log.warning("search: %s", self.last_error)
        from versions import VersionStore

        try:
            want = self.pinned if self.pinned is not None else VersionStore(self.cfg.store_url).latest()
        except Exception as exc:  # noqa: BLE001 (an unreachable store is retried at the next poll)
            self.last_error = f"version store {self.cfg.store_url}: {exc}"
            log.warning("search: %s", self.last_error)
            return
        if want is None or want in self._refused or (self.ranker is not None and self.ranker.version == want):
            return
        try:
            ranker = load_ranker(self.cfg.store_url, want)
        except OSError as exc:  # retried at the next poll
            self.last_error = f"version {want} of {self.cfg.store_url}: {exc}"
            log.warning("search: %s", self.last_error)
            return
        except Exception as exc:  # noqa: BLE001 (corrupt or not a search ranker: refused, never retried)
            self._refused.add(want)
            self.last_error = f"version {want} of {self.cfg.store_url} refused: {exc}"
            log.warning("search: %s", self.last_error)
            return
        self.ranker = ranker  # one reference assignment: the swap
        log.info("search: serving ranker version %d", ranker.version)

    def reconfigure(self, user_config: dict) -> None:
        if "pin_version" in user_config:
            self.pinned = user_config["pin_version"]
            self.poll_once()

    # -------------------------------------------------------------- answers
    def search(self, request) -> "pb.SearchResponse":
        ranker, corpus = self.ranker, self.corpus
        if ranker is None or corpus is None:
            raise NotReadyError(f"no ranker version loaded yet ({self.last_error or 'waiting for the store'})")
        limits = dataclasses.replace(self.cfg.limits, default_candidates=min(ranker.num_candidates,
                                                                             self.cfg.limits.max_candidates))
        req = validate(request, limits, ranker.spec.tokenizer)
        if req.pin_version is not None and req.pin_version != ranker.version:
            raise VersionMismatchError(f"pin_version {req.pin_version} is not served (serving {ranker.version})")
        with ranker.lock, corpus.lock:
            ranked = rank(ranker.trainer, corpus, " ".join(req.tokens), req.k, req.num_candidates, req.classes,
                          req.categories)
            cat, digest = corpus.catalogue, corpus.digest
        ids = cat.product_id[ranked.rows]
        resp = pb.SearchResponse(model_version=ranker.version, catalogue_digest=digest,
                                 candidates=int(ranked.candidates), catalogue_products=len(cat))
        for pid, row, s, b in zip(ids.tolist(), ranked.rows.tolist(), np.asarray(ranked.scores).tolist(),
                                  ranked.bm25.tolist()):
            resp.hits.add(product_id=pid, score=s, lexical_score=b, product_name=cat.name[row])
        return resp
