"""Version-store errors: each carries its context, says what to do, and pickles cleanly.

Every error keeps its constructor arguments in ``self.args`` and rebuilds itself from them
(``__reduce__``), so it crosses a Ray actor boundary with its fields intact.

The hierarchy separates *the version is bad* from *the storage is not answering right now*::

    StoreError                              anything the version store raises
    ├── VersionError                        about a version itself: retrying the same read will not help
    │   ├── CorruptVersionError             a part is missing, truncated, fails its checksum or its format
    │   ├── NoSuchVersionError (LookupError)  no manifest: never committed, aborted or collected
    │   └── VersionWriteError               a version could not be written or committed as asked
    │       └── WriterFencedError           another writer holds the store (or took it over from this one)
    └── StoreUnavailableError (ConnectionError)  transient: connection reset, timeout, S3 503, any OSError
                                            that is not a checksum/format failure; retry with backoff

``StoreUnavailableError`` is deliberately **not** a ``VersionError``: a reader that marks a version
bad on ``VersionError`` (or ``CorruptVersionError``) must retry on ``StoreUnavailableError``. It is an
``OSError`` (``ConnectionError``), so code that retries I/O errors retries it too.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every version-store error."""

    def __reduce__(self):
        return (type(self), self.args)


class VersionError(StoreError):
    """Something is wrong with a version (not with reaching the store): see the subclasses."""


class CorruptVersionError(VersionError):
    """A part of ``version`` is missing, truncated or fails its checksum; the version must not be loaded."""

    def __init__(self, version: int, part: str, reason: str) -> None:
        super().__init__(version, part, reason)
        self.version = version
        self.part = part
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"version {self.version} is corrupt: part {self.part!r} {self.reason}; load an earlier version "
            f"(VersionStore.latest_valid()) and check the storage, or rewrite it with a full version"
        )


class NoSuchVersionError(VersionError, LookupError):
    """``version`` has no manifest (never committed, aborted or collected)."""

    def __init__(self, version: int | None, available: tuple[int, ...] | list[int] = ()) -> None:
        super().__init__(version, tuple(available))
        self.version = version
        self.available = tuple(available)

    def __str__(self) -> str:
        if not self.available:
            return f"no committed version {self.version} in the store: the store holds no committed version yet"
        shown = list(self.available[-10:])
        more = f" (newest 10 of {len(self.available)})" if len(self.available) > 10 else ""
        return f"no committed version {self.version} in the store; committed versions: {shown}{more}"


class StoreUnavailableError(StoreError, ConnectionError):
    """The store at ``url`` could not be read or written (transient: retry); ``cause`` is the underlying
    error as text. Not a VersionError: nothing is known to be wrong with any version."""

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(url, str(cause))
        self.url = url
        self.cause = str(cause)
        self.args = (url, str(cause))

    def __str__(self) -> str:
        return (
            f"version store {self.url} is unavailable: {self.cause}; this may be transient (retry with "
            f"backoff); if it persists check the URL, the credentials (storage_options) and that the bucket "
            f"or directory exists"
        )


class VersionWriteError(VersionError):
    """A version could not be written or committed as asked (``version`` may be None before allocation)."""

    def __init__(self, version: int | None, reason: str) -> None:
        super().__init__(version, reason)
        self.version = version
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot write version {self.version}: {self.reason}"


class WriterFencedError(VersionWriteError):
    """Another writer holds the store's writer lease (``holder``, fencing ``epoch``), or took it over
    from this writer: this writer must not begin or commit a version."""

    def __init__(self, version: int | None, reason: str, holder: str = "", epoch: int = 0) -> None:
        super().__init__(version, reason)
        self.args = (version, reason, holder, epoch)
        self.holder = holder
        self.epoch = int(epoch)

    def __str__(self) -> str:
        what = f"cannot write version {self.version}" if self.version is not None else "cannot write versions"
        return f"{what}: {self.reason}"


_PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException | None) -> bool:
    """True when ``exc`` is store trouble worth retrying with backoff: a :class:`StoreUnavailableError`, a
    ``ConnectionError`` / ``TimeoutError``, or an ``OSError`` such as EIO or ENOSPC, found on ``exc`` or on
    what it wraps (``__cause__``, ``__context__``, a Ray task error's ``cause``). Never transient: a
    :class:`VersionError` anywhere in the chain (a corrupt part, a version that cannot be written as
    asked, a fenced writer), a missing file, a permission error, or anything that is not an I/O error."""
    transient, seen = False, set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, VersionError) or isinstance(e, _PERMANENT_OS_ERRORS):
            return False
        if isinstance(e, (StoreUnavailableError, ConnectionError, TimeoutError, OSError)):
            transient = True
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return transient
