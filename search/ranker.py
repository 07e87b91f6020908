"""Lexical retrieval + the learned ranker: candidates from the index, scored by the training core.

The ranker is freshrec's DLRM-style :class:`trainer.core.TrainerCore` (through
:class:`trainer.local.LocalTrainer`: in-process FBGEMM tables) over the search spec's features;
nothing here trains or scores by itself::

    corpus = SearchCorpus(catalogue, spec)              # Tantivy index + per-product feature ids
    trainer = new_trainer(spec, RankerConfig())
    train_queries(trainer, corpus, judgments, train_qids, epochs=cfg.epochs)
    ranked = rank(trainer, corpus, "king poster bed", k=10)   # Ranked(rows, scores, bm25)

Training examples of a query are its BM25 top ``num_candidates`` (what serving will rank; an
unjudged one is irrelevant) plus every judged product (so the model also sees relevant products the
index ranks low), labelled gain / max gain.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from search.data import Catalogue, Judgments
from search.features import ProductFeatures, pair_batch
from search.index import LexicalIndex, RefreshStats
from search.metrics import ndcg_at_k, query_folds
from search.spec import SearchSpec
from trainer.config import ModelConfig, TrainConfig
from trainer.data import EventBatch


@dataclasses.dataclass(frozen=True)
class RankerConfig:
    """The ranker's model and training settings (the core's own configs) and the retrieval depth."""

    num_candidates: int = 20
    epochs: int = 4
    train_on_judged_outside: bool = False  # also train on judged products outside the BM25 top num_candidates
    model: ModelConfig = ModelConfig(bottom_mlp=(16,), top_mlp=(64, 32), dcn_layers=1)
    train: TrainConfig = TrainConfig(batch_size=64, seed=0, dense_lr=0.01, sparse_lr=0.05)

    def __post_init__(self) -> None:
        if not 1 <= self.num_candidates <= 5000:
            raise ValueError(f"num_candidates must be in [1, 5000], got {self.num_candidates}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")

    def run_config(self) -> dict:
        """The ``config`` a version manifest carries (what :func:`trainer.versioning.load_trainer` reads)."""
        model = dataclasses.asdict(self.model)
        train = {k: (v.value if hasattr(v, "value") else v) for k, v in dataclasses.asdict(self.train).items()}
        return {
            "model": model,
            "train": train,
            "search": {"num_candidates": self.num_candidates, "epochs": self.epochs},
        }


class SearchCorpus:
    """The catalogue, its lexical index and its precomputed product features; ``refresh`` swaps all three."""

    def __init__(self, catalogue: Catalogue, spec: SearchSpec = SearchSpec()) -> None:
        self.spec = spec
        self.index = LexicalIndex(catalogue, spec)
        self.products = ProductFeatures.build(catalogue, spec)
        self.digest = catalogue.digest()
        self.lock = threading.Lock()  # held by refresh and while a view is taken (never while ranking)

    @property
    def catalogue(self) -> Catalogue:
        return self.index.catalogue

    def refresh(self, catalogue: Catalogue) -> RefreshStats:
        """Re-index what changed; a search on a :meth:`view` sees the old or the new catalogue, never a mix."""
        products = ProductFeatures.build(catalogue, self.spec)
        with self.lock:
            stats = self.index.refresh(catalogue)
            self.products = products
            self.digest = catalogue.digest()
        return stats

    def view(self) -> "CorpusView":
        """An immutable snapshot of the corpus (index, product features, digest): what one search reads.
        Taking it holds ``lock`` for three reference reads; searches on views run side by side."""
        with self.lock:
            return CorpusView(self.spec, self.index.view(), self.products, self.digest)

    def rows_of(self, product_ids: np.ndarray) -> np.ndarray:
        """Catalogue rows of ``product_ids`` (-1 where a product is not in the catalogue)."""
        cat = self.catalogue.product_id
        order = np.argsort(cat, kind="stable")
        pos = np.searchsorted(cat[order], product_ids)
        pos = np.minimum(pos, len(cat) - 1)
        found = cat[order][pos] == product_ids
        return np.where(found, order[pos], -1)


@dataclasses.dataclass(frozen=True)
class CorpusView:
    """One state of a :class:`SearchCorpus` (duck-types it for :func:`candidates` and :func:`rank`)."""

    spec: SearchSpec
    index: "object"  # search.index.IndexView
    products: ProductFeatures
    digest: str

    @property
    def catalogue(self) -> Catalogue:
        return self.index.catalogue


def new_trainer(spec: SearchSpec, cfg: RankerConfig):
    """A fresh ranker: the training core over in-process embedding tables."""
    from trainer.local import LocalTrainer

    return LocalTrainer(spec.feature_spec(), cfg.model, cfg.train)


def query_examples(
    corpus: SearchCorpus,
    text: str,
    product_ids: np.ndarray,
    gains: np.ndarray,
    num_candidates: int,
    judged_outside: bool = False,
) -> EventBatch:
    """One query's training examples: the BM25 top ``num_candidates`` (what serving ranks), plus every
    other judged product with ``judged_outside``."""
    spec = corpus.spec
    tokens = spec.tokenizer.tokens(text)
    scores = corpus.index.scores_all(tokens)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    top = order[:num_candidates][scores[order[:num_candidates]] > 0]
    judged = corpus.rows_of(np.asarray(product_ids, np.int64))
    ok = judged >= 0
    rows = np.unique(np.concatenate([top, judged[ok]])) if judged_outside else np.sort(top)
    relevance = np.zeros(len(corpus.catalogue), np.float32)
    relevance[judged[ok]] = np.asarray(gains, np.float32)[ok] / spec.max_gain
    return pair_batch(spec, corpus.products, tokens, rows, scores[rows], rank[rows], relevance[rows], source=text)


def examples(
    corpus: SearchCorpus,
    judgments: Judgments,
    query_ids: Sequence[int],
    num_candidates: int,
    judged_outside: bool = False,
) -> EventBatch:
    """The training examples of ``query_ids`` (in that order), one EventBatch."""
    parts = []
    for q in np.asarray(query_ids, np.int64).tolist():
        m = judgments.query_id == q
        parts.append(
            query_examples(
                corpus, judgments.queries[q], judgments.product_id[m], judgments.gain[m], num_candidates, judged_outside
            )
        )
    return EventBatch.concat(parts)


@dataclasses.dataclass(frozen=True)
class Ranked:
    rows: np.ndarray  # catalogue rows, best first
    scores: np.ndarray  # the model's scores (the lexical scores when ranked lexically)
    bm25: np.ndarray
    candidates: int  # products the index retrieved


def candidates(
    corpus: SearchCorpus, tokens: Sequence[str], n: int, classes: Sequence[str] = (), categories: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray, EventBatch | None]:
    rows, bm25 = corpus.index.search(tokens, n, classes, categories)
    if not len(rows):
        return rows, bm25, None
    return rows, bm25, pair_batch(corpus.spec, corpus.products, tokens, rows, bm25, np.arange(len(rows)))


def rank(
    trainer,
    corpus: SearchCorpus,
    text: str,
    k: int,
    num_candidates: int = 200,
    classes: Sequence[str] = (),
    categories: Sequence[str] = (),
) -> Ranked:
    """The best ``k`` products for ``text``: BM25 candidates ordered by the model (lexically when ``trainer``
    is None). Ties keep the lexical order."""
    tokens = corpus.spec.tokenizer.tokens(text)
    rows, bm25, batch = candidates(corpus, tokens, max(num_candidates, k), classes, categories)
    if batch is None or trainer is None:
        return Ranked(rows[:k], bm25[:k], bm25[:k], len(rows))
    scores = trainer.score(batch)
    order = np.argsort(-scores, kind="stable")[:k]
    return Ranked(rows[order], scores[order], bm25[order], len(rows))


def train_queries(
    trainer, corpus: SearchCorpus, judgments: Judgments, query_ids: Sequence[int], cfg: "RankerConfig"
) -> dict:
    """``cfg.epochs`` shuffled passes of the core over the examples of ``query_ids``."""
    batch = examples(corpus, judgments, query_ids, cfg.num_candidates, cfg.train_on_judged_outside)
    return trainer.train(batch, epochs=cfg.epochs, shuffle=True)


def ndcg_of(
    trainer,
    corpus: SearchCorpus,
    judgments: Judgments,
    query_ids: Sequence[int],
    k: int = 10,
    num_candidates: int = 200,
) -> dict[int, float]:
    """NDCG@k per query over the whole catalogue (unjudged products gain 0); lexical when ``trainer`` is None."""
    out = {}
    for q in np.asarray(query_ids, np.int64).tolist():
        m = judgments.query_id == q
        gain = dict(zip(judgments.product_id[m].tolist(), judgments.gain[m].tolist()))
        r = rank(trainer, corpus, judgments.queries[q], k, num_candidates)
        ranked = [gain.get(int(p), 0.0) for p in corpus.catalogue.product_id[r.rows]]
        out[q] = ndcg_at_k(ranked, judgments.gain[m], k)
    return out


def mean(values: Mapping[int, float] | Sequence[float]) -> float:
    v = np.asarray(list(values.values()) if isinstance(values, Mapping) else list(values), np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else float("nan")


def cross_validate(
    corpus: SearchCorpus, judgments: Judgments, cfg: RankerConfig, folds: int = 5, seed: int = 0, k: int = 10
) -> dict:
    """Folds by query: for each fold a fresh ranker trained on the other folds' queries; NDCG@k of the
    held-out queries, lexical and ranked. No query is both trained and tested."""
    parts = query_folds(judgments.query_ids, folds, seed)
    per_fold, lexical_q, ranker_q = [], {}, {}
    for i, test in enumerate(parts):
        train = np.concatenate([p for j, p in enumerate(parts) if j != i])
        assert not set(train.tolist()) & set(test.tolist())
        trainer = new_trainer(corpus.spec, cfg)
        train_queries(trainer, corpus, judgments, train, cfg)
        lex = ndcg_of(None, corpus, judgments, test, k, cfg.num_candidates)
        ran = ndcg_of(trainer, corpus, judgments, test, k, cfg.num_candidates)
        lexical_q.update(lex)
        ranker_q.update(ran)
        per_fold.append(
            {
                "fold": i,
                "test_queries": [int(q) for q in test],
                "ndcg_lexical": mean(lex),
                "ndcg_ranker": mean(ran),
                "delta": mean(ran) - mean(lex),
            }
        )
    deltas = np.array([f["delta"] for f in per_fold])
    return {
        "ndcg10_lexical": mean(lexical_q),
        "ndcg10_ranker": mean(ranker_q),
        "folds": per_fold,
        "fold_delta_min": float(deltas.min()),
        "fold_delta_max": float(deltas.max()),
        "fold_delta_std": float(deltas.std(ddof=1)) if len(deltas) > 1 else 0.0,
        "folds_ranker_wins": int((deltas > 0).sum()),
        "queries_ranker_better": int(sum(ranker_q[q] > lexical_q[q] for q in ranker_q)),
        "queries_ranker_worse": int(sum(ranker_q[q] < lexical_q[q] for q in ranker_q)),
    }
