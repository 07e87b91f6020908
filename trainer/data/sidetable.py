"""Side tables: columns of a catalogue joined onto each event by id, vectorised.

    side_tables:
      - name: items
        path: ml-100k.item          # beside the input data file, else beside the spec file
        format: tsv
        header: true
        key: item_id                # the side table's id column
        on: item_id                 # the event column it matches
        columns:
          - {name: item_id, source: "item_id:token", type: id}
          - {name: genre, source: "class:token_seq", type: id_list, separator: " ", required: false}

An event whose key is absent from the side table gets each joined column's missing value
(``fill``, or the empty list for an id_list). The join is ``np.searchsorted`` over the
sorted keys; a repeated key keeps its first row. Side-table rows that do not parse are
dead-lettered with their reasons and left out; the first event file's report warns about
them and about repeated keys (a table with no good row is an error).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.config import ConfigError
from trainer.data import storage
from trainer.data.parse import REASON_CODES, Jagged, Rejections, fill_value, parse_columns, take_value
from trainer.data.reader import read_chunks
from trainer.data.spec import ColumnType, SideTable


class SideTableError(ConfigError):
    """A side table cannot be found or read; the message says where it was looked for."""


@dataclasses.dataclass(frozen=True)
class LoadedSideTable:
    spec: SideTable
    path: str
    keys: np.ndarray  # int64, sorted, unique
    values: dict  # joined column name -> parsed values in key order
    rows_dead: int  # rows that did not parse (dead-lettered), left out
    keys_repeated: int = 0  # rows whose key an earlier row already had, left out

    @property
    def warning(self) -> str | None:
        if not (self.rows_dead or self.keys_repeated):
            return None
        return (
            f"side table {self.spec.name} ({self.path}): {self.rows_dead} rows did not parse (dead-lettered), "
            f"{self.keys_repeated} repeated keys (first row kept); {len(self.keys)} keys loaded"
        )

    def join(self, on: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
        """(joined values, missing mask) for event keys ``on``."""
        on = np.asarray(on, np.int64)
        pos = np.searchsorted(self.keys, on)
        pos_c = np.minimum(pos, max(len(self.keys) - 1, 0))
        found = (pos < len(self.keys)) & (self.keys[pos_c] == on) if len(self.keys) else np.zeros(len(on), bool)
        idx = np.where(found, pos_c, 0)
        out, miss = {}, {}
        for col in self.spec.joined:
            v = self.values[col.name]
            if isinstance(v, Jagged):
                got = v.take(idx) if len(self.keys) else Jagged(np.zeros(0, np.int64), np.zeros(len(on), np.int64))
                lengths = np.where(found, got.lengths, 0)
                out[col.name] = Jagged(got.values[np.repeat(found, got.lengths)], lengths)
            else:
                fill = fill_value(col)
                if len(self.keys):
                    got = take_value(v, idx)
                else:
                    got = np.zeros(len(on), np.int64)
                if col.type is ColumnType.STRING:
                    got = pc.if_else(
                        pa.array(found),
                        got if len(self.keys) else pa.nulls(len(on), pa.string()),
                        pa.scalar(fill, pa.string()),
                    )
                else:
                    got = np.where(found, got, np.asarray(fill, np.asarray(got).dtype))
                out[col.name] = got
            miss[col.name] = ~found
        return out, miss


def resolve_path(table: SideTable, input_file: str | None, spec_dir: str | None, override: str | None = None) -> str:
    """Where the side table is: an override, an absolute path or URL, or a relative path looked
    up beside the input data file first, then beside the spec file."""
    if override:
        return override
    if storage.is_url(table.path) or Path(table.path).is_absolute():
        return table.path
    tried = []
    for base in (storage.parent_of(input_file) if input_file else None, spec_dir):
        if base is None:
            continue
        cand = storage.join(base, table.path)
        tried.append(cand)
        if storage.exists(cand):
            return cand
    raise SideTableError(
        f"side table {table.name}: {table.path} not found (looked in {tried}); put it beside the "
        f"input file, give an absolute path in the spec, or pass --side-table {table.name}=PATH"
    )


def load_side_table(table: SideTable, path: str, dead_letter=None) -> LoadedSideTable:
    """Read and parse a side table (it is small: a catalogue, held in memory). Rows that do
    not parse go to ``dead_letter`` (a DeadLetterWriter) with their reasons, like event rows;
    ``rows_dead`` and ``keys_repeated`` say how many rows were left out."""
    parts, dead = [], 0
    key_col = next(c for c in table.columns if c.name == table.key)
    for chunk in read_chunks(path, table.layout):
        if any(r.row == 0 for r in chunk.rejects):
            raise SideTableError(f"side table {table.name}: {path}: {chunk.rejects[0].detail}")
        rej = Rejections(chunk.table.num_rows)
        parsed, _ = parse_columns(chunk.table, table.columns, table.layout.null_tokens, rej)
        good = np.flatnonzero(rej.good)
        bad = np.flatnonzero(~rej.good)
        dead += len(chunk.rejects) + len(bad)
        if dead_letter is not None and (chunk.rejects or len(bad)):
            rows = [r.row for r in chunk.rejects] + chunk.rows[bad].tolist()
            reasons = [r.reason.value for r in chunk.rejects] + [REASON_CODES[c].value for c in rej.code[bad]]
            details = [f"side table {table.name}: {r.detail}" for r in chunk.rejects] + [
                f"side table {table.name}: {d}" for d in rej.detail[bad]
            ]
            dead_letter.write(path, rows, reasons, details, [r.raw for r in chunk.rejects] + chunk.raw_text(bad))
        parts.append({k: take_value(v, good) for k, v in parsed.items()})
    if not parts or sum(len(p[key_col.name]) for p in parts) == 0:
        raise SideTableError(
            f"side table {table.name}: {path} has no good rows ({dead} bad); check its columns in the spec"
        )
    keys = np.concatenate([p[key_col.name] for p in parts]).astype(np.int64)
    values = {c.name: _concat([p[c.name] for p in parts]) for c in table.joined}
    keys_sorted, first = np.unique(keys, return_index=True)  # a repeated key keeps its first row
    return LoadedSideTable(
        table,
        path,
        keys_sorted,
        {k: take_value(v, first) for k, v in values.items()},
        dead,
        len(keys) - len(keys_sorted),
    )


def _concat(parts: list):
    if isinstance(parts[0], Jagged):
        return Jagged(np.concatenate([p.values for p in parts]), np.concatenate([p.lengths for p in parts]))
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return pa.concat_arrays([p.combine_chunks() if isinstance(p, pa.ChunkedArray) else p for p in parts])
