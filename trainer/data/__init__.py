"""trainer.data: feature specs, the data-file reader, validation with a dead-letter file,
stable id hashing, running feature statistics and the data ledger.

Typical use::

    spec = load_spec("taobao")
    with DeadLetterWriter("dead.jsonl") as dl:
        v = Validator(spec, dl)
        for batch in iter_batches(["day1.csv"], v):   # EventBatch: numpy columns
            ...
    v.report.as_dict()  # rows_in == rows_good + rows_dead + rows_duplicate + rows_late

A trainer following data files (stream mode: late events are deferred to the next file)::

    v = Validator(spec, dl, stream=True)
    for ref in follow_data_files(history, incoming, ledger, drain=False):   # each file's bytes, read once
        if ref.refused:                                # changed after it was consumed: never trained
            ledger.refuse(ref); continue
        batch = read_data_file(ref, v)                 # late rows of earlier files first, then ref's bytes
        check_file_report(v.last_file, spec.max_dead_share)   # FileQualityError: wrong spec?
        ...train...
        ledger.record(ref, v.last_file.rows_in, complete=v.last_file.complete)

The stream's state (ledger, dedup window, watermark, deferred rows) goes into every model version
through :class:`trainer.data.state.DataState` (trainer.worker.consume is the worker's loop body).
"""

from trainer.data.batch import EventBatch
from trainer.data.counts import FileQualityError, FileReport, ValidationReport, check_file_report
from trainer.data.deadletter import DeadLetterWriter, read_dead_letters
from trainer.data.hashing import hash_strings
from trainer.data.ledger import DataFileRef, DataLedger, LedgerError, data_file_ref
from trainer.data.pipeline import expand_inputs, iter_batches, read_data_file
from trainer.data.reasons import Reason
from trainer.data.spec import FeatureSpec, load_spec
from trainer.data.stats import RunningStats
from trainer.data.validate import Validator

__all__ = [
    "DataFileRef",
    "DataLedger",
    "DeadLetterWriter",
    "EventBatch",
    "FeatureSpec",
    "FileQualityError",
    "FileReport",
    "LedgerError",
    "Reason",
    "RunningStats",
    "ValidationReport",
    "Validator",
    "check_file_report",
    "data_file_ref",
    "expand_inputs",
    "hash_strings",
    "iter_batches",
    "load_spec",
    "read_dead_letters",
    "read_data_file",
]
