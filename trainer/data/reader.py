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

Headers are checked per file (``header: true | false | auto``): a file whose first line
does not name the spec's columns although the spec expects a header is refused as a
whole (one ``header mismatch`` entry saying so, no row consumed); with ``auto`` such a
first line is a header when it names the columns and a row otherwise. With
``pad_trailing`` a row with fewer fields than columns (trailing empty fields trimmed,
as many exporters do) is padded with empty fields. ``path`` may be an fsspec URL.
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

from trainer.data import storage
from trainer.data.reasons import Reason
from trainer.data.spec import ColumnType, FeatureSpec, Layout

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


def file_format(path: str | Path, spec: FeatureSpec | Layout) -> str:
    if spec.format:
        return spec.format
    name = storage.base_name(str(path))
    suffix = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
    by_suffix = {
        ".csv": "csv",
        ".tsv": "tsv",
        ".txt": "tsv",
        ".inter": "tsv",
        ".jsonl": "jsonl",
        ".json": "jsonl",
        ".ndjson": "jsonl",
        ".parquet": "parquet",
        ".pq": "parquet",
    }
    if suffix not in by_suffix:
        raise ValueError(f"cannot tell the format of {path} from its suffix; set 'format' in the spec")
    return by_suffix[suffix]


def read_chunks(
    path: str | Path, spec: FeatureSpec | Layout, block_size: int = DEFAULT_BLOCK_SIZE, data: bytes | None = None
) -> Iterator[RawChunk]:
    """Yield the raw chunks of one data file (see the module docstring). With ``data`` (the file's bytes,
    read once by the consumer) those bytes are parsed and ``path`` only names them."""
    layout = spec.layout if isinstance(spec, FeatureSpec) else spec
    path = str(path)
    lower = path.lower()
    try:
        fmt = "parquet" if lower.endswith((".parquet", ".pq")) else file_format(path, layout)
        if fmt == "parquet":
            yield from _read_parquet(path, layout, data)
        else:
            yield from _read_text(path, layout, fmt, block_size, data)
    except (OSError, ValueError, pa.ArrowException) as exc:
        yield file_reject(path, Reason.UNREADABLE_FILE, f"{type(exc).__name__}: {exc}"[:500])


def file_reject(path: str, reason: Reason, detail: str, raw: str = "") -> RawChunk:
    """A chunk that refuses the whole file (unreadable, or a header the spec expects is absent)."""
    return RawChunk(path, pa.table({}), np.zeros(0, np.int64), [Reject(0, reason, detail, raw)], 0, lambda i: [])


def _open(path: str, data: bytes | None):
    return io.BytesIO(data) if data is not None else storage.open_binary(path)


def _lines_of(path: str, block_size: int, data: bytes | None = None) -> Iterator[bytes]:
    """Blocks of whole lines (the last one may lack its newline)."""
    with _open(path, data) as fh:
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


def _header_fields(line: bytes, delimiter: str) -> list[str]:
    text = line.rstrip(b"\r").decode("utf-8", "replace")
    try:
        return [h.strip() for h in next(csv.reader([text], delimiter=delimiter))] if text else []
    except (csv.Error, StopIteration):
        return []


def _names_match(fields: list[str], layout: Layout) -> bool:
    """The line names the spec's columns: every required column, and at least half of its fields are column names."""
    wanted = {c.source_name for c in layout.columns}
    required = {c.source_name for c in layout.columns if c.required}
    got = set(fields)
    return bool(fields) and required <= got and len(got & wanted) >= max(1, len(got) // 2)


def _read_text(path: str, layout: Layout, fmt: str, block_size: int, data: bytes | None = None) -> Iterator[RawChunk]:
    delimiter = layout.delimiter or ("\t" if fmt == "tsv" else ",")
    spec_names = [c.source_name for c in layout.columns]
    names: list[str] | None = spec_names if (layout.header is False or fmt == "jsonl") else None
    next_row = 1  # 1-based line number of the first line of the block
    types, typed_ok = None, True
    first_block = True
    for block in _lines_of(path, block_size, data):
        if first_block and block.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some exporters write
            block = block[3:]
        first_block = False
        if names is None:  # the first line: a header, or (header: auto) maybe a row
            nl = block.find(b"\n")
            first = block[: nl if nl >= 0 else len(block)]
            fields = _header_fields(first, delimiter)
            if _names_match(fields, layout):
                names = fields
                block = block[nl + 1 :] if nl >= 0 else b""
                next_row += 1
            elif layout.header == "auto":
                names = spec_names
            else:
                shown = first.decode("utf-8", "replace")[:200]
                yield file_reject(
                    path,
                    Reason.HEADER_MISMATCH,
                    f"the spec expects a header naming {spec_names}, but the first line is {shown!r}: "
                    "if this file has no header, pass --no-header (or set 'header: auto' in the spec)",
                    shown,
                )
                return
            if not block:
                continue
        n_lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        if fmt == "jsonl":
            chunk = _jsonl_fast(block, n_lines) or _jsonl_slow(block, layout)
        else:
            if layout.pad_trailing:
                block = _pad_trailing(block, delimiter, len(names))
            if types is None:
                types = _arrow_types(layout, names)
            chunk = None
            if typed_ok:  # once a block needs text columns, the rest of the file is read as text
                chunk = _csv_fast(block, names, delimiter, n_lines, types, layout.null_tokens)
                typed_ok = chunk is not None
            chunk = (
                chunk
                or _csv_fast(block, names, delimiter, n_lines, None, layout.null_tokens)
                or _csv_slow(block, names, delimiter, layout.pad_trailing)
            )
        table, offsets, rejects, raw_lines = chunk
        rows = next_row + offsets
        rejects = [dataclasses.replace(r, row=next_row + r.row) for r in rejects]
        yield RawChunk(path, table, rows.astype(np.int64), rejects, len(block), _raw_text_fn(block, offsets, raw_lines))
        next_row += n_lines


def _pad_trailing(block: bytes, delimiter: str, width: int) -> bytes:
    """Append empty fields to lines with fewer than ``width`` fields (vectorised; blocks with
    quotes are left to the exact slow path, which pads too)."""
    if b'"' in block or len(delimiter.encode()) != 1 or width < 2:
        return block
    buf = np.frombuffer(block, np.uint8)
    nl = np.flatnonzero(buf == 10)
    ends = nl if block.endswith(b"\n") else np.append(nl, len(buf))
    ends = ends - ((ends > 0) & (buf[np.maximum(ends - 1, 0)] == 13))  # before a \r
    starts = np.concatenate([[0], nl + 1])[: len(ends)]
    delim_pos = np.flatnonzero(buf == ord(delimiter))
    count = np.searchsorted(delim_pos, ends) - np.searchsorted(delim_pos, starts)
    short = (count < width - 1) & (ends > starts)  # blank lines stay blank
    if not short.any():
        return block
    missing = np.where(short, width - 1 - count, 0)
    return np.insert(buf, np.repeat(ends, missing), ord(delimiter)).tobytes()


def _raw_text_fn(block: bytes, offsets: np.ndarray, raw_lines: list[bytes] | None):
    def raw_text(index: np.ndarray) -> list[str]:
        if raw_lines is not None:
            lines = raw_lines
        else:  # fast path: rows are the block's lines, in order
            lines = _split_lines(block)
        return [lines[int(offsets[i])].decode("utf-8", "replace")[:MAX_RAW_CHARS] for i in index]

    return raw_text


def _arrow_types(layout: Layout, names: list[str]) -> dict[str, pa.DataType]:
    """Typed columns for pyarrow's CSV conversion: numbers parsed in C, the rest as text."""
    typed = {
        ColumnType.ID: pa.int64(),
        ColumnType.INT_ID: pa.int64(),
        ColumnType.INT: pa.int64(),
        ColumnType.FLOAT: pa.float64(),
        ColumnType.TIMESTAMP: pa.float64(),
    }
    by_source = {c.source_name: (pa.string() if c.format else typed.get(c.type, pa.string())) for c in layout.columns}
    return {n: by_source.get(n, pa.string()) for n in names}


def _csv_fast(
    block: bytes,
    names: list[str],
    delimiter: str,
    n_lines: int,
    types: dict[str, pa.DataType] | None,
    null_tokens: tuple[str, ...] = (),
):
    """pyarrow parse of a block; None if anything about it needs the exact slow path.

    With ``types`` pyarrow converts numbers itself (null tokens become nulls); if any value
    does not convert (a text id, an ISO time, garbage), the caller retries the block as text.
    """
    if b"\n\n" in block or b"\n\r\n" in block or block.startswith((b"\n", b"\r\n")):
        return None
    column_types = types or {n: pa.string() for n in names}
    try:
        table = pcsv.read_csv(
            io.BytesIO(block),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=False),
            convert_options=pcsv.ConvertOptions(
                column_types=column_types,
                check_utf8=True,
                null_values=list(null_tokens),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, UnicodeDecodeError, ValueError):
        return None
    if table.num_rows != n_lines:
        return None
    return table, np.arange(n_lines, dtype=np.int64), [], None


def _csv_slow(block: bytes, names: list[str], delimiter: str, pad_trailing: bool = False):
    width = len(names)
    cols: list[list[str]] = [[] for _ in range(width)]
    offsets, rejects, kept = [], [], []
    for i, line in enumerate(_split_lines(block)):
        if not line.strip():
            continue  # blank lines are not rows
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejects.append(
                Reject(i, Reason.INVALID_UTF8, f"byte {exc.start}", line.decode("utf-8", "replace")[:MAX_RAW_CHARS])
            )
            continue
        try:
            fields = next(csv.reader([text], delimiter=delimiter, strict=True))
        except (csv.Error, StopIteration) as exc:
            rejects.append(Reject(i, Reason.WRONG_COLUMN_COUNT, f"unparsable CSV: {exc}", text[:MAX_RAW_CHARS]))
            continue
        if pad_trailing and len(fields) < width:
            fields += [""] * (width - len(fields))
        if len(fields) != width:
            rejects.append(
                Reject(
                    i, Reason.WRONG_COLUMN_COUNT, f"expected {width} fields, got {len(fields)}", text[:MAX_RAW_CHARS]
                )
            )
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
    # only a block whose every line starts with an object: pyarrow 26's JSON reader SEGFAULTS on a first line
    # `null` (and takes a later `null` line as a row); anything else is judged line by line (_jsonl_slow)
    if not block.startswith(b"{") or block.count(b"\n{") != n_lines - 1:
        return None
    try:
        table = pjson.read_json(io.BytesIO(block), read_options=pjson.ReadOptions(use_threads=False))
        table.validate(full=True)  # pyarrow 26's JSON reader can build invalid lists (e.g. [null, null])
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows != n_lines:
        return None
    return table, np.arange(n_lines, dtype=np.int64), [], None


def _is_id_element(x) -> bool:
    """An element of a JSON list of ids: text, an integer (or an integral float), or null."""
    if x is None or isinstance(x, str):
        return True
    if isinstance(x, bool) or isinstance(x, (list, dict)):
        return False
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())


def _json_scalar_text(v) -> str | None:
    return None if v is None else (v if isinstance(v, str) else json.dumps(v))


def _jsonl_slow(block: bytes, layout: Layout):
    names = [c.source_name for c in layout.columns]
    lists = {c.source_name for c in layout.columns if c.type is ColumnType.ID_LIST}
    seps = {c.source_name: c.separator for c in layout.columns}
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
        bad_list = [n for n in lists if isinstance(obj.get(n), list) and not all(map(_is_id_element, obj[n]))]
        if bad_list:
            rejects.append(
                Reject(i, Reason.MALFORMED_ID, f"{bad_list[0]}: an element is not an id (text or integer)", raw)
            )
            continue
        for n in names:  # as text (lists of text): the validator parses every type from text
            v = obj.get(n)
            if n in lists:  # a JSON array, or text split here on the column's separator
                cols[n].append(_list_field(v, seps[n], layout.null_tokens))
            else:
                cols[n].append(_json_scalar_text(v))
        offsets.append(i)
        kept.append(line)
    arrays = {n: pa.array(c, pa.list_(pa.string()) if n in lists else pa.string()) for n, c in cols.items()}
    table = pa.table(arrays)
    return table, np.asarray(offsets, np.int64), rejects, None if not offsets else _reindex(kept, offsets)


def _list_field(v, separator: str | None, null_tokens: tuple[str, ...]) -> list[str | None] | None:
    """An id_list field of a JSON object as a list of texts (None: missing)."""
    if v is None:
        return None
    if isinstance(v, list):
        return [str(int(x)) if isinstance(x, float) else _json_scalar_text(x) for x in v]
    if isinstance(v, str):
        if v.strip() in null_tokens:
            return None
        return v.split(separator) if separator else [v]
    return [_json_scalar_text(v)]


def _read_parquet(path: str, layout: Layout, data: bytes | None = None) -> Iterator[RawChunk]:
    with _open(path, data) as fh:
        pf = pq.ParquetFile(fh)
        total_rows = max(pf.metadata.num_rows, 1)
        file_size = len(data) if data is not None else storage.stat(path).size
        names = {*(c.source_name for c in layout.columns), *(c.name for c in layout.columns), *layout.also}
        wanted = [c for c in pf.schema_arrow.names if c in names]
        start = 1
        for rb in pf.iter_batches(batch_size=65536, columns=wanted):
            table = pa.Table.from_batches([rb])
            # data files written by freshrec use canonical names; raw parquet may use source names
            rename = {
                c.name: c.source_name
                for c in layout.columns
                if c.name in table.column_names and c.source_name not in table.column_names
            }
            if rename:
                table = table.rename_columns([rename.get(n, n) for n in table.column_names])
            rows = np.arange(start, start + table.num_rows, dtype=np.int64)
            start += table.num_rows

            def raw_text(index: np.ndarray, t=table) -> list[str]:
                sub = t.take(pa.array(index, pa.int64()))
                cols = {name: _printable(sub.column(name)) for name in sub.column_names}
                rows = [dict(zip(cols, values)) for values in zip(*cols.values())] if cols else [{} for _ in index]
                return [json.dumps(r, default=str)[:MAX_RAW_CHARS] for r in rows]

            # progress in bytes: the chunk's share of the file by rows
            yield RawChunk(path, table, rows, [], file_size * table.num_rows // total_rows, raw_text)


def _printable(col: pa.ChunkedArray) -> list:
    """A column's values for the dead letter, even where Python cannot hold them (a year 10000)."""
    try:
        return col.to_pylist()
    except (ValueError, OverflowError, pa.ArrowException):
        try:
            return col.cast(pa.string()).to_pylist()
        except (ValueError, OverflowError, pa.ArrowException):
            return [f"<{col.type} value>"] * len(col)
