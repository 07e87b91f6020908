"""trainer.data: feature specs, the data-file reader, validation with a dead-letter file,
stable id hashing, running feature statistics and the data ledger.

Typical use::

    spec = load_spec("taobao")
    with DeadLetterWriter("dead.jsonl") as dl:
        v = Validator(spec, dl)
        for batch in iter_batches(["day1.csv"], v):   # EventBatch: numpy columns
            ...
    v.report.as_dict()  # rows_in == rows_good + rows_dead + rows_duplicate
"""

from trainer.data.batch import EventBatch
from trainer.data.deadletter import DeadLetterWriter, read_dead_letters
from trainer.data.hashing import hash_strings
from trainer.data.ledger import DataLedger, LedgerError
from trainer.data.pipeline import expand_inputs, iter_batches, read_data_file
from trainer.data.reasons import Reason
from trainer.data.spec import FeatureSpec, load_spec
from trainer.data.stats import RunningStats
from trainer.data.validate import ValidationReport, Validator

__all__ = [
    "DataLedger", "DeadLetterWriter", "EventBatch", "FeatureSpec", "LedgerError", "Reason", "RunningStats",
    "ValidationReport", "Validator", "expand_inputs", "hash_strings", "iter_batches", "load_spec",
    "read_dead_letters", "read_data_file",
]
