"""search: query-aware ranking beside recommendation (docs/search.md).

A declared tokenizer and a search spec (``spec``, ``tokenizer``), the WANDS-layout data reader
(``data``), a Tantivy lexical index refreshed when the catalogue changes (``index``), vectorised
(query, product) features (``features``), lexical retrieval ranked by the training core
(``ranker``), incremental replay of judgments with progressive NDCG@10 and model versions
(``replay``), NDCG and query folds (``metrics``), the Search service, its request validation, its
Ray Serve application and client (``service``, ``validation``, ``app``, ``client``).

Depends on common, trainer, versions and serving; only cluster and bench import it. Names are
imported lazily so that ``import search`` pays for neither torch nor Ray.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SearchSpec": "search.spec",
    "Tokenizer": "search.tokenizer",
    "Catalogue": "search.data",
    "Judgments": "search.data",
    "read_wands": "search.data",
    "read_catalogue": "search.data",
    "LexicalIndex": "search.index",
    "SearchCorpus": "search.ranker",
    "RankerConfig": "search.ranker",
    "cross_validate": "search.ranker",
    "rank": "search.ranker",
    "replay": "search.replay",
    "ndcg_at_k": "search.metrics",
    "SearchService": "search.service",
    "SearchServeConfig": "search.service",
    "SearchLimits": "search.request_checks",
    "SearchClient": "search.client",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (lazy exports, PEP 562)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
