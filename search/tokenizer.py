"""The declared tokenizer of search: the same tokens for queries, product text and the lexical index.

``Tokenizer`` lower-cases the text (Unicode ``str.lower``) and keeps maximal runs of Unicode
letters and digits (``[^\\W_]+``): punctuation, spaces and underscores separate tokens; tokens
longer than ``max_token_len`` are dropped (noise, never a word a shopper types)::

    >>> Tokenizer().tokens("King Poster-Bed, 70.87'' W")
    ['king', 'poster', 'bed', '70', '87', 'w']

``hash_tokens`` turns tokens into stable int64 ids (FNV-1a 64 + splitmix64, the training data
layer's :func:`trainer.data.hash_strings`) under a per-feature namespace, so that the token
``bed`` of a query and of a product name are different embedding rows when they feed different
tables, and the same row wherever the same feature sees it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from common.config import ConfigError
from trainer.data.hashing import hash_strings

_WORD = re.compile(r"[^\W_]+")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """Lower-case, then maximal runs of Unicode letters/digits; ``max_token_len`` caps a token."""

    max_token_len: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.max_token_len, int) or self.max_token_len < 1:
            raise ConfigError(f"tokenizer.max_token_len must be a positive integer, got {self.max_token_len!r}")

    def tokens(self, text: str) -> list[str]:
        """The tokens of ``text`` in order (repeats kept)."""
        return [t for t in _WORD.findall(text.lower()) if len(t) <= self.max_token_len]

    def unique(self, text: str) -> list[str]:
        """The distinct tokens of ``text`` in order of first appearance."""
        return list(dict.fromkeys(self.tokens(text)))

    def describe(self) -> dict:
        return {"kind": "lower_unicode_words", "pattern": _WORD.pattern, "max_token_len": self.max_token_len}


def hash_tokens(namespace: str, tokens: Sequence[str]) -> np.ndarray:
    """Stable int64 ids of ``namespace + ':' + token`` for each token (an empty list gives an empty array)."""
    if not tokens:
        return np.zeros(0, np.int64)
    return hash_strings(pa.array([f"{namespace}:{t}" for t in tokens], pa.string()))


def hash_bags(namespace: str, bags: Iterable[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Jagged ids (values, lengths) of several bags of tokens, hashed in one vectorised call."""
    bags = list(bags)
    lengths = np.fromiter((len(b) for b in bags), np.int64, len(bags))
    flat = [t for b in bags for t in b]
    return hash_tokens(namespace, flat), lengths
