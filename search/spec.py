"""The search spec: which columns hold the query, the product, the graded label and the product text,
how text is tokenised, and the features the ranker sees (a :class:`trainer.data.FeatureSpec`, so the
training core, the parameter-server tables and the version store take it as they take any spec).

Features of one (query, product) pair::

    sparse (jagged id lists, hashed tokens; one embedding table each, sum-pooled)
      query_tokens      the query's distinct tokens                    ["king", "poster", "bed"]
      name_tokens       the product name's distinct tokens             ["king", "tufted", "bed", ...]
      product_class     the product's classes (split on "|")           ["Beds"]
      category          every prefix of the category path              ["Furniture", "Furniture / Bedroom ...", ...]
      query_x_class     cross: (query token, product class) pairs     ["king|Beds", "poster|Beds", "bed|Beds"]
      matched_tokens    cross: query tokens found in the product text  ["king", "bed"]
      matched_fields    cross: (query token, field it matched in)      ["king@name", "bed@name"]
    dense (normalised with the core's running statistics)
      bm25, bm25_rel, bm25_rank     the lexical index's score, score / the query's best, log1p(rank)
      match_name, match_class, match_category, match_any   share of query tokens found in each field
      query_len, name_len           token counts

Every feature is computed for every pair; ``SearchSpec.sparse_features`` picks the embedding tables the
model reads (default: the two cross features, see docs/search.md for why).

The label is the graded gain (Exact 2, Partial 1, Irrelevant 0, unjudged 0) divided by the largest
gain: a soft target in [0, 1] for the core's binary cross-entropy.
"""

from __future__ import annotations

import dataclasses

from common.config import ConfigError
from search.tokenizer import Tokenizer
from trainer.data.spec import ColumnSpec, ColumnType, DenseFeature, FeatureSpec, LabelRule, Pooling, SparseFeature

SPARSE = (
    "query_tokens",
    "name_tokens",
    "product_class",
    "category",
    "query_x_class",
    "matched_tokens",
    "matched_fields",
)
# what the ranker's model reads by default: the cross features. Query-only and product-only token embeddings
# memorise the training queries and lower held-out NDCG@10 (docs/search.md, "Which features").
DEFAULT_SPARSE = ("query_x_class", "matched_tokens")
DENSE = (
    "bm25",
    "bm25_rel",
    "bm25_rank",
    "match_name",
    "match_class",
    "match_category",
    "match_any",
    "query_len",
    "name_len",
)


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """Columns of the judgment and catalogue files, the graded gains and the tokenizer (WANDS by default).

    >>> SearchSpec().gain_of("Partial")
    1.0
    """

    name: str = "wands"
    query_id_column: str = "query_id"
    query_column: str = "query"
    product_id_column: str = "product_id"
    label_column: str = "label"
    gains: tuple[tuple[str, float], ...] = (("Exact", 2.0), ("Partial", 1.0), ("Irrelevant", 0.0))
    name_column: str = "product_name"
    class_column: str = "product_class"
    category_column: str = "category_hierarchy"
    class_separator: str = "|"
    category_separator: str = " / "
    tokenizer: Tokenizer = Tokenizer()
    dim: int = 8
    max_query_chars: int = 512
    sparse_features: tuple[str, ...] = DEFAULT_SPARSE

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparse_features", tuple(self.sparse_features))
        unknown = sorted(set(self.sparse_features) - set(SPARSE))
        if unknown or not self.sparse_features:
            raise ConfigError(
                f"search spec {self.name}: sparse_features must be a non-empty subset of {list(SPARSE)}, "
                f"got {list(self.sparse_features)}"
            )
        object.__setattr__(self, "gains", tuple((str(k), float(v)) for k, v in self.gains))
        if not self.gains or len({k for k, _ in self.gains}) != len(self.gains):
            raise ConfigError(f"search spec {self.name}: gains must name each label once, got {self.gains}")
        if any(v < 0 for _, v in self.gains) or self.max_gain <= 0:
            raise ConfigError(f"search spec {self.name}: gains must be >= 0 with a positive largest, got {self.gains}")
        if self.dim < 4 or self.dim % 4:
            raise ConfigError(f"search spec {self.name}: dim must be a positive multiple of 4 (FBGEMM), got {self.dim}")
        if self.max_query_chars < 1:
            raise ConfigError(f"search spec {self.name}: max_query_chars must be >= 1")

    @property
    def max_gain(self) -> float:
        return max(v for _, v in self.gains)

    def gain_of(self, label: str) -> float:
        for k, v in self.gains:
            if k == label:
                return v
        raise ValueError(f"unknown label {label!r}: the spec's labels are {[k for k, _ in self.gains]}")

    def feature_spec(self) -> FeatureSpec:
        """The training core's view: one id_list column per sparse feature, one float per dense feature."""
        cols = [ColumnSpec(n, ColumnType.ID_LIST) for n in self.sparse_features]
        cols += [ColumnSpec(n, ColumnType.FLOAT) for n in DENSE]
        cols.append(ColumnSpec("relevance", ColumnType.FLOAT, min=0.0, max=1.0))
        return FeatureSpec(
            name=f"search_{self.name}",
            columns=tuple(cols),
            label=LabelRule(column="relevance", threshold=0.5),
            sparse=tuple(SparseFeature(n, n, dim=self.dim, pooling=Pooling.SUM) for n in self.sparse_features),
            dense=tuple(DenseFeature(n, n) for n in DENSE),
            time="row_order",
            event_id_row=True,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["gains"] = [list(g) for g in self.gains]
        d["sparse_features"] = list(self.sparse_features)
        return d

    @staticmethod
    def from_dict(raw: dict) -> "SearchSpec":
        raw = dict(raw)
        raw["tokenizer"] = Tokenizer(**raw.get("tokenizer", {}))
        raw["gains"] = tuple(tuple(g) for g in raw.get("gains", SearchSpec.gains))
        raw["sparse_features"] = tuple(raw.get("sparse_features", DEFAULT_SPARSE))
        try:
            return SearchSpec(**raw)
        except TypeError as exc:
            raise ConfigError(f"search spec: {exc}") from exc
