"""Search: tokenizer, spec, data reader, Tantivy index and its refresh, features, NDCG and folds, request
validation (hypothesis), the ranker on the training core, replay with versions, and the service
(served == offline ranking, catalogue refresh, pinning). No Ray; the real WANDS data where present."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import ConfigError
from search.data import Catalogue, SearchDataError, read_catalogue, read_judgments, read_wands
from search.features import ProductFeatures, pair_batch
from search.index import LexicalIndex, category_prefixes
from search.metrics import dcg, ndcg_at_k, query_batches, query_folds
from search.ranker import RankerConfig, SearchCorpus, examples, ndcg_of, new_trainer, rank, train_queries
from search.request_checks import SearchLimits, validate
from search.spec import DENSE, SPARSE, SearchSpec
from search.tokenizer import Tokenizer, hash_tokens
from search.wire import pb
from serving.errors import InvalidRequestError, VersionMismatchError
from tests.support.data import SHARED_DATA, require
from tests.support.wands import write_synthetic

WANDS = SHARED_DATA / "wands_eval40"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = write_synthetic(tmp_path_factory.mktemp("wands"))
    catalogue, judgments = read_wands(root)
    return root, catalogue, judgments


# ------------------------------------------------------------------ tokenizer
def test_tokenizer_lowercases_and_splits_on_non_word_characters():
    t = Tokenizer()
    assert t.tokens("King Poster-Bed, 70.87'' W") == ["king", "poster", "bed", "70", "87", "w"]
    assert t.tokens("Dã©cor_Wall  DÉCOR") == ["dã", "cor", "wall", "décor"]
    assert t.tokens("  !!! ") == []
    assert Tokenizer(max_token_len=3).tokens("bed mattress") == ["bed"]
    assert t.unique("bed Bed bed frame") == ["bed", "frame"]
    with pytest.raises(ConfigError):
        Tokenizer(max_token_len=0)


def test_hashed_tokens_are_stable_and_namespaced():
    a = hash_tokens("query", ["bed", "king"])
    assert a.dtype == np.int64 and a.tolist() == hash_tokens("query", ["bed", "king"]).tolist()
    assert hash_tokens("name", ["bed"])[0] != a[0]
    assert len(hash_tokens("query", [])) == 0


# ---------------------------------------------------------------------- spec
def test_spec_gains_and_feature_spec():
    spec = SearchSpec()
    assert spec.gain_of("Exact") == 2.0 and spec.max_gain == 2.0
    with pytest.raises(ValueError, match="unknown label"):
        spec.gain_of("Great")
    fs = spec.feature_spec()
    assert [f.name for f in fs.sparse] == ["query_x_class", "matched_tokens"] == list(fs.multi_valued)
    every = SearchSpec(sparse_features=SPARSE).feature_spec()
    assert [f.name for f in every.sparse] == list(SPARSE) and every.multi_valued == SPARSE
    assert fs.dense_names == DENSE
    assert SearchSpec.from_dict(spec.to_dict()) == spec
    for bad in (
        {"dim": 6},
        {"gains": (("Exact", 1.0), ("Exact", 2.0))},
        {"gains": (("A", -1.0),)},
        {"sparse_features": ("nope",)},
        {"sparse_features": ()},
    ):
        with pytest.raises(ConfigError):
            SearchSpec(**bad)


# ---------------------------------------------------------------------- data
def test_reader_keeps_the_best_of_repeated_judgments_and_refuses_bad_files(tmp_path):
    (tmp_path / "q.tsv").write_text("query_id\tquery\tquery_class\n1\tbed\tBeds\n")
    (tmp_path / "l.tsv").write_text("query_id\tproduct_id\tlabel\n1\t5\tPartial\n1\t5\tExact\n1\t6\tIrrelevant\n")
    j = read_judgments(tmp_path / "q.tsv", tmp_path / "l.tsv")
    assert j.product_id.tolist() == [5, 6] and j.gain.tolist() == [2.0, 0.0] and j.queries == {1: "bed"}
    (tmp_path / "bad.tsv").write_text("query_id\tproduct_id\tlabel\n1\t5\tGreat\n")
    with pytest.raises(SearchDataError, match="unknown label"):
        read_judgments(tmp_path / "q.tsv", tmp_path / "bad.tsv")
    (tmp_path / "p.tsv").write_text("product_id\tproduct_name\n1\tbed\n")
    with pytest.raises(SearchDataError, match="missing column"):
        read_catalogue(tmp_path / "p.tsv")
    with pytest.raises(SearchDataError, match="no such file"):
        read_catalogue(tmp_path / "absent.tsv")
    (tmp_path / "p2.tsv").write_text(
        "product_id\tproduct_name\tproduct_class\tcategory_hierarchy\n1\t12'' bed \"x\tBeds\tA / B\n1\tbed\tBeds\tA\n"
    )
    with pytest.raises(SearchDataError, match="repeated product"):
        read_catalogue(tmp_path / "p2.tsv")


def test_wands_data_reads_as_documented():
    root = require(WANDS / "eval40_labels.tsv").parent
    catalogue, judgments = read_wands(root)
    assert len(catalogue) == 6482 and len(judgments.query_ids) == 40
    assert 6800 < len(judgments) <= 6986  # a few repeated pairs collapse to one


# --------------------------------------------------------------------- index
def _catalogue(rows):
    ids, names, classes, cats = zip(*rows)
    return Catalogue(np.array(ids, np.int64), names, classes, cats)


def test_index_ranks_by_bm25_filters_and_refreshes_in_place():
    cat = _catalogue(
        [
            (10, "king poster bed", "Beds", "Furniture / Beds"),
            (11, "queen bed", "Beds|Kids Beds", "Furniture / Beds"),
            (12, "king size rug", "Area Rugs", "Rugs"),
            (13, "oak table", "Tables", "Furniture / Tables"),
        ]
    )
    idx = LexicalIndex(cat)
    rows, scores = idx.search(["king", "bed"], 10)
    assert cat.product_id[rows].tolist()[0] == 10 and set(cat.product_id[rows].tolist()) == {10, 11, 12}
    assert (np.diff(scores) <= 0).all() and (scores > 0).all()
    rows, _ = idx.search(["king"], 10, classes=["Area Rugs"])
    assert cat.product_id[rows].tolist() == [12]
    rows, _ = idx.search(["bed"], 10, classes=["Kids Beds"])
    assert cat.product_id[rows].tolist() == [11]
    rows, _ = idx.search(["king", "oak"], 10, categories=["Furniture"])
    assert set(cat.product_id[rows].tolist()) == {10, 13}
    assert idx.search([], 10)[0].size == 0 and idx.search(["zebra"], 10)[0].size == 0
    full = idx.scores_all(["king"])
    assert full.shape == (4,) and (full[[0, 2]] > 0).all() and (full[[1, 3]] == 0).all()
    # the catalogue changes: 12 removed, 13 renamed, 14 added
    new = _catalogue(
        [
            (10, "king poster bed", "Beds", "Furniture / Beds"),
            (11, "queen bed", "Beds|Kids Beds", "Furniture / Beds"),
            (13, "zebra table", "Tables", "Furniture / Tables"),
            (14, "king zebra lamp", "Lamps", "Lighting"),
        ]
    )
    stats = idx.refresh(new)
    assert (stats.added, stats.changed, stats.removed, stats.products) == (1, 1, 1, 4)
    rows, _ = idx.search(["zebra"], 10)
    assert set(new.product_id[rows].tolist()) == {13, 14}
    assert idx.search(["oak"], 10)[0].size == 0
    rows, _ = idx.search(["king"], 10)
    assert set(new.product_id[rows].tolist()) == {10, 14}
    assert idx.refresh(new) == type(stats)(0, 0, 0, 4)


def test_category_prefixes():
    assert category_prefixes("A / B / C", " / ") == ["A", "A / B", "A / B / C"]
    assert category_prefixes("", " / ") == []


# ------------------------------------------------------------------ features
def test_pair_features_match_a_per_pair_reference():
    spec = SearchSpec()
    cat = _catalogue(
        [
            (1, "king poster bed", "Beds", "Furniture / Beds"),
            (2, "oak table", "Tables|Desks", "Furniture / Tables"),
            (3, "rug", "Rugs", "Rugs"),
        ]
    )
    prods = ProductFeatures.build(cat, spec)
    q = ["king", "bed", "bed"]
    b = pair_batch(
        spec,
        prods,
        q,
        np.array([2, 0, 1]),
        np.array([0.5, 3.0, 0.0], np.float32),
        np.array([1, 0, 2]),
        np.array([0.0, 1.0, 0.5], np.float32),
        features=SPARSE,
    )
    assert set(pair_batch(spec, prods, q, np.array([0]), np.array([1.0], np.float32), np.array([0])).sparse) == set(
        spec.sparse_features
    )
    col = {n: i for i, n in enumerate(DENSE)}
    assert len(b) == 3 and b.label.tolist() == [0.0, 1.0, 0.5]
    assert b.dense[:, col["match_name"]].tolist() == [0.0, 1.0, 0.0]  # 2 distinct query tokens
    assert b.dense[:, col["match_category"]].tolist() == [0.0, 0.0, 0.0]
    assert b.dense[:, col["match_any"]].tolist() == [0.0, 1.0, 0.0]
    assert b.dense[:, col["bm25_rel"]].tolist() == pytest.approx([0.5 / 3, 1.0, 0.0])
    assert b.dense[:, col["query_len"]].tolist() == [2, 2, 2] and b.dense[:, col["name_len"]].tolist() == [1, 3, 2]
    assert b.lengths["query_tokens"].tolist() == [2, 2, 2]
    assert b.lengths["product_class"].tolist() == [1, 1, 2]
    assert b.lengths["query_x_class"].tolist() == [2, 2, 4]
    assert b.lengths["matched_tokens"].tolist() == [0, 2, 0]
    assert b.lengths["matched_fields"].tolist() == [0, 2, 0]  # both matched in the name ("beds" is not "bed")
    assert b.lengths["category"].tolist() == [1, 2, 2]
    # the same pair gives the same ids wherever it sits in a batch
    one = pair_batch(spec, prods, q, np.array([0]), np.array([3.0], np.float32), np.array([0]), features=SPARSE)
    for name in SPARSE:
        v, ln = b.jagged(name)
        start = int(ln[0])
        assert v[start : start + int(ln[1])].tolist() == one.jagged(name)[0].tolist()


# ------------------------------------------------------------------- metrics
def test_ndcg_and_folds():
    assert ndcg_at_k([2, 1, 0], [2, 1], 10) == pytest.approx(1.0)
    assert ndcg_at_k([0, 0, 2], [2], 10) == pytest.approx(1 / math.log2(4) / 1.0 * (2**2 - 1) / (2**2 - 1))
    assert math.isnan(ndcg_at_k([0, 0], [0, 0], 10))
    assert ndcg_at_k([1, 2], [2, 1], 1) == pytest.approx((2**1 - 1) / (2**2 - 1))
    assert dcg([2, 2], 1) == pytest.approx(3.0)
    folds = query_folds(range(40), 5, seed=3)
    assert [len(f) for f in folds] == [8] * 5
    assert sorted(np.concatenate(folds).tolist()) == list(range(40))
    assert query_folds(range(40), 5, seed=3)[0].tolist() == folds[0].tolist()
    batches = query_batches(range(10), 4, seed=0)
    assert [len(b) for b in batches] == [4, 4, 2] and sorted(np.concatenate(batches).tolist()) == list(range(10))
    with pytest.raises(ValueError):
        query_folds(range(3), 5, 0)


@given(ranked=st.lists(st.integers(0, 2), max_size=30), extra=st.lists(st.integers(0, 2), max_size=30))
@settings(max_examples=200, deadline=None)
def test_ndcg_is_between_zero_and_one(ranked, extra):
    v = ndcg_at_k(ranked, ranked + extra, 10)
    assert math.isnan(v) or 0.0 <= v <= 1.0 + 1e-12


# ---------------------------------------------------------------- validation
def test_bad_requests_are_invalid_argument():
    limits, tok = SearchLimits(), Tokenizer()
    cases = [
        (pb.SearchRequest(query="", k=5), "query: empty"),
        (pb.SearchRequest(query="   ", k=5), "query: empty"),
        (pb.SearchRequest(query="x" * 513, k=5), "longer than 512"),
        (pb.SearchRequest(query="?!", k=5), "no word tokens"),
        (pb.SearchRequest(query="bed\x00", k=5), "control characters"),
        (pb.SearchRequest(query="bed", k=0), "k must be in"),
        (pb.SearchRequest(query="bed", k=101), "k must be in"),
        (pb.SearchRequest(query="bed", k=5, num_candidates=1001), "num_candidates"),
        (pb.SearchRequest(query="bed", k=5, num_candidates=-1), "num_candidates"),
    ]
    for req, msg in cases:
        with pytest.raises(InvalidRequestError, match=msg):
            validate(req, limits, tok)
    req = pb.SearchRequest(query="bed", k=5)
    req.filters.product_class.append(" ")
    with pytest.raises(InvalidRequestError, match="filters.product_class"):
        validate(req, limits, tok)
    req = pb.SearchRequest(query="bed", k=5)
    req.filters.category.extend(["A"] * 33)
    with pytest.raises(InvalidRequestError, match="filters.category"):
        validate(req, limits, tok)
    ok = validate(pb.SearchRequest(query="King Bed", k=20, num_candidates=10, pin_version=3), limits, tok)
    assert ok.tokens == ["king", "bed"] and ok.k == 20 and ok.num_candidates == 20 and ok.pin_version == 3
    assert validate(pb.SearchRequest(query="bed", k=1), limits, tok).num_candidates == limits.default_candidates


@settings(max_examples=300, deadline=None)
@given(
    query=st.text(max_size=600),
    k=st.integers(-10, 200),
    n=st.integers(-10, 1200),
    classes=st.lists(st.text(max_size=300), max_size=40),
    pin=st.integers(0, 2**64 - 1),
)
def test_validation_fuzz_accepts_or_refuses_cleanly(query, k, n, classes, pin):
    req = pb.SearchRequest(query=query, k=max(min(k, 2**31 - 1), -(2**31)), num_candidates=n, pin_version=pin)
    req.filters.product_class.extend(classes)
    try:
        v = validate(req, SearchLimits(), Tokenizer())
    except InvalidRequestError as exc:
        assert exc.code == "INVALID_ARGUMENT" and exc.message
        return
    assert v.tokens and 1 <= v.k <= 100 and v.k <= v.num_candidates <= 1000 and len(query) <= 512


# ------------------------------------------------- ranker, replay and service
def test_ranker_learns_the_synthetic_relevance(synthetic):
    _, catalogue, judgments = synthetic
    corpus = SearchCorpus(catalogue)
    cfg = RankerConfig(epochs=3, num_candidates=40)
    qids = judgments.query_ids
    train, test = qids[qids % 4 != 0], qids[qids % 4 == 0]
    trainer = new_trainer(corpus.spec, cfg)
    before = ndcg_of(trainer, corpus, judgments, train, 10, 40)
    train_queries(trainer, corpus, judgments, train, cfg)
    after = ndcg_of(trainer, corpus, judgments, train, 10, 40)
    assert np.nanmean(list(after.values())) > np.nanmean(list(before.values()))
    batch = examples(corpus, judgments, test, 40)
    assert len(batch) > 0 and set(np.unique(batch.label).tolist()) <= {0.0, 0.5, 1.0}
    r = rank(trainer, corpus, "king bed", k=5, num_candidates=40)
    assert len(r.rows) == 5 and (np.diff(r.scores) <= 0).all()
    assert len(rank(None, corpus, "zebra", k=5).rows) == 0


def test_replay_versions_serve_the_same_ranking(synthetic, tmp_path):
    from search.replay import replay
    from search.service import SearchServeConfig, SearchService, load_ranker

    root, catalogue, judgments = synthetic
    corpus = SearchCorpus(catalogue)
    cfg = RankerConfig(epochs=1, num_candidates=50)
    store = str(tmp_path / "versions")
    result = replay(corpus, judgments, cfg, store, batch_queries=8, seed=1, metrics_path=tmp_path / "m.jsonl")
    assert result.versions == [1, 2, 3] and len((tmp_path / "m.jsonl").read_text().splitlines()) == 3
    seen = [q for b in result.batches for q in b["queries"]]
    assert sorted(seen) == sorted(judgments.query_ids.tolist())  # every query exactly once
    s = result.summary()
    assert 0 < s["progressive_ndcg10"] <= 1 and 0 < s["lexical_ndcg10"] <= 1
    # the served ranker is the version: the same scores as the trainer that wrote it
    served = load_ranker(store)
    assert served.version == 3 and served.spec == corpus.spec and served.num_candidates == 50
    svc = SearchService(SearchServeConfig(store, str(root / "eval40_products.tsv"), poll_interval_s=0.05)).start()
    try:
        resp = svc.search(pb.SearchRequest(query="king bed", k=5))
        offline = rank(served.trainer, corpus, "king bed", 5, 50)
        assert resp.model_version == 3 and resp.catalogue_products == len(catalogue)
        assert [h.product_id for h in resp.hits] == catalogue.product_id[offline.rows].tolist()
        np.testing.assert_array_equal(np.float32([h.score for h in resp.hits]), offline.scores)
        with pytest.raises(VersionMismatchError):
            svc.search(pb.SearchRequest(query="bed", k=5, pin_version=2))
        with pytest.raises(InvalidRequestError):
            svc.search(pb.SearchRequest(query="bed", k=0))
        req = pb.SearchRequest(query="king", k=50)
        req.filters.product_class.append("Beds")
        found = corpus.rows_of(np.array([h.product_id for h in svc.search(req).hits]))
        assert found.size and {catalogue.product_class[i] for i in found} == {"Beds"}
        # the catalogue changes on disk: the index follows
        path = root / "eval40_products.tsv"
        text = path.read_text()
        path.write_text(text + "9999\tzebra striped bed\tBeds\tFurniture / Bedroom Furniture / Beds\n")
        svc.poll_once()
        hits = svc.search(pb.SearchRequest(query="zebra", k=3)).hits
        assert [h.product_id for h in hits] == [9999] and hits[0].product_name == "zebra striped bed"
        path.write_text(text)
        svc.poll_once()
        assert len(svc.search(pb.SearchRequest(query="king zebra", k=100)).hits) > 0
        assert 9999 not in [h.product_id for h in svc.search(pb.SearchRequest(query="zebra bed", k=100)).hits]
        # pin an older version
        svc.reconfigure({"pin_version": 1})
        assert svc.search(pb.SearchRequest(query="bed", k=3)).model_version == 1
    finally:
        svc.stop()


def test_replay_resumes_from_the_store_and_trains_only_new_queries(synthetic, tmp_path):
    from search.replay import replay
    from versions import VersionStore

    _, catalogue, judgments = synthetic
    corpus, cfg, store = SearchCorpus(catalogue), RankerConfig(epochs=1, num_candidates=30), str(tmp_path / "v")
    qids = judgments.query_ids
    first = replay(corpus, judgments.of(qids[:8]), cfg, store, batch_queries=4)
    assert first.versions == [1, 2]
    again = replay(corpus, judgments.of(qids[:8]), cfg, store, batch_queries=4)  # nothing new arrived
    assert again.batches == [] and again.versions == []
    more = replay(corpus, judgments, cfg, store, batch_queries=8)  # 16 new queries arrive
    assert more.versions == [3, 4]
    trained = [q for b in more.batches for q in b["queries"]]
    assert sorted(trained) == sorted(qids[8:].tolist())
    assert [b["file"] for b in more.batches] == ["judgments-batch-0002", "judgments-batch-0003"]
    extra = VersionStore(store).manifest(4).extra
    assert sorted(extra["trained_queries"]) == sorted(qids.tolist())
    # the resumed ranker continued: its step counter counts the first run's steps too
    from search.service import load_ranker

    assert load_ranker(store, 4).trainer.step > load_ranker(store, 2).trainer.step > 0
    with pytest.raises(ValueError, match="another search spec"):
        replay(SearchCorpus(catalogue, SearchSpec(sparse_features=("matched_tokens",))), judgments, cfg, store)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(query=st.text(max_size=80), k=st.integers(-3, 120))
def test_service_fuzz_never_fails_otherwise(synthetic_service, query, k):
    svc, n = synthetic_service
    try:
        r = svc.search(pb.SearchRequest(query=query, k=k))
    except InvalidRequestError:
        return
    assert len(r.hits) <= min(k, n) and r.model_version >= 1


@pytest.fixture(scope="module")
def synthetic_service(synthetic, tmp_path_factory):
    from search.replay import replay
    from search.service import SearchServeConfig, SearchService

    root, catalogue, judgments = synthetic
    store = str(tmp_path_factory.mktemp("svc") / "versions")
    replay(
        SearchCorpus(catalogue),
        judgments.of(judgments.query_ids[:4]),
        RankerConfig(epochs=1, num_candidates=40),
        store,
        batch_queries=4,
    )
    svc = SearchService(SearchServeConfig(store, str(root / "eval40_products.tsv"))).start()
    yield svc, len(catalogue)
    svc.stop()


def test_service_is_unavailable_without_a_version_and_refuses_a_non_search_version(synthetic, tmp_path):
    from search.service import SearchServeConfig, SearchService
    from serving.errors import NotReadyError
    from versions import VersionStore

    root, _, _ = synthetic
    store = str(tmp_path / "versions")
    svc = SearchService(SearchServeConfig(store, str(root / "eval40_products.tsv")))
    svc.poll_once()
    with pytest.raises(NotReadyError) as exc:
        svc.search(pb.SearchRequest(query="bed", k=3))
    assert exc.value.code == "UNAVAILABLE"
    w = VersionStore(store).begin("full", meta={"spec_source": "taobao"})  # a recommendation-like version
    w.commit([w.write_part("dense", {"x": np.zeros(2, np.float32)}, {"role": "dense"})])
    svc.poll_once()
    assert 1 in svc._refused and "not a search ranker" in svc.last_error
    with pytest.raises(NotReadyError):
        svc.search(pb.SearchRequest(query="bed", k=3))


# ----------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "--query", "", "--k", "3"], "no word tokens"),
        (["search", "--query", "?!", "--k", "3"], "no word tokens"),
        (["search", "--query", "x" * 513], "at most 512 characters"),
        (["search", "--query", "bed", "--k", "0"], "expected an integer >= 1"),
        (["search", "--query", "bed", "--k", "101"], "k is at most 100"),
        (["search", "--query", "bed", "--num-candidates", "5000"], "at most 1000"),
        (["search-serve", "--run-dir", "r", "--catalogue", "p.tsv", "--grpc-port", "70000"], "at most 65535"),
        (["search-train", "--data", "d", "--run-dir", "r", "--batch-queries", "0"], "expected an integer >= 1"),
    ],
)
def test_cli_refuses_bad_values_before_anything_starts(capsys, argv, message):
    from cluster.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_refuses_missing_files_with_a_clear_message(capsys, tmp_path):
    from cluster.cli import main

    assert main(["search-serve", "--run-dir", str(tmp_path), "--catalogue", str(tmp_path / "none.tsv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["search-train", "--data", str(tmp_path), "--run-dir", str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_every_public_name_of_search_imports():
    import search

    for name in search.__all__:
        assert getattr(search, name) is not None
