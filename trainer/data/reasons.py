"""Why a row was rejected: the reasons written to the dead-letter file."""

import enum


@enum.unique
class Reason(str, enum.Enum):
    UNREADABLE_FILE = "unreadable file"  # a whole file (counted in files_unreadable, not rows)
    HEADER_MISMATCH = "header mismatch"  # a whole file: the spec expects a header the file lacks
    INVALID_UTF8 = "invalid utf-8"
    INVALID_JSON = "invalid json"
    WRONG_COLUMN_COUNT = "wrong column count"
    CONTROL_CHARACTERS = "control characters"
    MISSING_FIELD = "missing field"
    OVERSIZED_STRING = "oversized string"
    TOO_MANY_ITEMS = "too many items"
    MALFORMED_ID = "malformed id"
    UNPARSABLE_TIME = "unparsable time"
    TIME_OUT_OF_RANGE = "time out of range"
    NOT_A_NUMBER = "not a number"
    NON_FINITE = "non-finite number"
    OUT_OF_RANGE = "out-of-range number"
    UNKNOWN_ACTION = "unknown action"
    LATE = "late event"
    FUTURE = "future event"  # more than lateness.max_future_s ahead of the watermark and the wall clock
    DUPLICATE = "duplicate event id"


CHANGED_FILE = "changed after consumption"  # a whole file (ledger status "changed"): refused, never trained twice
FILE_REASONS = (Reason.UNREADABLE_FILE, Reason.HEADER_MISMATCH)
