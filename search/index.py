"""The lexical index over the catalogue: Tantivy (a Rust search engine, BM25 with k1 = 1.2, b = 0.75)
held in memory, fed the declared tokenizer's tokens (Tantivy's ``whitespace`` tokenizer splits them
back exactly), refreshed in place when the catalogue changes::

    idx = LexicalIndex(catalogue, spec)             # one document per product: name + class + category
    rows, scores = idx.search(["king", "bed"], n=200)          # catalogue rows, BM25, best first
    rows, scores = idx.search(tokens, 200, classes=["Beds"])   # filters: must match a class / category
    idx.refresh(new_catalogue)                       # added / changed / removed products only
    # RefreshStats(added=3, changed=1, removed=2, products=6484)

Documents carry the product id as a fast field; hits map back to catalogue rows with one
vectorised ``searchsorted``. Filters are Tantivy term queries on a raw ``facet`` field holding the
product's classes and every prefix of its category path.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

import numpy as np
import tantivy

from search.data import Catalogue
from search.spec import SearchSpec


@dataclasses.dataclass(frozen=True)
class RefreshStats:
    added: int
    changed: int
    removed: int
    products: int


def category_prefixes(path: str, separator: str) -> list[str]:
    """Every prefix of a category path: 'A / B / C' -> ['A', 'A / B', 'A / B / C']."""
    parts = [p.strip() for p in path.split(separator) if p.strip()]
    return [separator.join(parts[: i + 1]) for i in range(len(parts))]


def classes_of(text: str, separator: str) -> list[str]:
    return list(dict.fromkeys(c.strip() for c in text.split(separator) if c.strip()))


def product_text(spec: SearchSpec, name: str, cls: str, category: str) -> list[str]:
    """The tokens a product is indexed under: its name, classes and category path, in that order."""
    tok = spec.tokenizer
    return tok.tokens(name) + tok.tokens(cls.replace(spec.class_separator, " ")) + tok.tokens(category)


def _schema() -> tantivy.Schema:
    b = tantivy.SchemaBuilder()
    b.add_integer_field("pid", stored=False, indexed=True, fast=True)
    b.add_text_field("text", stored=False, tokenizer_name="whitespace", index_option="freq")
    b.add_text_field("facet", stored=False, tokenizer_name="raw", index_option="basic")
    return b.build()


class LexicalIndex:
    """BM25 retrieval over a catalogue with Tantivy (see the module docstring). Thread-safe."""

    def __init__(self, catalogue: Catalogue, spec: SearchSpec = SearchSpec(), heap_bytes: int = 50_000_000) -> None:
        self.spec = spec
        self.schema = _schema()
        self.index = tantivy.Index(self.schema)  # in memory
        self._writer = self.index.writer(heap_size=heap_bytes, num_threads=1)
        self._lock = threading.Lock()
        self.catalogue = Catalogue(np.zeros(0, np.int64), (), (), ())
        self._digests: dict[int, str] = {}
        self._order = np.zeros(0, np.int64)
        self._sorted_ids = np.zeros(0, np.int64)
        self.refresh(catalogue)

    def __len__(self) -> int:
        return len(self.catalogue)

    def _document(self, i: int, cat: Catalogue) -> tantivy.Document:
        spec = self.spec
        doc = tantivy.Document()
        doc.add_integer("pid", int(cat.product_id[i]))
        doc.add_text("text", " ".join(product_text(spec, cat.name[i], cat.product_class[i], cat.category[i])))
        for f in classes_of(cat.product_class[i], spec.class_separator) + category_prefixes(
            cat.category[i], spec.category_separator
        ):
            doc.add_text("facet", f)
        return doc

    def refresh(self, catalogue: Catalogue) -> RefreshStats:
        """Bring the index to ``catalogue``: delete removed and changed products, add new and changed ones,
        commit; searches see the old or the new catalogue, never a mix."""
        new = catalogue.row_digests()
        old = self._digests
        removed = [p for p in old if p not in new]
        changed = [p for p in new if p in old and old[p] != new[p]]
        added = [p for p in new if p not in old]
        with self._lock:
            for p in removed + changed:
                self._writer.delete_documents_by_term("pid", p)
            row = {int(p): i for i, p in enumerate(catalogue.product_id.tolist())}
            for p in changed + added:
                self._writer.add_document(self._document(row[p], catalogue))
            self._writer.commit()
            self.index.reload()
            self._searcher = self.index.searcher()
            self.catalogue = catalogue
            self._digests = new
            self._order = np.argsort(catalogue.product_id, kind="stable")
            self._sorted_ids = catalogue.product_id[self._order]
        return RefreshStats(len(added), len(changed), len(removed), len(catalogue))

    def _query(self, tokens: Sequence[str], classes: Sequence[str], categories: Sequence[str]):
        should = [
            (tantivy.Occur.Should, tantivy.Query.term_query(self.schema, "text", t)) for t in dict.fromkeys(tokens)
        ]
        text = tantivy.Query.boolean_query(should)
        filters = []
        if classes:
            filters.append(tantivy.Query.term_set_query(self.schema, "facet", list(classes)))
        if categories:
            filters.append(tantivy.Query.term_set_query(self.schema, "facet", list(categories)))
        if not filters:
            return text
        return tantivy.Query.boolean_query(
            [(tantivy.Occur.Must, text)]
            + [(tantivy.Occur.Must, tantivy.Query.const_score_query(f, 0.0)) for f in filters]
        )

    def view(self) -> "IndexView":
        """An immutable snapshot (searcher and catalogue together): searches on it never see a refresh."""
        with self._lock:
            return IndexView(self, self._searcher, self._order, self._sorted_ids, self.catalogue)

    def search(
        self, tokens: Sequence[str], n: int, classes: Sequence[str] = (), categories: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue rows int64 [m] and BM25 scores float32 [m] of the best ``n`` products matching any token
        (and every filter: one of ``classes``, one of ``categories`` (a category path prefix)), best first."""
        return self.view().search(tokens, n, classes, categories)

    def scores_all(self, tokens: Sequence[str]) -> np.ndarray:
        """BM25 of every catalogue row for ``tokens`` float32 [len(catalogue)] (0 where nothing matches)."""
        out = np.zeros(len(self.catalogue), np.float32)
        rows, scores = self.search(tokens, max(len(self.catalogue), 1))
        out[rows] = scores
        return out


@dataclasses.dataclass(frozen=True)
class IndexView:
    """One committed state of a :class:`LexicalIndex`: its searcher and the catalogue it indexes. Any number
    of threads search a view at once; a refresh makes a new one."""

    index: LexicalIndex
    searcher: object
    order: np.ndarray
    sorted_ids: np.ndarray
    catalogue: Catalogue

    def __len__(self) -> int:
        return len(self.catalogue)

    def search(
        self, tokens: Sequence[str], n: int, classes: Sequence[str] = (), categories: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        if not tokens or n < 1:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        result = self.searcher.search(self.index._query(tokens, classes, categories), limit=int(n), count=False)
        hits = result.hits
        if not hits:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = np.fromiter((h[0] for h in hits), np.float32, len(hits))
        pids = np.asarray(self.searcher.fast_field_values("pid", [h[1] for h in hits]), np.int64)
        return self.order[np.searchsorted(self.sorted_ids, pids)], scores
