"""Reading search data: the product catalogue, the queries and their graded judgments (WANDS layout).

Files are TAB-separated with a header and no quoting (product names hold ``''`` for inches)::

    products   product_id  product_name  product_class  category_hierarchy
    queries    query_id    query         query_class
    labels     query_id    product_id    label          (Exact / Partial / Irrelevant)

A (query, product) pair judged more than once keeps its highest gain (WANDS repeats a few).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from search.spec import SearchSpec

WANDS_FILES = {"products": "eval40_products.tsv", "queries": "eval40_queries.tsv", "labels": "eval40_labels.tsv"}


class SearchDataError(ValueError):
    """A search data file is missing a column or holds a value the spec cannot read."""


def _read_tsv(path: Path, needed: tuple[str, ...], types: dict[str, pa.DataType]) -> pa.Table:
    if not Path(path).exists():
        raise SearchDataError(f"{path}: no such file")
    opts = pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False)
    conv = pacsv.ConvertOptions(column_types=types, strings_can_be_null=False)
    try:
        table = pacsv.read_csv(str(path), parse_options=opts, convert_options=conv)
    except pa.ArrowInvalid as exc:
        raise SearchDataError(f"{path}: {exc}") from exc
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise SearchDataError(f"{path}: missing column(s) {missing}; it has {table.column_names}")
    return table


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Products as columns: ids int64 [n] (unique) and their text fields."""

    product_id: np.ndarray
    name: tuple[str, ...]
    product_class: tuple[str, ...]
    category: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.product_id)
        if not (len(self.name) == len(self.product_class) == len(self.category) == n):
            raise SearchDataError("catalogue columns differ in length")
        if len(np.unique(self.product_id)) != n:
            raise SearchDataError("catalogue: product ids must be unique")

    def __len__(self) -> int:
        return len(self.product_id)

    def digest(self) -> str:
        """sha256 over every product's fields (what a refresh compares)."""
        h = hashlib.sha256()
        for row in zip(self.product_id.tolist(), self.name, self.product_class, self.category):
            h.update(repr(row).encode())
        return h.hexdigest()

    def row_digests(self) -> dict[int, str]:
        return {
            int(p): hashlib.sha1(repr((n, c, k)).encode()).hexdigest()
            for p, n, c, k in zip(self.product_id, self.name, self.product_class, self.category)
        }


def read_catalogue(path: str | Path, spec: SearchSpec = SearchSpec()) -> Catalogue:
    cols = (spec.product_id_column, spec.name_column, spec.class_column, spec.category_column)
    t = _read_tsv(
        Path(path),
        cols,
        {
            spec.product_id_column: pa.int64(),
            spec.name_column: pa.string(),
            spec.class_column: pa.string(),
            spec.category_column: pa.string(),
        },
    )
    ids = t.column(spec.product_id_column).to_numpy()
    _, first = np.unique(ids, return_index=True)
    if len(first) != len(ids):
        raise SearchDataError(f"{path}: {len(ids) - len(first)} repeated product id(s)")
    return Catalogue(
        ids.astype(np.int64),
        tuple(t.column(cols[1]).to_pylist()),
        tuple(t.column(cols[2]).to_pylist()),
        tuple(t.column(cols[3]).to_pylist()),
    )


@dataclasses.dataclass(frozen=True)
class Judgments:
    """Graded judgments: query ids, product ids and gains [n], one row per distinct pair; query texts."""

    query_id: np.ndarray
    product_id: np.ndarray
    gain: np.ndarray
    queries: dict[int, str]

    def __len__(self) -> int:
        return len(self.query_id)

    @property
    def query_ids(self) -> np.ndarray:
        """The judged queries, ascending."""
        return np.unique(self.query_id)

    def of(self, query_ids) -> "Judgments":
        keep = np.isin(self.query_id, np.asarray(query_ids, np.int64))
        return Judgments(
            self.query_id[keep],
            self.product_id[keep],
            self.gain[keep],
            {q: self.queries[q] for q in np.unique(self.query_id[keep]).tolist()},
        )


def read_judgments(queries_path: str | Path, labels_path: str | Path, spec: SearchSpec = SearchSpec()) -> Judgments:
    q = _read_tsv(
        Path(queries_path),
        (spec.query_id_column, spec.query_column),
        {spec.query_id_column: pa.int64(), spec.query_column: pa.string()},
    )
    queries = dict(zip(q.column(spec.query_id_column).to_pylist(), q.column(spec.query_column).to_pylist()))
    lab = _read_tsv(
        Path(labels_path),
        (spec.query_id_column, spec.product_id_column, spec.label_column),
        {spec.query_id_column: pa.int64(), spec.product_id_column: pa.int64(), spec.label_column: pa.string()},
    )
    qid = lab.column(spec.query_id_column).to_numpy().astype(np.int64)
    pid = lab.column(spec.product_id_column).to_numpy().astype(np.int64)
    names = lab.column(spec.label_column).to_pylist()
    table = dict(spec.gains)
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise SearchDataError(f"{labels_path}: unknown label(s) {unknown[:5]}; the spec's are {list(table)}")
    gain = np.array([table[n] for n in names], np.float32)
    missing = sorted(set(np.unique(qid).tolist()) - set(queries))
    if missing:
        raise SearchDataError(f"{labels_path}: judgments for query id(s) {missing[:5]} that {queries_path} lacks")
    # one row per (query, product): the highest gain of repeated judgments
    order = np.lexsort((-gain, pid, qid))
    qid, pid, gain = qid[order], pid[order], gain[order]
    first = np.ones(len(qid), bool)
    first[1:] = (qid[1:] != qid[:-1]) | (pid[1:] != pid[:-1])
    return Judgments(qid[first], pid[first], gain[first], queries)


def read_wands(directory: str | Path, spec: SearchSpec = SearchSpec()) -> tuple[Catalogue, Judgments]:
    """The catalogue and judgments of a WANDS-layout directory (``eval40_*.tsv``)."""
    d = Path(directory)
    return (
        read_catalogue(d / WANDS_FILES["products"], spec),
        read_judgments(d / WANDS_FILES["queries"], d / WANDS_FILES["labels"], spec),
    )
