"""Read -> validate, over one or many files, with a progress bar on long work."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from trainer.data.batch import EventBatch
from trainer.data.reader import DEFAULT_BLOCK_SIZE, read_chunks
from trainer.data.spec import FeatureSpec
from trainer.data.validate import Validator

DATA_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".inter")


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; a directory stands for its data files in name order (by suffix;
    hidden files, such as data files still being written, are skipped)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir()
                              if q.suffix.lower() in DATA_SUFFIXES and not q.name.startswith(".") and q.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    return out


def iter_batches(
    inputs: Iterable[str | Path],
    validator: Validator,
    progress: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Iterator[EventBatch]:
    """Yield the good rows of every input file, chunk by chunk, in order."""
    files = expand_inputs(inputs)
    total = sum(f.stat().st_size for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="validate", disable=not progress, leave=False) as bar:
        for f in files:
            validator.report.files += 1
            for chunk in read_chunks(f, validator.spec, block_size):
                bar.update(chunk.bytes_read)
                batch = validator.process(chunk)
                if len(batch):
                    yield batch


def read_data_file(path: str | Path, validator: Validator) -> EventBatch:
    """All good rows of one data file as one batch (data files are small time windows)."""
    batches = list(iter_batches([path], validator, progress=False))
    if batches:
        return EventBatch.concat(batches)
    return empty_batch(validator.spec, str(path))


def empty_batch(spec: FeatureSpec, source: str) -> EventBatch:
    z = np.zeros(0, np.int64)
    return EventBatch(source, z, z, np.zeros(0, np.float32), {f.name: z for f in spec.sparse},
                      np.zeros((0, len(spec.dense)), np.float32), z, pa.table({"event_id": pa.array(z)}))
