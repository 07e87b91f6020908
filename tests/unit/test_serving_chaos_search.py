"""The search side of the serving chaos run (bench.servechaos), without Ray.

* The seeded stand-in gate holds versions back (a compacted version gets its source's decision) and
  records every version it publishes before PUBLISHED moves.
* The checker's copy of a store (hard links) keeps the versions gc removes: an answer of a removed version
  is still recomputed, equal to what it was before gc; gc spares PINNED and its chain.
* The Search replica's answer (frozen tables, deltas applied on the served version) serializes to exactly
  the bytes of the offline answer (``load_ranker``'s trainer over a fresh index), requests with unknown
  tokens, filters and server-default depths included.
"""

from __future__ import annotations

import collections
import random

import pytest

from bench.servechaos import (
    SEARCH_BATCH,
    OfflineSearch,
    SearchStream,
    SeededGate,
    answer_of,
    make_search_requests,
    mirror,
    write_search_data,
)
from versions import SnapshotConfig, VersionStore


@pytest.fixture(scope="module")
def chaos_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos-search")
    data = write_search_data(root / "data", seed=0)
    store_dir = root / "versions"
    published: set = set()
    events: collections.Counter = collections.Counter()
    gate = SeededGate(store_dir, 0.5, random.Random(3), published, events, "search")
    stream = SearchStream(data, store_dir, 0, SnapshotConfig(full_every=3, keep=1000), gate)
    newest = [stream.add(2 * SEARCH_BATCH), stream.add()]  # 1 full, 2 delta, 3 delta -> 4 its full copy
    return root, data, store_dir, gate, published, events, newest


def test_the_seeded_gate_holds_back_and_a_compacted_version_inherits_its_sources_decision(chaos_search):
    root, data, store_dir, gate, published, events, newest = chaos_search
    store = VersionStore(str(store_dir))
    versions = store.versions()
    assert versions == [1, 2, 3, 4] and newest == [2, 4]
    assert set(gate.decided) == set(versions)
    compacted = {v: store.manifest(v).extra.get("compacted_from") for v in versions}
    assert compacted == {1: None, 2: None, 3: None, 4: 3}  # full_every=3: the second delta is compacted
    for v, src in compacted.items():
        if src is not None:
            assert gate.decided[v] == gate.decided[src], (v, src)
    assert published == {v for v, ok in gate.decided.items() if ok}
    assert 0 < len(published) < len(versions)  # some published, some held back
    assert store.published() == max(published)
    assert events["search_published"] == len(published)
    assert events["search_held_back"] == len(versions) - len(published)


def test_the_checker_copy_recomputes_versions_gc_removed_and_gc_spares_the_pinned_chain(chaos_search, tmp_path):
    root, data, _, _, _, _, _ = chaos_search
    store_dir = tmp_path / "versions"
    mirror(root / "versions", store_dir)  # a private copy of the fixture's store (gc below must not touch it)
    store = VersionStore(str(store_dir))
    versions = store.versions()
    products = str(data / "eval40_products.tsv")
    reqs = make_search_requests(data, 0)
    before = OfflineSearch(str(store_dir), products)
    want = {v: [before.answer(v, r) for r in reqs] for v in versions}
    copy = tmp_path / "checker"
    mirror(store_dir, copy)
    store.publish(versions[-1])
    store.pin(2)  # a delta on version 1: both must stay
    removed = store.gc(keep=1)["removed"]
    assert removed == [3], removed  # 4 (newest, published) is full: its source 3 is needed by nothing
    assert set(store.versions()) == set(versions) - set(removed)
    after = OfflineSearch(str(copy), products)
    for v in removed:
        assert [after.answer(v, r) for r in reqs] == want[v], v


def test_the_search_replica_answers_the_offline_answer_byte_for_byte(chaos_search):
    from search.service import SearchServeConfig, SearchService

    root, data, store_dir, _, _, _, _ = chaos_search
    products = str(data / "eval40_products.tsv")
    versions = VersionStore(str(store_dir)).versions()
    reqs = make_search_requests(data, 0)
    assert {bool(r.filters.product_class) for r in reqs} == {True, False}
    assert any("zq" in r.query for r in reqs) and {r.num_candidates for r in reqs} == {0, 30}
    offline = OfflineSearch(str(store_dir), products)
    svc = SearchService(SearchServeConfig(str(store_dir), products, pin_version=versions[0], poll_interval_s=60))
    svc.poll_once()
    try:
        for v in versions:  # forward one version at a time: each a delta on the served one, or a full one
            svc.follower.configure(v)
            assert svc.ranker.version == v
            for r in reqs:
                got = answer_of("Search", svc.search(r))
                assert got == offline.answer(v, r), (v, r.query)
    finally:
        svc.stop()
