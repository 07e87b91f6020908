"""Where data files live: local paths or fsspec URLs (``s3://bucket/prefix/``, ``gs://``, ...).

Local paths use the standard library (fast, no extra dependency); a URL goes through
fsspec, so any filesystem fsspec knows works once its package is installed (``s3fs``
for S3). Credentials and endpoints come from the usual environment, e.g. for S3
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_ENDPOINT_URL``, or from fsspec
storage options: every function here takes ``options=`` (a mapping such as
``{"endpoint_url": ..., "key": ..., "secret": ...}``), and ``with storage_options(opts):`` makes
``opts`` the default of every call in that context (a training worker wraps its run in it, so the
follower and the reader of its data files use the run's ``storage_options``). Local paths ignore them.

    list_files("s3://logs/incoming/")   -> [FileInfo("s3://logs/incoming/part-1.csv", size=..., mtime=...)]
    open_binary("s3://logs/incoming/part-1.csv")
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")
HASH_BLOCK = 1 << 20


def is_url(path: str | os.PathLike) -> bool:
    return isinstance(path, str) and bool(_URL.match(path)) and not path.startswith("file://")


def base_name(path: str | os.PathLike) -> str:
    """The file name of a path or URL."""
    s = str(path)
    name = s.rstrip("/").rsplit("/", 1)[-1]
    if is_url(s) or name not in ("", ".", ".."):
        return name  # (a plain string split: a follower names every listed file on every poll)
    return Path(s).name  # the forms a path normalises


def parent_of(path: str | os.PathLike) -> str:
    s = str(path)
    return s.rstrip("/").rsplit("/", 1)[0] if is_url(s) else str(Path(s).parent)


def join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name if is_url(directory) else str(Path(directory) / name)


_OPTIONS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("freshrec_storage_options", default=None)


@contextlib.contextmanager
def storage_options(options: Mapping | None) -> Iterator[None]:
    """Within the context, ``options`` (fsspec storage options; None: none) are the default of every URL
    opened, listed or stat'ed here in this thread (a ``contextvars`` value: threads started inside do not
    inherit it)."""
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"storage options must be a mapping of fsspec options, got {options!r}")
    token = _OPTIONS.set(dict(options) if options else None)
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def _options(options: Mapping | None) -> dict:
    if options is None:
        options = _OPTIONS.get()
    return dict(options or {})


def _fs(url: str, options: Mapping | None = None):
    import fsspec

    fs, _, paths = fsspec.get_fs_token_paths(url, storage_options=_options(options))
    return fs, paths[0]


@dataclasses.dataclass(frozen=True)
class FileInfo:
    path: str  # local path or URL
    size: int
    mtime: float  # seconds; 0.0 where the filesystem does not say

    @functools.cached_property
    def name(self) -> str:  # computed once: a follower sorts, filters and matches every listed file per poll
        return base_name(self.path)


def _mtime(info: dict) -> float:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(key)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        try:
            return float(v)
        except (TypeError, ValueError):
            continue
    return 0.0


def exists(path: str | os.PathLike, options: Mapping | None = None) -> bool:
    if is_url(str(path)):
        fs, p = _fs(str(path), options)
        return fs.exists(p)
    return Path(path).exists()


def is_dir(path: str | os.PathLike, options: Mapping | None = None) -> bool:
    s = str(path)
    if is_url(s):
        fs, p = _fs(s, options)
        return s.endswith("/") or fs.isdir(p)
    return Path(path).is_dir()


def list_files(directory: str | os.PathLike, options: Mapping | None = None) -> list[FileInfo]:
    """The plain files directly in ``directory`` (fresh: never from a listing cache)."""
    s = str(directory)
    if is_url(s):
        fs, p = _fs(s, options)
        fs.invalidate_cache(p)
        proto = s.split("://", 1)[0]
        try:
            listing = fs.ls(p, detail=True)
        except FileNotFoundError:  # an object-store prefix with no objects yet is simply empty
            return []
        out = []
        for info in listing:
            if info.get("type") != "file":
                continue
            name = info["name"]
            url = name if _URL.match(name) else f"{proto}://{name}"
            out.append(FileInfo(url, int(info.get("size") or 0), _mtime(info)))
        return out
    out = []
    with os.scandir(s) as it:
        for entry in it:
            if entry.is_file():
                st = entry.stat()
                out.append(FileInfo(entry.path, st.st_size, st.st_mtime))
    return out


def list_paths(directory: str | os.PathLike) -> list[str] | None:
    """The paths of the plain files directly in a local ``directory``, without a ``stat`` of each (a follower's
    quick poll); None for a URL, whose listing already carries sizes and times (use :func:`list_files`)."""
    s = str(directory)
    if is_url(s):
        return None
    with os.scandir(s) as it:
        return [entry.path for entry in it if entry.is_file()]


def stat(path: str | os.PathLike, options: Mapping | None = None) -> FileInfo:
    s = str(path)
    if is_url(s):
        fs, p = _fs(s, options)
        info = fs.info(p)
        return FileInfo(s, int(info.get("size") or 0), _mtime(info))
    st = os.stat(s)
    return FileInfo(s, st.st_size, st.st_mtime)


def open_binary(path: str | os.PathLike, options: Mapping | None = None) -> IO[bytes]:
    s = str(path)
    if is_url(s):
        import fsspec

        return fsspec.open(s, "rb", **_options(options)).open()
    return open(s, "rb")


def sha256_of(path: str | os.PathLike, options: Mapping | None = None) -> str:
    """Hex sha256 of the file's bytes (what identifies a data file in the ledger)."""
    h = hashlib.sha256()
    with open_binary(path, options) as fh:
        while block := fh.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()
