"""Streaming data-file reader: CSV, TSV, JSON Lines and Parquet, in bounded memory.

``read_chunks(path, spec)`` yields :class:`RawChunk` objects: a pyarrow table of the
raw columns (named by the spec's source names), the 1-based row number of each row
in the file, and the rows that could not be parsed at all (wrong column count,
invalid UTF-8, invalid JSON), each with its reason. Nothing raises on garbage input:
a file that cannot be read at all becomes one rejected entry.

Text formats are read in blocks of whole lines (``block_size`` bytes). Each block is
parsed by pyarrow (the fast path); if pyarrow reports any problem for the block (a
bad row, a blank line, bytes that are not UTF-8), the block is parsed again line by
line with the standard library, which is slow but exact about which line is bad.
Records are one per line: newlines inside quoted CSV values are not supported.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from trainer.data.reasons import Reason
from trainer.data.spec import FeatureSpec

DEFAULT_BLOCK_SIZE = 4 << 20
MAX_RAW_CHARS = 2048


@dataclasses.dataclass(frozen=True)
class Reject:
    """A row that could not be parsed into columns."""

    row: int
    reason: Reason
    detail: str
    raw: str


@dataclasses.dataclass
class RawChunk:
    source: str
    table: pa.Table
    rows: np.ndarray  # int64, 1-based row (line) number of each table row
    rejects: list[Reject]
    bytes_read: int  # bytes of the file consumed by this chunk
    raw_text: Callable[[np.ndarray], list[str]]  # raw text of table rows at these indices


def file_format(path: Path, spec: FeatureSpec) -> str:
    if spec.format:
        return spec.format
    suffix = path.suffix.lower()
    by_suffix = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".inter": "tsv", ".jsonl": "jsonl",
                 ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
    if suffix not in by_suffix:
        raise ValueError(f"cannot tell the format of {path} from its suffix; set 'format' in the spec")
    return by_suffix[suffix]


def read_chunks(path: str | Path, spec: FeatureSpec, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[RawChunk]:
    """Yield the raw chunks of one data file (see the module docstring)."""
    path = Path(path)
    fmt = "parquet" if path.suffix.lower() in (".parquet", ".pq") else file_format(path, spec)
    try:
        if fmt == "parquet":
            yield from _read_parquet(path, spec)
        else:
            yield from _read_text(path, spec, fmt, block_size)
    except (OSError, pa.ArrowException) as exc:
        yield RawChunk(str(path), pa.table({}), np.zeros(0, np.int64),
                       [Reject(0, Reason.UNREADABLE_FILE, f"{type(exc).__name__}: {exc}"[:500], "")], 0, lambda i: [])


def _lines_of(path: Path, block_size: int) -> Iterator[bytes]:
    """Blocks of whole lines (the last one may lack its newline)."""
    with open(path, "rb") as fh:
        tail = b""
        while True:
            block = fh.read(block_size)
            if not block:
                if tail:
                    yield tail
                return
            block = tail + block
            cut = block.rfind(b"\n")
            if cut < 0:
                tail = block
                continue
            tail = block[cut + 1 :]
            yield block[: cut + 1]


def _split_lines(block: bytes) -> list[bytes]:
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def _read_text(path: Path, spec: FeatureSpec, fmt: str, block_size: int) -> Iterator[RawChunk]:
    delimiter = spec.delimiter or ("\t" if fmt == "tsv" else ",")
    names: list[str] | None = None if (spec.header and fmt != "jsonl") else [c.source_name for c in spec.columns]
    next_row = 1  # 1-based line number of the first line of the block
    types, typed_ok = None, True
    for block in _lines_of(path, block_size):
        if names is None:  # the header is the first line
            nl = block.find(b"\n")
            header = block[: nl if nl >= 0 else len(block)].rstrip(b"\r").decode("utf-8", "replace")
            names = [h.strip() for h in next(csv.reader([header], delimiter=delimiter))] if header else []
            block = block[nl + 1 :] if nl >= 0 else b""
            next_row += 1
            if not block:
                continue
        n_lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        if fmt == "jsonl":
            chunk = _jsonl_fast(block, n_lines) or _jsonl_slow(block, spec)
        else:
            if types is None:
                types = _arrow_types(spec, names)
            chunk = None
            if typed_ok:  # once a block needs text columns, the rest of the file is read as text
                chunk = _csv_fast(block, names, delimiter, n_lines, types)
                typed_ok = chunk is not None
            chunk = chunk or _csv_fast(block, names, delimiter, n_lines, None) or _csv_slow(block, names, delimiter)
        table, offsets, rejects, raw_lines = chunk
        rows = next_row + offsets
        rejects = [dataclasses.replace(r, row=next_row + r.row) for r in rejects]
        yield RawChunk(str(path), table, rows.astype(np.int64), rejects, len(block), _raw_text_fn(block, offsets, raw_lines))
        next_row += n_lines


def _raw_text_fn(block: bytes, offsets: np.ndarray, raw_lines: list[bytes] | None):
    def raw_text(index: np.ndarray) -> list[str]:
        if raw_lines is not None:
            lines = raw_lines
        else:  # fast path: rows are the block's lines, in order
            lines = _split_lines(block)
        return [lines[int(offsets[i])].decode("utf-8", "replace")[:MAX_RAW_CHARS] for i in index]

    return raw_text


def _arrow_types(spec: FeatureSpec, names: list[str]) -> dict[str, pa.DataType]:
    """Typed columns for pyarrow's CSV conversion: numbers parsed in C, the rest as text."""
    from trainer.data.spec import ColumnType

    typed = {ColumnType.ID: pa.int64(), ColumnType.INT: pa.int64(), ColumnType.FLOAT: pa.float64(),
             ColumnType.TIMESTAMP: pa.float64()}
    by_source = {c.source_name: typed.get(c.type, pa.string()) for c in spec.columns}
    return {n: by_source.get(n, pa.string()) for n in names}


def _csv_fast(block: bytes, names: list[str], delimiter: str, n_lines: int, types: dict[str, pa.DataType] | None):
    """pyarrow parse of a block; None if anything about it needs the exact slow path.

    With ``types`` pyarrow converts numbers itself; if any value does not convert
    (a text id, an ISO time, garbage), the caller retries the block as text.
    """
    if b"\n\n" in block or b"\n\r\n" in block or block.startswith((b"\n", b"\r\n")):
        return None
    column_types = types or {n: pa.string() for n in names}
    try:
        table = pcsv.read_csv(
            io.BytesIO(block),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=False),
            convert_options=pcsv.ConvertOptions(column_types=column_types, check_utf8=True,
                                                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowException, UnicodeDecodeError, ValueError):
        return None
    if table.num_rows != n_lines:
        return None
    return table, np.arange(n_lines, dtype=np.int64), [], None


def _csv_slow(block: bytes, names: list[str], delimiter: str):
    width = len(names)
    cols: list[list[str]] = [[] for _ in range(width)]
    offsets, rejects, kept = [], [], []
    for i, line in enumerate(_split_lines(block)):
        if not line.strip():
            continue  # blank lines are not rows
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejects.append(Reject(i, Reason.INVALID_UTF8, f"byte {exc.start}", line.decode("utf-8", "replace")[:MAX_RAW_CHARS]))
            continue
        try:
            fields = next(csv.reader([text], delimiter=delimiter, strict=True))
        except (csv.Error, StopIteration) as exc:
            rejects.append(Reject(i, Reason.WRONG_COLUMN_COUNT, f"unparsable CSV: {exc}", text[:MAX_RAW_CHARS]))
            continue
        if len(fields) != width:
            rejects.append(Reject(i, Reason.WRONG_COLUMN_COUNT, f"expected {width} fields, got {len(fields)}", text[:MAX_RAW_CHARS]))
            continue
        for c, value in zip(cols, fields):
            c.append(value)
        offsets.append(i)
        kept.append(line)
    table = pa.table({n: pa.array(c, pa.string()) for n, c in zip(names, cols)})
    return table, np.asarray(offsets, np.int64), rejects, None if not offsets else _reindex(kept, offsets)


def _reindex(kept: list[bytes], offsets: list[int]) -> list[bytes]:
    """raw_lines indexed by line offset (sparse: only kept lines are filled)."""
    out = [b""] * (offsets[-1] + 1)
    for o, line in zip(offsets, kept):
        out[o] = line
    return out


def _jsonl_fast(block: bytes, n_lines: int):
    if b"\n\n" in block or b"\n\r\n" in block or block.startswith((b"\n", b"\r\n")):
        return None
    try:
        table = pjson.read_json(io.BytesIO(block), read_options=pjson.ReadOptions(use_threads=False))
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows != n_lines:
        return None
    return table, np.arange(n_lines, dtype=np.int64), [], None


def _jsonl_slow(block: bytes, spec: FeatureSpec):
    names = [c.source_name for c in spec.columns]
    cols: dict[str, list] = {n: [] for n in names}
    offsets, rejects, kept = [], [], []
    for i, line in enumerate(_split_lines(block)):
        if not line.strip():
            continue
        raw = line.decode("utf-8", "replace")[:MAX_RAW_CHARS]
        try:
            obj = json.loads(line)
        except UnicodeDecodeError as exc:
            rejects.append(Reject(i, Reason.INVALID_UTF8, str(exc)[:200], raw))
            continue
        except (ValueError, RecursionError) as exc:
            rejects.append(Reject(i, Reason.INVALID_JSON, str(exc)[:200], raw))
            continue
        if not isinstance(obj, dict):
            rejects.append(Reject(i, Reason.INVALID_JSON, f"expected a JSON object, got {type(obj).__name__}", raw))
            continue
        for n in names:  # as text: the validator parses every type from text
            v = obj.get(n)
            cols[n].append(None if v is None else (v if isinstance(v, str) else json.dumps(v)))
        offsets.append(i)
        kept.append(line)
    table = pa.table({n: pa.array(c, pa.string()) for n, c in cols.items()})
    return table, np.asarray(offsets, np.int64), rejects, None if not offsets else _reindex(kept, offsets)


def _read_parquet(path: Path, spec: FeatureSpec) -> Iterator[RawChunk]:
    pf = pq.ParquetFile(path)
    total_rows = max(pf.metadata.num_rows, 1)
    file_size = path.stat().st_size
    present = set(pf.schema_arrow.names)
    wanted = [c for c in {*(c.source_name for c in spec.columns), *(c.name for c in spec.columns)} if c in present]
    start = 1
    for rb in pf.iter_batches(batch_size=65536, columns=wanted):
        table = pa.Table.from_batches([rb])
        # data files written by freshrec use canonical names; raw parquet may use source names
        rename = {c.name: c.source_name for c in spec.columns if c.name in table.column_names and c.source_name not in table.column_names}
        if rename:
            table = table.rename_columns([rename.get(n, n) for n in table.column_names])
        rows = np.arange(start, start + table.num_rows, dtype=np.int64)
        start += table.num_rows

        def raw_text(index: np.ndarray, t=table) -> list[str]:
            sub = t.take(pa.array(index, pa.int64())).to_pylist()
            return [json.dumps(r, default=str)[:MAX_RAW_CHARS] for r in sub]

        # progress in bytes: the chunk's share of the file by rows
        yield RawChunk(str(path), table, rows, [], file_size * table.num_rows // total_rows, raw_text)
