"""``model_digest``: sha256 over the canonical content of a whole model.

The digest is independent of how rows are split across shards or part files: every table's
rows are sorted by id before hashing. The byte stream hashed is::

    b"freshrec-model-digest/1\\n"
    for each table, by name:       record("table", name) then, for each field (by name) of the
                                   table sorted by id: record(field, dtype, shape) + bytes
    for each dense tensor, by name: record("dense", name, dtype, shape) + bytes
    for each other array, by name:  record("array", name, dtype, shape) + bytes

where ``record(...)`` is the JSON list of its arguments plus a newline, dtypes are little-endian
numpy strings (``"<f2"``) and bytes are C order, little-endian.

Table fields hashed: every array of the table except ``deleted`` and ``last_version``:
``ids``, ``rows`` (in the stored dtype: fp16 rows hash as fp16), the optimizer state
(``opt_state_*``), ``count`` and ``last_seen`` (they drive future LFU/TTL eviction, so two
models that differ there would train differently). ``last_version`` is left out: it counts
updates of one shard, so it depends on the number of shards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

DIGEST_EXCLUDED_FIELDS = ("deleted", "last_version")
_MAGIC = b"freshrec-model-digest/1\n"


def _record(*items) -> bytes:
    return json.dumps(list(items), separators=(",", ":")).encode() + b"\n"


def _bytes(arr: np.ndarray) -> memoryview:
    arr = np.asarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr)
    return memoryview(arr.reshape(-1)).cast("B") if arr.nbytes else memoryview(b"")


def _le_str(arr: np.ndarray) -> str:
    return np.asarray(arr).dtype.newbyteorder("<").str  # "<f2", "<i8"; "|b1" for bools


def canonical_table(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The fields of a table that the digest covers, rows sorted by id (a no-op when already sorted)."""
    ids = np.asarray(arrays["ids"], np.int64)
    fields = {k: np.asarray(v) for k, v in arrays.items() if k not in DIGEST_EXCLUDED_FIELDS}
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        order = np.argsort(ids, kind="stable")
        if (ids[order][1:] == ids[order][:-1]).any():
            raise ValueError("a table holds the same id twice: rows of one id must live in one place")
        fields = {k: v[order] for k, v in fields.items()}
    return fields


class ModelDigest:
    """Incremental form of :func:`model_digest`: feed tables, then dense tensors, then other
    arrays, each in name order (one table at a time, so a whole model never needs to be in memory).

        d = ModelDigest()
        d.table("item", {"ids": np.array([2, 1]), "rows": np.zeros((2, 4), np.float16)})
        d.dense("mlp.0.weight", w0)
        d.hexdigest()  ->  "3b1f..." (64 hex digits)
    """

    _SECTIONS = ("table", "dense", "array")

    def __init__(self) -> None:
        self._h = hashlib.sha256(_MAGIC)
        self._last: tuple[int, str] | None = None

    def _order(self, section: str, name: str) -> None:
        key = (self._SECTIONS.index(section), name)
        if self._last is not None and key <= self._last:
            raise ValueError(
                f"ModelDigest: {section} {name!r} comes after {self._SECTIONS[self._last[0]]} "
                f"{self._last[1]!r}; feed tables, then dense, then arrays, each in name order, once"
            )
        self._last = key

    def table(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        self._order("table", name)
        fields = canonical_table(arrays)
        self._h.update(_record("table", name))
        for field in sorted(fields):
            arr = fields[field]
            self._h.update(_record(field, _le_str(arr), list(arr.shape)))
            self._h.update(_bytes(arr))

    def _array(self, section: str, name: str, arr: np.ndarray) -> None:
        self._order(section, name)
        arr = np.asarray(arr)
        self._h.update(_record(section, name, _le_str(arr), list(arr.shape)))
        self._h.update(_bytes(arr))

    def dense(self, name: str, arr: np.ndarray) -> None:
        self._array("dense", name, arr)

    def array(self, name: str, arr: np.ndarray) -> None:
        self._array("array", name, arr)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def model_digest(
    tables: Mapping[str, Mapping[str, np.ndarray]],
    dense: Mapping[str, np.ndarray] | None = None,
    extra_arrays: Mapping[str, np.ndarray] | None = None,
) -> str:
    """sha256 hex of the canonical content (module docstring) of ``tables`` ({table: {"ids": int64 [n],
    "rows": [n, dim], "opt_state_0": ..., "count": ..., "last_seen": ...}}), ``dense`` ({name: array},
    e.g. a torch state_dict as numpy) and ``extra_arrays`` (feature statistics, ...).

    Tables may be given unsorted (or as the concatenation of several shards' parts): the
    rows are sorted by id first, so the split does not change the digest.
    """
    d = ModelDigest()
    for name in sorted(tables):
        d.table(name, tables[name])
    for name in sorted(dense or {}):
        d.dense(name, dense[name])
    for name in sorted(extra_arrays or {}):
        d.array(name, extra_arrays[name])
    return d.hexdigest()
