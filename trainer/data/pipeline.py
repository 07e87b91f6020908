"""Read -> validate, over one or many files (local paths or fsspec URLs), with a progress bar on long work."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from trainer.data import storage
from trainer.data.batch import EventBatch
from trainer.data.counts import check_file_report
from trainer.data.reader import DEFAULT_BLOCK_SIZE, read_chunks
from trainer.data.spec import FeatureSpec
from trainer.data.validate import Validator

DATA_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".inter", ".txt", ".json", ".ndjson", ".pq")


IN_PROGRESS_SUFFIXES = (".tmp", ".inprogress")


def is_data_file_name(name: str) -> bool:
    """A data file by its name: a data suffix, and not an in-progress name (the writer's contract: a
    leading ``.`` or ``_``, a ``.tmp`` or ``.inprogress`` suffix or infix, ``_COPYING_`` anywhere)."""
    lower = name.lower()
    if name.startswith((".", "_")) or "_copying_" in lower or lower.endswith(IN_PROGRESS_SUFFIXES):
        return False
    if any(f"{s}." in lower for s in IN_PROGRESS_SUFFIXES):  # part-1.tmp.parquet, part-1.inprogress.csv
        return False
    return lower.endswith(DATA_SUFFIXES)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list:
    """Files as given; a directory (or a URL prefix ending in ``/``) stands for its data files
    in name order (by suffix; hidden and temporary files, such as data files still being
    written, are skipped). Local files are Paths, URLs stay strings."""
    from pathlib import Path

    out: list = []
    for item in inputs:
        s = str(item)
        if storage.is_url(s):
            if storage.is_dir(s):
                out.extend(
                    sorted((f.path for f in storage.list_files(s) if is_data_file_name(f.name)), key=storage.base_name)
                )
            elif storage.exists(s):
                out.append(s)
            else:
                raise FileNotFoundError(f"input {s} does not exist")
            continue
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if is_data_file_name(q.name) and q.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    return out


def iter_batches(
    inputs: Iterable[str | os.PathLike],
    validator: Validator,
    progress: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_dead_share: float | None = None,
) -> Iterator[EventBatch]:
    """Yield the good rows of every input file, chunk by chunk, in order.

    Each file gets its own report (``validator.report.per_file``, ``validator.last_file``).
    With ``max_dead_share`` a file that was refused or had more than that share of its rows
    dead-lettered raises :class:`trainer.data.FileQualityError` once it has been read.
    """
    files = expand_inputs(inputs)
    total = sum(storage.stat(f).size for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="validate", disable=not progress, leave=False) as bar:
        for f in files:
            validator.start_file(str(f))
            for chunk in read_chunks(f, validator.spec, block_size):
                bar.update(chunk.bytes_read)
                batch = validator.process(chunk)
                if len(batch):
                    yield batch
            report = validator.finish_file()
            if max_dead_share is not None:
                check_file_report(report, max_dead_share)


def read_data_file(path, validator: Validator, skip_rows: int = 0) -> EventBatch:
    """All rows to train with for one data file, as one batch: first the late rows deferred
    from earlier files (stream mode), then this file's good rows. ``path`` is a path, a URL,
    or a :class:`trainer.data.DataFileRef`; a ref that carries the bytes it was identified by
    (``ref.data``) is parsed from those bytes, so what is trained is what was hashed.
    ``skip_rows``: the file's first rows were taken by an earlier partial read (the ledger's
    position). ``validator.last_file`` has this file's counts (check it with
    :func:`trainer.data.check_file_report`)."""
    source = getattr(path, "path", path)
    data = getattr(path, "data", None)
    late = validator.take_late()
    if data is None and not skip_rows:
        batches = list(iter_batches([source], validator, progress=False))
    else:
        validator.start_file(str(source), skip_rows=skip_rows)
        batches = [
            b for chunk in read_chunks(str(source), validator.spec, data=data) if len(b := validator.process(chunk))
        ]
        validator.finish_file()
    batches = ([late] if late is not None else []) + batches
    if batches:
        return EventBatch.concat(batches)
    return empty_batch(validator.spec, str(source))


def empty_batch(spec: FeatureSpec, source: str) -> EventBatch:
    z = np.zeros(0, np.int64)
    return EventBatch(
        source,
        z,
        z,
        np.zeros(0, np.float32),
        {f.name: z for f in spec.sparse},
        np.zeros((0, len(spec.dense)), np.float32),
        z,
        pa.table({"event_id": pa.array(z)}),
        lengths={name: z for name in spec.multi_valued},
    )
