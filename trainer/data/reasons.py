"""Why a row was rejected: the reasons written to the dead-letter file."""

import enum


@enum.unique
class Reason(str, enum.Enum):
    UNREADABLE_FILE = "unreadable file"
    INVALID_UTF8 = "invalid utf-8"
    INVALID_JSON = "invalid json"
    WRONG_COLUMN_COUNT = "wrong column count"
    MISSING_FIELD = "missing field"
    OVERSIZED_STRING = "oversized string"
    UNPARSABLE_TIME = "unparsable time"
    NOT_A_NUMBER = "not a number"
    NON_FINITE = "non-finite number"
    OUT_OF_RANGE = "out-of-range number"
    UNKNOWN_ACTION = "unknown action"
    OUT_OF_ORDER = "event far out of time order"
    DUPLICATE = "duplicate event id"
