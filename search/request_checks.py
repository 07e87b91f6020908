"""Checks of a Search request: every problem is an INVALID_ARGUMENT naming the field (nothing is
changed or half-done before a request is accepted).

    >>> validate(pb.SearchRequest(query="king poster bed", k=10), SearchLimits(), Tokenizer()).tokens
    ['king', 'poster', 'bed']
"""

from __future__ import annotations

import dataclasses

from common.config import ConfigError
from search.tokenizer import Tokenizer
from serving.errors import InvalidRequestError


@dataclasses.dataclass(frozen=True)
class SearchLimits:
    """What a Search request may ask for."""

    max_query_chars: int = 512
    max_k: int = 100
    max_candidates: int = 1000
    default_candidates: int = 200
    max_filter_values: int = 32
    max_filter_chars: int = 256

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"search limits: {f.name} must be a positive integer, got {v!r}")
        if self.max_k > self.max_candidates or self.default_candidates > self.max_candidates:
            raise ConfigError("search limits: max_k and default_candidates must be <= max_candidates")


@dataclasses.dataclass(frozen=True)
class ValidSearch:
    tokens: list[str]
    k: int
    num_candidates: int
    classes: tuple[str, ...]
    categories: tuple[str, ...]
    pin_version: int | None


def _printable(text: str) -> bool:
    return not any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in text)


def _filter(values, field: str, limits: SearchLimits) -> tuple[str, ...]:
    values = list(values)
    if len(values) > limits.max_filter_values:
        raise InvalidRequestError(f"filters.{field}: at most {limits.max_filter_values} values, got {len(values)}")
    for i, v in enumerate(values):
        if not v.strip():
            raise InvalidRequestError(f"filters.{field}[{i}]: empty value")
        if len(v) > limits.max_filter_chars:
            raise InvalidRequestError(f"filters.{field}[{i}]: longer than {limits.max_filter_chars} characters")
        if not _printable(v):
            raise InvalidRequestError(f"filters.{field}[{i}]: control characters")
    return tuple(v.strip() for v in values)


def validate(request, limits: SearchLimits, tokenizer: Tokenizer) -> ValidSearch:
    """A ``freshrec.v1.SearchRequest`` checked against ``limits`` (InvalidRequestError otherwise)."""
    q = request.query
    if len(q) > limits.max_query_chars:
        raise InvalidRequestError(f"query: longer than {limits.max_query_chars} characters ({len(q)})")
    if not q.strip():
        raise InvalidRequestError("query: empty")
    if not _printable(q):
        raise InvalidRequestError("query: control characters")
    tokens = tokenizer.tokens(q)
    if not tokens:
        raise InvalidRequestError(f"query: no word tokens in {q[:40]!r} (letters or digits are needed)")
    if not 1 <= request.k <= limits.max_k:
        raise InvalidRequestError(f"k must be in [1, {limits.max_k}], got {request.k}")
    if not 0 <= request.num_candidates <= limits.max_candidates:
        raise InvalidRequestError(
            f"num_candidates must be in [0, {limits.max_candidates}] (0: the server's "
            f"{limits.default_candidates}), got {request.num_candidates}"
        )
    n = max(request.num_candidates or limits.default_candidates, request.k)
    classes = _filter(request.filters.product_class, "product_class", limits)
    categories = _filter(request.filters.category, "category", limits)
    return ValidSearch(tokens, int(request.k), int(n), classes, categories, int(request.pin_version) or None)
