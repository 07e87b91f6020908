"""One self-describing binary file per part: a JSON header, then raw little-endian arrays.

Layout (offsets in bytes)::

    0   b"FRPART01"                       magic and format
    8   uint64 LE  header length H
    16  H bytes    JSON header, space-padded so the data starts on a 64-byte boundary
                   {"meta": {...},
                    "arrays": [{"name": "ids",  "dtype": "<i8", "shape": [3],    "offset": 0,  "nbytes": 24},
                               {"name": "rows", "dtype": "<f2", "shape": [3, 4], "offset": 64, "nbytes": 24}]}
    16+H           array bytes, each at ``offset`` from here (64-byte aligned), C order

The writer hashes exactly the bytes it writes (sha256), so the checksum is known without
reading the file back; a reader recomputes it over the whole file.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator, Mapping

import numpy as np

MAGIC = b"FRPART01"
_ALIGN = 64
_KINDS = "biuf"  # bool, signed, unsigned, float


def _le(arr: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"part array {name!r} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype.kind not in _KINDS:
        raise TypeError(f"part array {name!r}: dtype {arr.dtype} is not storable (bool, integers and floats only)")
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr)


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def encode(arrays: Mapping[str, np.ndarray], meta: Mapping | None = None) -> Iterator[memoryview | bytes]:
    """The file as a sequence of byte chunks (no copy of the array data)."""
    arrays = {str(k): _le(v, str(k)) for k, v in arrays.items()}
    entries, offset = [], 0
    for name, arr in arrays.items():
        entries.append(
            {
                "name": name,
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "offset": offset,
                "nbytes": int(arr.nbytes),
            }
        )
        offset += arr.nbytes + _pad(arr.nbytes)
    header = json.dumps({"meta": dict(meta or {}), "arrays": entries}, sort_keys=True).encode()
    header += b" " * _pad(16 + len(header))
    yield MAGIC + struct.pack("<Q", len(header))
    yield header
    for arr in arrays.values():
        if arr.nbytes:
            yield memoryview(arr.reshape(-1)).cast("B")
        if _pad(arr.nbytes):
            yield b"\0" * _pad(arr.nbytes)


def write(fileobj, arrays: Mapping[str, np.ndarray], meta: Mapping | None = None) -> tuple[str, int]:
    """Write a part to an open binary file; returns (sha256 hex, bytes written)."""
    digest, size = hashlib.sha256(), 0
    for chunk in encode(arrays, meta):
        for start in range(0, len(chunk), 64 << 20):  # 64 MiB pieces: bounded buffers on object stores
            piece = chunk[start : start + (64 << 20)]
            digest.update(piece)
            fileobj.write(piece)
            size += len(piece)
    return digest.hexdigest(), size


def decode(buf: bytes | bytearray | memoryview) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, {name: array}) of a whole part file; arrays are views of ``buf``. ValueError when malformed."""
    view = memoryview(buf)
    if len(view) < 16 or bytes(view[:8]) != MAGIC:
        raise ValueError("is not a freshrec part file (bad magic)")
    (hlen,) = struct.unpack("<Q", view[8:16])
    if 16 + hlen > len(view):
        raise ValueError("is truncated inside its header")
    try:
        header = json.loads(bytes(view[16 : 16 + hlen]))
    except ValueError as exc:
        raise ValueError(f"has an unreadable header ({exc})") from None
    base = 16 + hlen
    out = {}
    for e in header["arrays"]:
        start, nbytes = base + int(e["offset"]), int(e["nbytes"])
        if start + nbytes > len(view):
            raise ValueError(f"is truncated inside array {e['name']!r}")
        dtype = np.dtype(e["dtype"])
        if nbytes == 0:
            out[e["name"]] = np.empty(e["shape"], dtype)
            continue
        out[e["name"]] = np.frombuffer(view, dtype=dtype, count=nbytes // dtype.itemsize, offset=start).reshape(
            e["shape"]
        )
    return header.get("meta", {}), out
