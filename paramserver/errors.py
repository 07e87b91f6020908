"""Parameter-server errors: one type per failure, each carrying its context and pickling cleanly.

Every error keeps its constructor arguments in ``self.args`` so that ``pickle`` (and Ray,
which ships an actor's exception back to the caller) rebuilds it with the same fields.
"""

from __future__ import annotations


class PSError(Exception):
    """Base class of every parameter-server error."""

    def __reduce__(self):
        return (type(self), self.args)


class UnknownTableError(PSError, KeyError):
    """A call named a table the parameter server does not hold."""

    def __init__(self, table: str, known: tuple[str, ...] | list[str]) -> None:
        super().__init__(table, tuple(known))
        self.table = table
        self.known = tuple(known)

    def __str__(self) -> str:
        return f"unknown table {self.table!r}; the parameter server holds {list(self.known)}"


class BadPullError(PSError, ValueError):
    """A pull was malformed (ids not a 1-D integer array); nothing was read or counted."""

    def __init__(self, table: str, reason: str) -> None:
        super().__init__(table, reason)
        self.table = table
        self.reason = reason

    def __str__(self) -> str:
        return f"bad pull for table {self.table!r}: {self.reason}"


class BadPushError(PSError, ValueError):
    """A push was malformed (dtype, shape, non-finite gradient, step); no table was changed."""

    def __init__(self, table: str, reason: str) -> None:
        super().__init__(table, reason)
        self.table = table
        self.reason = reason

    def __str__(self) -> str:
        return f"bad push for table {self.table!r}: {self.reason}; no table was changed"


class ShardUnavailableError(PSError, RuntimeError):
    """A shard actor died or could not be reached; ``cause`` is the underlying error as text."""

    def __init__(self, shard: int, cause: str) -> None:
        super().__init__(shard, str(cause))
        self.shard = shard
        self.cause = str(cause)

    def __str__(self) -> str:
        return f"parameter-server shard {self.shard} is unavailable: {self.cause}"


class CutError(PSError, RuntimeError):
    """A version cut was used wrongly (unknown or already finished cut id); nothing was changed."""

    def __init__(self, cut_id: str, reason: str) -> None:
        super().__init__(cut_id, reason)
        self.cut_id = cut_id
        self.reason = reason

    def __str__(self) -> str:
        return f"cut {self.cut_id!r}: {self.reason}"


class RestoreError(PSError, ValueError):
    """A version cannot be restored into this shard (capacity, dims, optimizer); the shard is unchanged."""

    def __init__(self, shard: int, version: int | None, reason: str) -> None:
        super().__init__(shard, version, reason)
        self.shard = shard
        self.version = version
        self.reason = reason

    def __str__(self) -> str:
        return f"shard {self.shard} cannot restore version {self.version}: {self.reason}"


class TableFullError(PSError, RuntimeError):
    """A pull needed more new rows than the table can free (``ps.full_table: error``); nothing was changed."""

    def __init__(self, table: str, needed: int, available: int, capacity: int) -> None:
        super().__init__(table, needed, available, capacity)
        self.table = table
        self.needed = needed
        self.available = available
        self.capacity = capacity

    def __str__(self) -> str:
        return (
            f"table {self.table!r} is full: the pull needs {self.needed} new row(s) but only {self.available} "
            f"of {self.capacity} slots are free or evictable (the rest hold this batch or rows leased to "
            "steps whose push is pending); raise ps.capacity_per_shard, add shards, or set "
            "ps.full_table: refuse (the extra ids then read zeros, counted as refused_rows); nothing was changed"
        )
