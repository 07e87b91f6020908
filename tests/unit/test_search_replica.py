"""Search is a read-only, concurrent replica (issue 20, item 7).

Scoring never admits or evicts a row (unknown query tokens get the cold-start row), requests run side
by side, every answer is bit-identical to ranking offline with the version it names, and the replica
follows PINNED / PUBLISHED / LATEST like the Scorer.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from search.data import read_wands
from search.ranker import RankerConfig, SearchCorpus, rank
from search.wire import pb
from tests.support.wands import write_synthetic
from versions import VersionStore

QUERIES = ["king bed", "blue modern sofa", "red chair", "oak table lamp", "bed"]


@pytest.fixture(scope="module")
def search_store(tmp_path_factory):
    from search.replay import replay

    root = write_synthetic(tmp_path_factory.mktemp("wands"))
    catalogue, judgments = read_wands(root)
    store = str(root / "versions")
    replay(
        SearchCorpus(catalogue),
        judgments.of(judgments.query_ids[:12]),
        RankerConfig(epochs=1, num_candidates=40),
        store,
        batch_queries=6,
        seed=3,
    )
    return root, catalogue, store


def offline(store: str, version: int, catalogue, queries, k=10, n=40):
    """What `freshrec search` computes offline with ``version``: a fresh trainer from the store."""
    from search.service import load_ranker

    trainer = load_ranker(store, version).trainer
    corpus = SearchCorpus(catalogue)
    out = {}
    for q in queries:
        r = rank(trainer, corpus, q, k, n)
        out[q] = (catalogue.product_id[r.rows].tolist(), np.asarray(r.scores, np.float32))
    return out


def answer(svc, q, k=10, n=40):
    r = svc.search(pb.SearchRequest(query=q, k=k, num_candidates=n))
    return r.model_version, [h.product_id for h in r.hits], np.float32([h.score for h in r.hits])


def test_unseen_tokens_never_change_the_ranker_and_answers_equal_offline(search_store):
    from search.service import SearchServeConfig, SearchService

    root, catalogue, store = search_store
    v = VersionStore(store).latest()
    want = offline(store, v, catalogue, QUERIES)
    svc = SearchService(SearchServeConfig(store, str(root / "eval40_products.tsv"), poll_interval_s=60)).start()
    try:
        tables = svc.ranker.model.tables.tables
        before = {n: (t.ids.copy(), t.rows.clone()) for n, t in tables.items()}
        rng = np.random.default_rng(0)
        for _ in range(30):  # 30 requests full of tokens no version has seen
            words = " ".join(f"zq{rng.integers(1 << 40):x}" for _ in range(8))
            svc.search(pb.SearchRequest(query=f"bed {words}", k=5))
        for n, t in svc.ranker.model.tables.tables.items():
            assert np.array_equal(t.ids, before[n][0]) and bool((t.rows == before[n][1]).all()), n
        for q in QUERIES:
            version, ids, scores = answer(svc, q)
            assert version == v and ids == want[q][0]
            np.testing.assert_array_equal(scores, want[q][1])  # bit-identical
    finally:
        svc.stop()


def test_concurrent_searches_are_each_answered_by_one_version_exactly(search_store):
    from search.service import SearchServeConfig, SearchService

    root, catalogue, store = search_store
    versions = VersionStore(store).versions()
    want = {v: offline(store, v, catalogue, QUERIES) for v in versions[-2:]}
    svc = SearchService(
        SearchServeConfig(store, str(root / "eval40_products.tsv"), poll_interval_s=60, scorers=3)
    ).start()
    errors, seen = [], []

    def client(k):
        rng = np.random.default_rng(k)
        try:
            for _ in range(25):
                q = QUERIES[rng.integers(len(QUERIES))]
                version, ids, scores = answer(svc, q)
                seen.append(version)
                assert ids == want[version][q][0], (version, q)
                np.testing.assert_array_equal(scores, want[version][q][1])
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for pin in (versions[-2], None, versions[-2], None):  # swaps while requests run
            svc.reconfigure({"pin_version": pin})
        for t in threads:
            t.join(60)
        assert not errors, errors[0]
        assert set(seen) <= set(versions[-2:]) and len(seen) == 100
    finally:
        svc.stop()


def test_search_follows_pinned_then_published_then_latest(search_store):
    from search.service import SearchServeConfig, SearchService

    root, catalogue, store = search_store
    vs = VersionStore(store)
    versions = vs.versions()
    svc = SearchService(SearchServeConfig(store, str(root / "eval40_products.tsv"), poll_interval_s=60))
    try:
        svc.poll_once()
        assert svc.ranker.version == vs.latest() and svc.health()[0]
        vs.pin(versions[0])  # freshrec snapshots rollback
        svc.poll_once()
        assert svc.ranker.version == versions[0] and svc.follower.why == "pinned"
        vs.unpin()
        svc.poll_once()
        assert svc.ranker.version == (vs.published() or vs.latest())
    finally:
        svc.stop()
