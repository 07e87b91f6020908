"""The Search service: a read-only, concurrent replica; one ranker version and one catalogue per answer.

    service = SearchService(SearchServeConfig(store_url="runs/s1/versions", catalogue="products.tsv")).start()
    service.search(pb.SearchRequest(query="king poster bed", k=10))   # SearchResponse, best first

The ranker follows the store with serving's one follower (:class:`serving.follower.VersionFollower`:
the explicit pin, else PINNED, else PUBLISHED, else LATEST; transient store errors retried with
backoff, corrupt versions refused and re-checked; a serving lease on the served version). A version
is loaded as the training core over FROZEN tables (:func:`serving.model.load_model`, deltas applied
to the previous version's tables), so scoring never admits or evicts a row: a token the version has
no row for gets the cold-start row training would give it (:class:`serving.tables.FrozenTable`), and
the answer is bit-identical to ranking offline with that version (:func:`load_ranker`'s trainer).

Concurrency: no global lock. A request takes an immutable view of the corpus (index searcher,
product features, digest) and one of ``scorers`` copies of the core (they share the frozen tables;
a core stages a batch's rows, so one request uses one copy at a time). A second thread follows the
catalogue file (when its size or modification time changes it is re-read and the lexical index
refreshed: only added, changed and removed products are re-indexed; searches on older views go on).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import queue
import threading
import time

import numpy as np

from search.data import read_catalogue
from search.ranker import RankerConfig, SearchCorpus, rank
from search.request_checks import SearchLimits, validate
from search.spec import SearchSpec
from search.wire import pb
from serving.config import ServeConfig
from serving.errors import NotReadyError, VersionMismatchError
from serving.follower import LeaseSettings, VersionFollower
from serving.telemetry import replica_name

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SearchServeConfig:
    store_url: str
    catalogue: str
    pin_version: int | None = None
    poll_interval_s: float = ServeConfig.poll_interval_s  # one default for every replica (serving/config.py)
    limits: SearchLimits = SearchLimits()
    scorers: int = 4  # requests scored side by side in one replica (copies of the core over shared tables)
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scorers, int) or isinstance(self.scorers, bool) or not 1 <= self.scorers <= 64:
            raise ValueError(f"search serve: scorers must be an integer in [1, 64], got {self.scorers!r}")


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
        raise ValueError(
            f"version {version} of {store_url} is not a search ranker (no extra.search_spec): "
            "train one with `freshrec search-train`"
        )
    spec = SearchSpec.from_dict(bundle.search_spec(m))
    trainer, manifest = load_trainer(store_url, version, spec=spec.feature_spec())
    n = int(bundle.run_config(m).get("search", {}).get("num_candidates", RankerConfig.num_candidates))
    return ServedRanker(manifest.version, trainer, spec, n, threading.Lock())


class FrozenRanker:
    """One search ranker version, read-only (see the module docstring): ``score(batch)`` like a trainer's."""

    def __init__(self, model, spec: SearchSpec, num_candidates: int, scorers: int) -> None:
        self.model, self.spec, self.num_candidates = model, spec, num_candidates
        self.version = model.version
        self._cores: queue.SimpleQueue = queue.SimpleQueue()
        self._cores.put(model.core)
        shared = {id(model.tables): model.tables}  # every copy reads the same frozen tables
        for _ in range(scorers - 1):
            self._cores.put(copy.deepcopy(model.core, dict(shared)))

    def score(self, batch) -> np.ndarray:
        core = self._cores.get()
        try:
            return core.score(batch)
        finally:
            self._cores.put(core)


def load_frozen_ranker(store, version: int, previous: FrozenRanker | None = None, scorers: int = 4) -> FrozenRanker:
    """The read-only ranker of committed ``version`` (``previous``: the served one, whose tables the deltas
    after it are applied to). ValueError when the version is not a search ranker (refused by the follower)."""
    from serving.model import load_model
    from trainer import bundle

    m = store.manifest(version)
    if bundle.search_spec(m) is None:
        raise ValueError(
            f"version {version} of {store.url} is not a search ranker (no extra.search_spec): "
            "train one with `freshrec search-train`"
        )
    spec = SearchSpec.from_dict(bundle.search_spec(m))
    n = int(bundle.run_config(m).get("search", {}).get("num_candidates", RankerConfig.num_candidates))
    prev = previous.model if previous is not None and previous.spec == spec else None
    model = load_model(store, version, previous=prev, spec=spec.feature_spec())
    return FrozenRanker(model, spec, n, scorers)


class SearchService:
    def __init__(self, cfg: SearchServeConfig) -> None:
        from versions import VersionStore

        self.cfg = cfg
        self.store = VersionStore(cfg.store_url, cfg.storage_options)
        self.corpus: SearchCorpus | None = None
        self._catalogue_stamp: tuple | None = None
        self.catalogue_error: str | None = None
        self.follower: VersionFollower[FrozenRanker] = VersionFollower(
            self.store,
            self._load,
            poll_interval_s=cfg.poll_interval_s,
            pin_version=cfg.pin_version,
            lease=LeaseSettings(holder=f"search-{replica_name()}", role="search"),
            name="search",
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load(self, version: int, previous: FrozenRanker | None) -> FrozenRanker:
        return load_frozen_ranker(self.store, version, previous, self.cfg.scorers)

    @property
    def ranker(self) -> FrozenRanker | None:
        return self.follower.model

    @property
    def pinned(self) -> int | None:
        return self.follower.pin_version

    @property
    def _refused(self) -> dict[int, str]:
        return self.follower.refused

    @property
    def last_error(self) -> str | None:
        return self.follower.last_error or self.catalogue_error

    # ------------------------------------------------------------ following
    def start(self, wait_s: float = 0.0) -> "SearchService":
        self.poll_once()
        self.follower.start()
        self._thread = threading.Thread(target=self._follow, name="freshrec-search-catalogue", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + wait_s
        while self.ranker is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.follower.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.follower.alive

    def health(self) -> tuple[bool, str]:
        """(serving, why): not until both a catalogue and a ranker version are loaded."""
        if self.corpus is None:
            return False, f"no catalogue indexed yet ({self.catalogue_error or 'reading ' + self.cfg.catalogue})"
        return self.follower.health()

    def _follow(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval_s):
            self.poll_catalogue()

    def poll_catalogue(self) -> None:
        """Refresh the catalogue if its file changed (the last good one keeps serving otherwise)."""
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
            self.catalogue_error = None
        except Exception as exc:
            self.catalogue_error = f"catalogue {self.cfg.catalogue}: {exc}"
            log.warning("search: %s", self.catalogue_error)

    def poll_once(self) -> None:
        """Refresh the catalogue if its file changed; load the target version if it moved."""
        self.poll_catalogue()
        self.follower.poll()

    def reconfigure(self, user_config: dict) -> None:
        if "pin_version" in user_config:
            self.follower.configure(user_config["pin_version"])

    # -------------------------------------------------------------- answers
    def search(self, request) -> "pb.SearchResponse":
        ranker, corpus = self.ranker, self.corpus
        if ranker is None or corpus is None:
            raise NotReadyError(f"not ready: {self.health()[1]}")
        view = corpus.view()  # one catalogue state for the whole answer; no lock held while ranking
        return search_answer(ranker, ranker.version, ranker.spec, ranker.num_candidates, view, request, self.cfg.limits)


def search_answer(
    scorer, version: int, spec: SearchSpec, num_candidates: int, view, request, limits: SearchLimits = SearchLimits()
) -> "pb.SearchResponse":
    """The answer to ``request`` of ranker ``version`` over one corpus state ``view`` (a
    :meth:`search.ranker.SearchCorpus.view`, or the corpus itself): the request checked (INVALID_ARGUMENT),
    BM25 candidates ranked by ``scorer`` (anything with ``score(batch)``: a served :class:`FrozenRanker`, or
    offline the trainer of :func:`load_ranker`), the response built. ``num_candidates``: the version's
    retrieval depth, the default when the request gives none. The Search replica answers with this function
    and so does offline ranking (``bench serve-chaos``'s checker), so their answers can be compared bit for bit.
    """
    limits = dataclasses.replace(limits, default_candidates=min(num_candidates, limits.max_candidates))
    req = validate(request, limits, spec.tokenizer)
    if req.pin_version is not None and req.pin_version != version:
        raise VersionMismatchError(f"pin_version {req.pin_version} is not served (serving {version})")
    ranked = rank(scorer, view, " ".join(req.tokens), req.k, req.num_candidates, req.classes, req.categories)
    cat = view.catalogue
    ids = cat.product_id[ranked.rows]
    resp = pb.SearchResponse(
        model_version=version,
        catalogue_digest=view.digest,
        candidates=int(ranked.candidates),
        catalogue_products=len(cat),
    )
    for pid, row, s, b in zip(
        ids.tolist(), ranked.rows.tolist(), np.asarray(ranked.scores).tolist(), ranked.bm25.tolist()
    ):
        resp.hits.add(product_id=pid, score=s, lexical_score=b, product_name=cat.name[row])
    return resp
