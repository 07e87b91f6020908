"""Conformance of every implementation of freshrec's declared interfaces (typing.Protocol):

* the embedding backend (:class:`trainer.backends.EmbeddingBackend`): LocalBackend and the PS client (shards on
  threads of this process; the Ray actor placement runs the same client and shard code, tests/integration);
* the item index (:class:`serving.retrieval.CandidateIndex`): the exact ItemIndex and the FAISS AnnItemIndex;
* the version loader (:class:`serving.loading.VersionLoader`): the Scorer's and Search's.

Each implementation is checked for the declared shape (``isinstance`` of the runtime-checkable protocol) AND
for the behaviour the protocol promises, against the others where they must agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramserver import create_parameter_server
from paramserver.config import PSConfig, TableConfig
from serving.ann import AnnItemIndex, AnnOptions
from serving.loading import Versioned
from serving.retrieval import CandidateIndex, ItemIndex
from trainer.backends import EmbeddingBackend, LocalBackend

TABLES = (TableConfig("user", 8), TableConfig("item", 4))


# ------------------------------------------------------------------ embedding backend
def _local(cfg: PSConfig):
    return LocalBackend(cfg)


def _ps_in_process(cfg: PSConfig):
    return create_parameter_server(cfg, placement="in_process")


BACKENDS = {"local": _local, "ps-in-process": _ps_in_process}


def _drive(backend, seed: int, steps: int = 6) -> None:
    """The core's sync pattern: pull step 0, then push_pull (push k, pull k + 1), then a last push."""
    rng = np.random.default_rng(seed)
    ids = [{t.name: rng.integers(0, 50, rng.integers(1, 30)).astype(np.int64) for t in TABLES} for _ in range(steps)]
    ticket = backend.pull_many(ids[0], step=0, lease=True)
    for k in range(steps):
        rows = backend.wait(ticket)
        for t in TABLES:
            assert rows[t.name].dtype == np.float32 and rows[t.name].shape == (len(ids[k][t.name]), t.dim)
        grads = {t: (ids[k][t], np.float32(0.1) * rows[t] + np.float32(0.01 * (k + 1))) for t in rows}
        if k + 1 < steps:
            ticket = backend.push_pull(grads, ids[k + 1], step=k)
        else:
            backend.wait(backend.push_many(grads, step=k))


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_conforms_and_trains_like_the_others(name):
    cfg = PSConfig(tables=TABLES, num_shards=2, seed=4, learning_rate=0.05)
    reference, backend = LocalBackend(cfg), BACKENDS[name](cfg)
    try:
        assert isinstance(backend, EmbeddingBackend)
        assert backend.cfg.mode == "sync" and set(backend.cfg.table_names) == {"user", "item"}
        _drive(reference, seed=11)
        _drive(backend, seed=11)
        want, got = reference.table_state(), backend.table_state()
        for t in TABLES:
            np.testing.assert_array_equal(got[t.name]["ids"], want[t.name]["ids"])
            np.testing.assert_array_equal(got[t.name]["rows"], want[t.name]["rows"])  # sync: bit-identical
    finally:
        backend.shutdown()


def test_an_object_without_the_ticket_api_is_not_a_backend():
    class PullOnly:
        cfg = PSConfig(tables=TABLES)

        def pull_many(self, ids_by_table, step=None, lease=False, stale=0): ...

    assert not isinstance(PullOnly(), EmbeddingBackend)


# ------------------------------------------------------------------ item index
def _items(seed: int = 3, n: int = 600, d: int = 8):
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10_000, n, replace=False)).astype(np.int64)
    rows = rng.standard_normal((n, d)).astype(np.float32)
    return ids, rows, rng.integers(0, 5, n).astype(np.int64), rng


def _exact(ids, rows, cats):
    return ItemIndex(ids, torch.from_numpy(rows), cats)


def _ann(ids, rows, cats):
    return AnnItemIndex.build(ids, rows, cats, AnnOptions(nlist=8, nprobe=8))  # every list scanned: exact


INDEXES = {"exact": _exact, "ann": _ann}


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_every_item_index_conforms_and_retrieves_like_exact_search(name):
    ids, rows, cats, rng = _items()
    index = INDEXES[name](ids, rows, cats)
    assert isinstance(index, CandidateIndex) and len(index) == len(ids)
    np.testing.assert_array_equal(index.ids, ids)
    for _ in range(5):
        q = rng.standard_normal(rows.shape[1]).astype(np.float32)
        exclude = rng.choice(ids, 20, replace=False)
        category = int(rng.integers(0, 5))
        for kw in ({}, {"exclude": exclude}, {"category": category}, {"exclude": exclude, "category": category}):
            got_ids, got_scores = index.top(q, 10, **kw)
            scores = rows @ q  # the reference: brute force in numpy
            allowed = np.ones(len(ids), bool)
            if "exclude" in kw:
                allowed &= ~np.isin(ids, exclude)
            if "category" in kw:
                allowed &= cats == category
            order = np.argsort(-np.where(allowed, scores, -np.inf), kind="stable")[: min(10, allowed.sum())]
            np.testing.assert_array_equal(got_ids, ids[order])
            np.testing.assert_allclose(got_scores, scores[order], rtol=1e-5, atol=1e-5)
            assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32
    everything = index.top(rows[0], len(ids) + 5, exclude=ids)
    assert len(everything[0]) == 0  # all excluded: nothing, never an excluded id


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_a_category_filter_without_a_catalogue_is_a_clear_error(name):
    ids, rows, _, _ = _items(n=100)
    with pytest.raises(ValueError, match="needs the item catalogue"):
        INDEXES[name](ids, rows, None).top(rows[0], 3, category=1)


# ------------------------------------------------------------------ version loader
@pytest.fixture(scope="module")
def store_of_two_versions(tmp_path_factory):
    from bench.servedata import StoreTrainer, write_taobao_csv
    from paramserver.config import PSConfig

    root = tmp_path_factory.mktemp("loaders")
    trainer = StoreTrainer(root / "versions", ps=PSConfig(num_shards=1, capacity_per_shard=4096))
    for i in range(2):
        path = write_taobao_csv(root / "in" / f"part-{i}.csv", 400, i, start_ts=1_511_658_000 + 3600 * i, new_items=20)
        trainer.add_file(path)
    return str(root / "versions")


def _scorer_loader(store_url: str):
    from serving.config import ServeConfig
    from serving.service import ScoringService

    return ScoringService(ServeConfig(store_url=store_url))._load


def _model_digest(model) -> dict:
    return {
        name: (model.tables[name].ids.copy(), model.tables[name].rows.numpy().copy()) for name in model.tables.tables
    }


def test_the_scorer_loader_keeps_the_loader_contract(store_of_two_versions):
    from serving.follower import is_corrupt
    from versions import VersionStore

    load = _scorer_loader(store_of_two_versions)
    first, last = VersionStore(store_of_two_versions).versions()[:2]
    old = load(first, None)
    assert isinstance(old, Versioned) and old.version == first
    followed, full = load(last, old), load(last, None)
    assert followed.version == full.version == last
    want, got = _model_digest(full), _model_digest(followed)  # deltas on the previous == a full load
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name][0], want[name][0])
        np.testing.assert_array_equal(got[name][1], want[name][1])
    with pytest.raises(Exception) as missing:
        load(last + 50, None)
    assert not is_corrupt(missing.value)  # a version not (yet, or no longer) there is retried, not refused


def test_the_search_loader_refuses_a_version_it_cannot_serve(store_of_two_versions):
    """A recommendation model is not a search ranker: the search loader refuses it (a CORRUPT-class error, so the
    follower refuses the version instead of retrying it forever). Its positive path needs a search-trained store:
    tests/unit/test_search_replica.py."""
    from search.service import load_frozen_ranker
    from serving.follower import is_corrupt
    from versions import VersionStore

    store = VersionStore(store_of_two_versions)
    with pytest.raises(ValueError, match="not a search ranker") as caught:
        load_frozen_ranker(store, store.latest(), None)
    assert is_corrupt(caught.value)
