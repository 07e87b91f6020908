"""(query, product) pairs as the training core's :class:`trainer.data.EventBatch`, vectorised.

``ProductFeatures`` precomputes, once per catalogue, each product's hashed ids per field (jagged:
values row after row, lengths per row). ``pair_batch`` gathers the candidates' rows with
:func:`trainer.data.columns.jagged_take` and computes the cross features with ``np.isin`` and
segment sums: no Python loop over products (see :mod:`search.spec` for the feature list).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from search.data import Catalogue
from search.index import category_prefixes, classes_of
from search.spec import DENSE, SearchSpec
from search.tokenizer import hash_bags, hash_tokens
from trainer.data import EventBatch
from trainer.data.columns import jagged_take
from trainer.data.hashing import combine


@dataclasses.dataclass(frozen=True)
class Jagged:
    values: np.ndarray
    lengths: np.ndarray

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return jagged_take(self.values, self.lengths, rows)


def _bags(namespace: str, bags: list[list[str]]) -> Jagged:
    v, ln = hash_bags(namespace, bags)
    return Jagged(v, ln)


@dataclasses.dataclass(frozen=True)
class ProductFeatures:
    """Per catalogue row: embedding ids of name tokens, classes and category prefixes; raw token hashes
    (namespace ``tok``) of the name, class and category text for matching a query's tokens."""

    name_ids: Jagged
    class_ids: Jagged
    category_ids: Jagged
    name_tok: Jagged
    class_tok: Jagged
    category_tok: Jagged
    any_tok: Jagged

    @staticmethod
    def build(catalogue: Catalogue, spec: SearchSpec) -> "ProductFeatures":
        tok = spec.tokenizer
        names = [tok.unique(n) for n in catalogue.name]
        classes = [classes_of(c, spec.class_separator) for c in catalogue.product_class]
        class_words = [tok.unique(c.replace(spec.class_separator, " ")) for c in catalogue.product_class]
        cats = [category_prefixes(c, spec.category_separator) for c in catalogue.category]
        cat_words = [tok.unique(c) for c in catalogue.category]
        anyw = [list(dict.fromkeys(a + b + c)) for a, b, c in zip(names, class_words, cat_words)]
        return ProductFeatures(
            _bags("name", names),
            _bags("class", classes),
            _bags("cat", cats),
            _bags("tok", names),
            _bags("tok", class_words),
            _bags("tok", cat_words),
            _bags("tok", anyw),
        )


def _segment_sum(mask: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per row, how many of its (flat, row after row) entries are True."""
    seg = np.repeat(np.arange(len(lengths)), lengths)
    return np.bincount(seg, weights=mask, minlength=len(lengths)).astype(np.float32)


_QUERY, _QX, _MATCH = np.int64(0x7175657279), np.int64(0x7178), np.int64(0x6D61746368)  # "query", "qx", "match"


def _keyed(ids: np.ndarray, key: np.int64) -> np.ndarray:
    """Ids of another namespace derived from token hashes (``combine`` with a constant): no re-hashing of text."""
    return combine([ids, np.full(len(ids), key, np.int64)]) if len(ids) else np.zeros(0, np.int64)


def pair_batch(
    spec: SearchSpec,
    products: ProductFeatures,
    query_tokens: Sequence[str],
    rows: np.ndarray,
    bm25: np.ndarray,
    bm25_rank: np.ndarray,
    relevance: np.ndarray | None = None,
    source: str = "search",
    features: Sequence[str] | None = None,
) -> EventBatch:
    """The EventBatch of one query against catalogue ``rows`` (int64 [n]).

    ``bm25`` [n]: the lexical score of each row; ``bm25_rank`` [n]: its 0-based rank in the query's
    BM25 order; ``relevance`` [n] in [0, 1] (gain / max gain; zeros when scoring). ``features``: the
    sparse features to build (default: those the spec's model reads); the dense ones are always built.
    """
    rows = np.asarray(rows, np.int64)
    want = set(spec.sparse_features if features is None else features)
    n = len(rows)
    q = list(dict.fromkeys(query_tokens))
    q_raw = hash_tokens("tok", q)  # the one text hash of a request
    sparse, lengths = {}, {}
    if "query_tokens" in want:
        sparse["query_tokens"] = np.tile(_keyed(q_raw, _QUERY), n)
        lengths["query_tokens"] = np.full(n, len(q), np.int64)
    if "name_tokens" in want:
        sparse["name_tokens"], lengths["name_tokens"] = products.name_ids.take(rows)
    if "category" in want:
        sparse["category"], lengths["category"] = products.category_ids.take(rows)
    cls_v, cls_l = products.class_ids.take(rows)
    if "product_class" in want:
        sparse["product_class"], lengths["product_class"] = cls_v, cls_l
    if "query_x_class" in want:  # every (query token, class) pair of a row
        cls_rep = np.repeat(cls_v, len(q))
        tok_rep = np.tile(_keyed(q_raw, _QX), len(cls_v))
        sparse["query_x_class"] = combine([tok_rep, cls_rep]) if len(cls_rep) else np.zeros(0, np.int64)
        lengths["query_x_class"] = (cls_l * len(q)).astype(np.int64)
    dense = np.zeros((n, len(DENSE)), np.float32)
    col = {name: i for i, name in enumerate(DENSE)}
    qn = max(len(q), 1)
    field_hits = []
    for f, (field, key) in enumerate(
        (
            (products.name_tok, "match_name"),
            (products.class_tok, "match_class"),
            (products.category_tok, "match_category"),
        )
    ):
        v, ln = field.take(rows)
        hit_f = np.isin(v, q_raw)
        dense[:, col[key]] = _segment_sum(hit_f, ln) / qn
        if "matched_fields" in want:
            field_hits.append((_keyed(v[hit_f], np.int64(0x6669656C64 + f)), np.repeat(np.arange(n), ln)[hit_f]))
    if "matched_fields" in want:  # (query token, field it matched in) pairs of each row, rows in order
        ids = np.concatenate([h[0] for h in field_hits])
        row_of = np.concatenate([h[1] for h in field_hits])
        order = np.argsort(row_of, kind="stable")
        sparse["matched_fields"] = ids[order]
        lengths["matched_fields"] = np.bincount(row_of, minlength=n).astype(np.int64)
    v, ln = products.any_tok.take(rows)
    hit = np.isin(v, q_raw)
    dense[:, col["match_any"]] = _segment_sum(hit, ln) / qn
    if "matched_tokens" in want:  # the query's tokens found anywhere in the product
        sparse["matched_tokens"] = _keyed(v[hit], _MATCH)
        lengths["matched_tokens"] = _segment_sum(hit, ln).astype(np.int64)
    best = float(bm25.max()) if n else 0.0
    dense[:, col["bm25"]] = bm25
    dense[:, col["bm25_rel"]] = bm25 / best if best > 0 else 0.0
    dense[:, col["bm25_rank"]] = np.log1p(bm25_rank)
    dense[:, col["query_len"]] = len(q)
    dense[:, col["name_len"]] = products.name_ids.lengths[rows]
    label = np.zeros(n, np.float32) if relevance is None else np.asarray(relevance, np.float32)
    return EventBatch(
        source=source,
        event_id=np.arange(n, dtype=np.int64),
        ts=np.zeros(n, np.int64),
        label=label,
        sparse=sparse,
        dense=dense,
        rows=np.arange(1, n + 1, dtype=np.int64),
        table=pa.table({"row": pa.array(rows)}),
        lengths=lengths,
    )
