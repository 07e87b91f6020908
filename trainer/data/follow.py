"""Following a run's data files: history first, then incoming files as they land, each once, in name order."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from trainer.data.ledger import DataLedger
from trainer.data.pipeline import expand_inputs


def follow_data_files(history: Path | None, incoming: Path | None, ledger: DataLedger, drain: bool,
                  poll_s: float = 0.2, idle_timeout_s: float | None = None) -> Iterator[Path]:
    """Yield data files in name order, each once: first ``history``, then ``incoming`` as they land.

    New files in ``incoming`` are noticed within ``poll_s``. With ``drain`` the iterator
    ends once every data file present has been yielded; otherwise it waits for more (until
    ``idle_timeout_s`` without a new data file, if given). Files being written (dot-prefixed
    temporaries) are ignored; the ledger says which data files were already taken.
    """
    for path in ledger.pending(expand_inputs([history])) if history else []:
        yield path
    if incoming is None:
        return
    idle_since = time.monotonic()
    taken: set[str] = set()
    while True:
        fresh = [p for p in ledger.pending(expand_inputs([incoming])) if p.name not in taken]
        for path in fresh:
            taken.add(path.name)
            yield path
            idle_since = time.monotonic()
        if not fresh:
            if drain:
                return
            if idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                return
            time.sleep(poll_s)
