"""The version store: committed model versions under one root URL (local path or any fsspec URL).

Layout::

    ROOT/
      LATEST                     "12\\n": the newest committed version (written after its manifest)
      PUBLISHED                  "11\\n": the newest version that passed the publish gate (versions.publish)
      PINNED                     "9\\n": the version serving is pinned to (rollback); absent when not pinned
      WRITER.json                the writer lease: holder, fencing epoch, expiry, versions in flight
                                 (versions.fencing; WRITER.lock beside it on a local file system)
      leases/<holder>.json       serving leases: which version each replica / table shard serves
                                 (versions.leases); gc keeps those versions
      v00000011/
        MANIFEST.json            present  <=>  version 11 is committed (readers list these only)
        GATE.json                the publish gate's decision on it (publish / hold, and why)
        ps/shard-0/user.part     part files (see versions.partfile)
        ps/shard-1/user.part
        dense.part
      v00000012/ ...
      v00000013/
        _BEGUN.json              a writer is (or was) writing 13: not visible, gc removes it later

Commit protocol (two-phase; the version is visible only once step 3 (the manifest) is done)::

    begin()         take (or renew) the writer lease; allocate 13 and list it as in flight in
                    WRITER.json (compare-and-swap); write _BEGUN.json
    write_part()*   part files, each under a temporary name then renamed (local), checksummed
    commit(parts)   1. every listed part exists with its size
                    2. the writer lease is still this writer's, at the epoch 13 began under (else
                       WriterFencedError: another writer took the store over)
                    3. MANIFEST.json  (temporary name + fsync + atomic rename; one PUT on object stores)
                    4. LATEST         (the same way, only if 13 is newer than what it names)
                    5. 13 leaves the in-flight list; stale temporary files are removed

A crash before 3 leaves a directory without a manifest: never listed; ``gc`` removes it once
its writer can no longer commit it (see ``gc``). A crash between 3 and 4 leaves a committed
version that LATEST does not name yet: ``latest()`` still finds it (it checks for newer manifests).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from versions import partfile
from versions.digest import ModelDigest
from versions.errors import (
    CorruptVersionError,
    NoSuchVersionError,
    StoreError,
    StoreUnavailableError,
    VersionWriteError,
    WriterFencedError,
)
from versions.fencing import WriterLease, is_live
from versions.leases import LEASES, ServingLease, check_lease_args, holder_file
from versions.manifest import KINDS, Manifest, PartInfo, as_json_value, data_files_of, now, rows_of
from versions.merge import Keep, merge_keyed
from versions.publish import GATE, PINNED, PUBLISHED, decision_json, read_pointer, serving_target

log = logging.getLogger(__name__)

_VDIR = re.compile(r"^v(\d{8})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*(/[A-Za-z0-9][A-Za-z0-9._=-]*)*$")
MANIFEST = "MANIFEST.json"
BEGUN = "_BEGUN.json"
ABORTED = "_ABORTED"
LATEST = "LATEST"
WRITER_TTL_S = 60.0  # the writer lease: renewed every ttl / 4 by a heartbeat thread while the writer lives
MANIFEST_CACHE = 256  # manifests a VersionStore keeps in memory (LRU)
TMP_GRACE_S = 60.0  # a temporary file (``*.tmp-*``) older than this is a failed write's: commit and gc remove it
# an idempotent store call (exists, a listing, reading a small file or a part, writing a whole small file or a
# whole part: what botocore's own retries do for S3 requests) that hit a transient error is tried this often
READ_ATTEMPTS = 3
LEASE_SKEW_S = 30.0  # gc keeps a leased version this long past its lease's expiry (clock skew between hosts)


class ManifestCache:
    """A bounded LRU of parsed manifests (version -> Manifest); ``len()`` is its size."""

    def __init__(self, max_entries: int = MANIFEST_CACHE) -> None:
        self.max_entries = int(max_entries)
        self._d: OrderedDict[int, Manifest] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, version: int) -> Manifest | None:
        with self._lock:
            m = self._d.get(version)
            if m is None:
                self.misses += 1
                return None
            self._d.move_to_end(version)
            self.hits += 1
            return m

    def __setitem__(self, version: int, m: Manifest) -> None:
        with self._lock:
            self._d[version] = m
            self._d.move_to_end(version)
            while len(self._d) > self.max_entries:
                self._d.popitem(last=False)

    def __contains__(self, version) -> bool:
        return version in self._d

    def pop(self, version: int, default=None):
        with self._lock:
            return self._d.pop(version, default)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


def _open_store(url: str, storage_options: dict, kw: dict) -> "VersionStore":
    return VersionStore(url, storage_options, **kw)


def check_part_name(name: str) -> str:
    """A part name is slash-separated segments of letters, digits, ``._=-`` (``ps/shard-0/user``)."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name or name.endswith(".part"):
        raise ValueError(
            f"bad part name {name!r}: use slash-separated segments of letters, digits and ._=- "
            f"(e.g. 'ps/shard-0/user' or 'dense')"
        )
    return name


class VersionStore:
    """Committed versions under ``url`` (``/path``, ``file://``, ``s3://bucket/prefix``, ``memory://``).

    Picklable (it holds only the URL and ``storage_options``), so actors can open the same store.

        store = VersionStore("s3://models/run-7", {"endpoint_url": "http://127.0.0.1:5000"})
        w = store.begin("full", step=1200)
        parts = [w.write_part("dense", {"w": w_np})] + shard_parts
        store_manifest = w.commit(parts, ledger=ledger.to_dict(), model_digest=digest)
        store.latest()  ->  1
    """

    def __init__(
        self,
        url: str | os.PathLike,
        storage_options: Mapping | None = None,
        *,
        writer_id: str | None = None,
        writer_ttl_s: float = WRITER_TTL_S,
        writer_wait_s: float | None = None,
        manifest_cache: int = MANIFEST_CACHE,
    ) -> None:
        self.url = os.fspath(url)
        self.storage_options = dict(storage_options or {})
        if writer_id is not None and (not isinstance(writer_id, str) or not writer_id.strip()):
            raise ValueError(f"writer_id must be a non-empty name, got {writer_id!r}")
        if not (isinstance(writer_ttl_s, (int, float)) and 0 < writer_ttl_s < float("inf")):
            raise ValueError(f"writer_ttl_s must be a number of seconds > 0, got {writer_ttl_s!r}")
        if not isinstance(manifest_cache, int) or manifest_cache < 1:
            raise ValueError(
                f"manifest_cache must be an integer >= 1 (manifests kept in memory), got {manifest_cache!r}"
            )
        self.writer_id = writer_id  # None: host:pid:token (every store of this process is the same writer)
        self.writer_ttl_s = float(writer_ttl_s)
        # begin() waits this long for another writer's lease to lapse (default: a crashed writer's whole ttl)
        self.writer_wait_s = self.writer_ttl_s + 5.0 if writer_wait_s is None else float(writer_wait_s)
        self._fs = None
        self._root = ""
        self._manifests = ManifestCache(manifest_cache)
        self._writer = WriterLease(self)

    def __reduce__(self):
        kw = {
            "writer_id": self.writer_id,
            "writer_ttl_s": self.writer_ttl_s,
            "writer_wait_s": self.writer_wait_s,
            "manifest_cache": self._manifests.max_entries,
        }
        return (_open_store, (self.url, self.storage_options, kw))

    def __repr__(self) -> str:
        return f"VersionStore({self.url!r})"

    # ------------------------------------------------------------ file system
    @property
    def fs(self):
        if self._fs is None:
            import fsspec

            with self._io("open"):
                self._fs, self._root = fsspec.core.url_to_fs(self.url, **self.storage_options)
            self._root = self._root.rstrip("/") or "/"
        return self._fs

    @property
    def root(self) -> str:
        _ = self.fs  # opening the filesystem sets the root
        return self._root

    @property
    def local(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    @contextlib.contextmanager
    def _io(self, what: str):
        try:
            yield
        except (FileNotFoundError, StoreError):
            raise
        except (TypeError, AttributeError, KeyError, NameError, AssertionError):
            raise  # bugs, not storage trouble
        except Exception as exc:  # OSError, botocore's connection and client errors, unknown protocols, ...
            raise StoreUnavailableError(self.url, f"{what}: {type(exc).__name__}: {exc}") from exc

    def vdir(self, version: int) -> str:
        return f"{self.root}/v{int(version):08d}"

    def part_path(self, version: int, name: str) -> str:
        return f"{self.vdir(version)}/{check_part_name(name)}.part"

    def _retrying(self, what: str, fn):
        """``fn()`` under :meth:`_io`, retried on a transient error (StoreUnavailableError) with a short
        jittered backoff, ``READ_ATTEMPTS`` times in all. Only for idempotent calls: reads, and writes of a
        whole object (a small file, a part) that a second try simply writes again. The writer lease's
        compare-and-swap retries its reads here and settles a failed conditional write by reading it back
        (fencing.py). A poller, the CLI's version ticker, a restore and a version's write must not fail
        on one dropped connection. FileNotFoundError and VersionErrors are never retried."""
        for attempt in range(READ_ATTEMPTS):
            try:
                with self._io(what):
                    return fn()
            except StoreUnavailableError:
                if attempt == READ_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    _read = _retrying

    def _exists(self, path: str) -> bool:
        return self._read(f"check {path}", lambda: self.fs.exists(path))

    def _write_small(self, path: str, data: bytes) -> None:
        """Write a small file atomically: temp + fsync + rename locally, one PUT elsewhere (retried)."""
        self._retrying(f"write {path}", lambda: self._write_small_once(path, data))

    def _write_small_once(self, path: str, data: bytes) -> None:
        if self.local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # a failed try leaves no temp file behind
                raise
            _fsync_dir(os.path.dirname(path))
        else:
            self.fs.pipe_file(path, data)

    def _open_read(self, path: str):
        """A file to read ``path`` from. memory:// hands every reader the same file object (one
        shared position: concurrent readers would read each other's bytes), so there it is a copy."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        if "memory" in protocols:
            return io.BytesIO(self.fs.cat_file(path))
        return self.fs.open(path, "rb")

    def _read_small(self, path: str) -> bytes:
        return self._read(f"read {path}", lambda: self.fs.cat_file(path))

    def forget_listings(self, path: str | None = None) -> None:
        """Drop every cached directory listing at and below ``path`` (default: the store's root).

        s3fs (like every fsspec filesystem with a ``dircache``) caches each directory it lists, and its
        ``invalidate_cache(path)`` drops only ``path`` and its parents, not the directories below it. Other
        processes write versions here, so a version directory listed while it was being written (no
        manifest yet) would hide that version's manifest from ``exists`` for the life of the process.
        Wrappers (``DirFileSystem``, the chaos harness's ``faulty://``) are followed to the filesystem
        that holds the cache."""
        path = (path or self.root).rstrip("/") or "/"
        fs = self.fs
        fs.invalidate_cache(path)
        for _ in range(8):  # wrappers of wrappers, bounded
            cache = getattr(fs, "dircache", None)
            if cache is not None:
                prefix = path.rstrip("/") + "/"
                try:
                    stale = [k for k in list(cache) if isinstance(k, str) and (k == path or k.startswith(prefix))]
                except Exception:  # a cache that cannot be listed: nothing to drop by prefix
                    stale = []
                for key in stale:
                    cache.pop(key, None)
            inner = getattr(fs, "fs", None)
            if inner is None or inner is fs or not hasattr(inner, "invalidate_cache"):
                break
            join = getattr(fs, "_join", None)
            path = (join(path) if callable(join) else path).rstrip("/") or "/"
            fs = inner

    # ---------------------------------------------------------------- reading
    def _version_dirs(self) -> list[int]:
        def ls():
            self.forget_listings()  # object stores cache listings; other processes write here
            try:
                return self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                return []

        names = self._read(f"list {self.root}", ls)
        out = []
        for n in names:
            m = _VDIR.match(n.rstrip("/").rsplit("/", 1)[-1])
            if m:
                out.append(int(m.group(1)))
        return sorted(set(out))

    def versions(self) -> list[int]:
        """Committed version numbers (those with a manifest), ascending."""

        def glob():
            self.forget_listings()
            try:
                return self.fs.glob(f"{self.root}/v*/{MANIFEST}")
            except FileNotFoundError:
                return []

        paths = self._read(f"list {self.root}", glob)
        out = []
        for p in paths:
            m = _VDIR.match(p.rstrip("/").rsplit("/", 2)[-2])
            if m:
                out.append(int(m.group(1)))
        return sorted(set(out))

    @property
    def manifest_cache_size(self) -> int:
        """Manifests held in memory now (at most ``manifest_cache``, 256 by default: an LRU)."""
        return len(self._manifests)

    def manifest(self, version: int) -> Manifest:
        """The manifest of a committed ``version``; NoSuchVersionError when it has none."""
        version = int(version)
        cached = self._manifests.get(version)
        if cached is not None:
            return cached
        try:
            text = self._read_small(f"{self.vdir(version)}/{MANIFEST}")
        except FileNotFoundError:
            raise NoSuchVersionError(version, self.versions()) from None
        try:
            m = Manifest.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptVersionError(version, MANIFEST, f"is not a manifest: {type(exc).__name__}: {exc}") from None
        self._manifests[version] = m
        return m

    def list(self) -> list[Manifest]:
        """Every committed version's manifest, oldest first."""
        return [self.manifest(v) for v in self.versions()]

    def latest(self) -> int | None:
        """The newest committed version (LATEST, or a newer manifest if a commit stopped before LATEST)."""
        named = None
        try:
            named = int(self._read_small(f"{self.root}/{LATEST}").decode().strip())
        except (FileNotFoundError, ValueError):
            pass
        newer = [v for v in self._version_dirs() if named is None or v > named]
        for v in sorted(newer, reverse=True):
            if self._exists(f"{self.vdir(v)}/{MANIFEST}"):
                return v
        if named is not None and self._exists(f"{self.vdir(named)}/{MANIFEST}"):
            return named
        committed = self.versions()
        return committed[-1] if committed else None

    # ------------------------------------------------------- serving pointers
    def _pointer(self, name: str) -> int | None:
        try:
            return read_pointer(self._read_small(f"{self.root}/{name}"))
        except FileNotFoundError:
            return None

    def published(self) -> int | None:
        """The newest version the publish gate let through (PUBLISHED); None when none was published."""
        return self._pointer(PUBLISHED)

    def publish(self, version: int) -> None:
        """Point PUBLISHED at committed ``version`` (atomic; only forward: an older one is ignored)."""
        version = int(version)
        self.manifest(version)  # NoSuchVersionError if not committed
        current = self.published()
        if current is None or version > current:
            self._write_small(f"{self.root}/{PUBLISHED}", f"{version}\n".encode())

    def pinned(self) -> int | None:
        """The version serving is pinned to (PINNED), None when serving follows PUBLISHED/LATEST."""
        return self._pointer(PINNED)

    def pin(self, version: int) -> None:
        """Pin serving to committed ``version`` (rollback): every replica following this store loads it."""
        version = int(version)
        self.manifest(version)
        self._write_small(f"{self.root}/{PINNED}", f"{version}\n".encode())

    def unpin(self) -> bool:
        """Remove the pin (serving follows PUBLISHED again); False when nothing was pinned."""
        path = f"{self.root}/{PINNED}"
        with self._io(f"remove {path}"):
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                return False
        return True

    def serving_state(self) -> dict:
        """``{"pinned", "published", "latest", "target", "why"}``: what a replica should serve and why
        (PINNED, else PUBLISHED, else LATEST for a store that never published)."""
        pinned, published, latest = self.pinned(), self.published(), self.latest()
        target, why = serving_target(pinned, published, latest)
        return {"pinned": pinned, "published": published, "latest": latest, "target": target, "why": why}

    # --------------------------------------------------------- serving leases
    def _lease_path(self, holder: str) -> str:
        return f"{self.root}/{LEASES}/{holder_file(holder)}.json"

    def renew_lease(self, holder: str, version: int, *, ttl_s: float = 60.0, role: str = "replica") -> ServingLease:
        """Record (or renew) that ``holder`` serves ``version`` for the next ``ttl_s`` seconds
        (``ROOT/leases/<holder>.json``, written atomically). gc keeps every version an unexpired lease
        names. Renew well within ``ttl_s`` (every ``ttl_s / 3``); take the lease before loading."""
        version, ttl_s, role = check_lease_args(version, ttl_s, role)
        lease = ServingLease(
            holder=holder, version=version, role=role, expires_at=time.time() + ttl_s, host=socket.gethostname()
        )
        self._write_small(self._lease_path(holder), lease.to_json())
        return lease

    def release_lease(self, holder: str) -> None:
        """Drop ``holder``'s lease (idempotent: nothing happens when it holds none)."""
        path = self._lease_path(holder)
        with self._io(f"remove {path}"):
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)

    def leases(self, *, include_expired: bool = False) -> list[ServingLease]:
        """The serving leases in the store (unexpired ones unless ``include_expired``), by holder.
        An unreadable lease object is skipped with a warning."""
        folder = f"{self.root}/{LEASES}"
        with self._io(f"list {folder}"):
            self.fs.invalidate_cache(folder)
            try:
                names = self.fs.ls(folder, detail=False)
            except FileNotFoundError:
                return []
        out, t = [], time.time()
        for name in sorted(names):
            if not name.endswith(".json"):
                continue  # a temporary file of a lease being written
            try:
                lease = ServingLease.from_json(self._read_small(name))
            except FileNotFoundError:
                continue  # released while listing
            except ValueError as exc:
                log.warning("skipping the unreadable serving lease %s: %s", name, exc)
                continue
            if include_expired or not lease.expired(t):
                out.append(lease)
        return sorted(out, key=lambda x: x.holder)

    def write_gate_decision(self, version: int, decision: Mapping) -> None:
        """Keep the publish gate's decision beside the version (``vNNNNNNNN/GATE.json``)."""
        self._write_small(f"{self.vdir(version)}/{GATE}", decision_json(dict(decision)))

    def gate_decision(self, version: int) -> dict | None:
        """The publish gate's decision on ``version``; None when the gate never judged it."""
        try:
            return json.loads(self._read_small(f"{self.vdir(version)}/{GATE}"))
        except FileNotFoundError:
            return None

    def chain(self, version: int) -> list[Manifest]:
        """Manifests from the full base of ``version`` up to ``version``: ``[full, delta, ..., version]``."""
        out = [self.manifest(version)]
        while out[-1].kind == "delta":
            parent = out[-1].parent
            try:
                out.append(self.manifest(parent))
            except NoSuchVersionError:
                raise CorruptVersionError(
                    version, f"(parent {parent})", f"is missing: version {out[-1].version} is a delta on it"
                ) from None
        return out[::-1]

    def read_part(self, version: int, name: str, verify: bool = True) -> dict[str, np.ndarray]:
        """The arrays of part ``name`` of ``version``; CorruptVersionError on a missing part, a size or
        (``verify``) checksum mismatch."""
        return self._read_part(version, name, verify)[1]

    def _read_part(self, version: int, name: str, verify: bool) -> tuple[dict, dict[str, np.ndarray]]:
        info = self.manifest(version).part(name)
        buf = self._read_bytes(version, info)
        if verify:
            got = hashlib.sha256(buf).hexdigest()
            if got != info.sha256:
                raise CorruptVersionError(
                    version, name, f"fails its checksum (sha256 {got[:12]}..., manifest says {info.sha256[:12]}...)"
                )
        try:
            return partfile.decode(buf)
        except ValueError as exc:
            raise CorruptVersionError(version, name, str(exc)) from None

    def _read_bytes(self, version: int, info: PartInfo) -> bytearray:
        path = self.part_path(version, info.name)
        return self._retrying(f"read {path}", lambda: self._read_bytes_once(version, info, path))

    def _read_bytes_once(self, version: int, info: PartInfo, path: str) -> bytearray:
        try:
            size = self.fs.size(path)
        except FileNotFoundError:
            raise CorruptVersionError(version, info.name, "is missing") from None
        if size != info.bytes:
            raise CorruptVersionError(version, info.name, f"has {size} bytes, the manifest says {info.bytes}")
        buf = bytearray(size)
        with self._open_read(path) as f:
            got = f.readinto(memoryview(buf)) if size else 0
        if got != size:
            raise CorruptVersionError(version, info.name, f"read {got} of {size} bytes")
        return buf

    def verify(self, version: int, checksums: bool = True) -> list[str]:
        """Problems of ``version`` (missing, wrong size, bad checksum); empty when every part is good.
        ``checksums=False`` checks presence and sizes only (no read)."""
        problems = []
        m = self.manifest(version)
        self._read(f"list {self.vdir(version)}", lambda: self.fs.invalidate_cache(self.vdir(version)))
        for info in m.parts:
            path = self.part_path(version, info.name)
            try:  # a read: retried on a transient error like every other (a restart must not fail on one reset)
                problem = self._read(f"verify {path}", lambda p=path, i=info: self._check_part(p, i, checksums))
            except FileNotFoundError:
                problem = f"part {info.name!r}: missing"
            if problem is not None:
                problems.append(problem)
        return problems

    def _check_part(self, path: str, info, checksums: bool) -> str | None:
        """The problem of one part (size, then checksum), None when it is good."""
        size = self.fs.size(path)
        if size != info.bytes:
            return f"part {info.name!r}: {size} bytes, the manifest says {info.bytes}"
        if not checksums:
            return None
        h = hashlib.sha256()
        with self._open_read(path) as f:
            while chunk := f.read(16 << 20):
                h.update(chunk)
        if h.hexdigest() != info.sha256:
            return (
                f"part {info.name!r}: checksum mismatch (sha256 {h.hexdigest()[:12]}..., "
                f"manifest says {info.sha256[:12]}...)"
            )
        return None

    def verify_chain(self, version: int, _memo: dict | None = None) -> list[str]:
        """Problems of ``version`` and of every version its chain needs."""
        try:
            chain = self.chain(version)
        except CorruptVersionError as exc:
            return [str(exc)]
        memo = {} if _memo is None else _memo
        out = []
        for m in chain:
            if m.version not in memo:
                memo[m.version] = self.verify(m.version)
            out += [f"version {m.version}: {p}" for p in memo[m.version]]
        return out

    def latest_valid(self) -> int | None:
        """The newest committed version whose whole chain verifies (each version is read once);
        each skipped version is logged as a warning naming its bad part."""
        memo: dict[int, list[str]] = {}
        for v in reversed(self.versions()):
            problems = self.verify_chain(v, memo)
            if not problems:
                return v
            log.warning("version %d is refused, falling back to an earlier one: %s", v, "; ".join(problems))
        return None

    def materialize(
        self,
        version: int,
        select: "str | Selector",
        keep: Keep | None = None,
        verify: bool = True,
        fields: "Sequence[str] | None" = None,
    ) -> dict[str, np.ndarray]:
        """The merged content of the parts ``select``-ed at ``version``: ``select`` is an fnmatch
        pattern over part names (``"dense"``, ``"ps/shard-*/user"``) or a predicate over PartInfo
        (:func:`table_parts`).

        Keyed parts (``meta["merge"] == "by_id"``) merge across the chain (versions.merge: upsert by
        id, drop ``deleted``); ``keep(ids) -> mask`` filters ids as they are read; ``fields`` limits
        the arrays gathered (e.g. ``("rows",)`` for serving). Other parts come
        from the newest version of the chain that has them (several matches are concatenated
        along axis 0 in name order, then filtered by ``keep`` if they hold ``ids``).
        """
        pick = select if callable(select) else (lambda p, pat=select: fnmatch.fnmatchcase(p.name, pat))
        chain = self.chain(version)
        layers = [(m, sorted((p for p in m.parts if pick(p)), key=lambda p: p.name)) for m in chain]
        found = [p for _, ps in layers for p in ps]
        if not found:
            raise KeyError(f"version {version}: no part matches {select!r} in its chain {[m.version for m in chain]}")
        if any(p.meta.get("merge") == "by_id" for p in found):
            loaded = [[self.read_part(m.version, p.name, verify) for p in ps] for m, ps in layers]
            return merge_keyed(loaded, keep, fields)
        m, ps = [(m, ps) for m, ps in layers if ps][-1]
        arrays = [self.read_part(m.version, p.name, verify) for p in ps]
        out = arrays[0] if len(arrays) == 1 else {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
        if keep is not None and "ids" in out:
            mask = keep(np.asarray(out["ids"]))
            out = {k: v[mask] for k, v in out.items()}
        return out

    def apply(
        self,
        table: Mapping[str, np.ndarray],
        version: int,
        select: "str | Selector",
        keep: Keep | None = None,
        verify: bool = True,
    ) -> dict[str, np.ndarray]:
        """``table`` (the materialised content of ``version``'s parent, e.g. what a serving replica
        holds) with ``version``'s own parts applied: O(rows changed + rows held), no chain read.

        ``table`` may hold only some fields (``{"ids", "rows"}``); the delta's other arrays are
        ignored. For a full ``version`` the result is simply its content.
        """
        m = self.manifest(version)
        pick = select if callable(select) else (lambda p, pat=select: fnmatch.fnmatchcase(p.name, pat))
        parts = [self.read_part(version, p.name, verify) for p in sorted(m.parts, key=lambda p: p.name) if pick(p)]
        fields = [k for k in table if k not in ("ids", "deleted")]
        if m.kind == "full":
            return merge_keyed([parts], keep, fields)
        parts = [{k: v for k, v in p.items() if k in ("ids", "deleted", *fields)} for p in parts]
        return merge_keyed([[dict(table)], parts], keep, fields)

    def groups(self, version: int) -> dict[tuple, list[str]]:
        """The logical groups of ``version``'s chain: ``("table", t)`` / ``("pending", t)`` for parameter-server
        parts (whatever the shard count of each version), ``("part", name)`` for every other part."""
        out: dict[tuple, set] = {}
        for m in self.chain(version):
            for p in m.parts:
                out.setdefault(group_of(p), set()).add(p.name)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def digest(self, version: int, verify: bool = True) -> str:
        """Recompute :func:`versions.model_digest` of ``version`` from its parts.

        Tables: parts with ``meta["role"] == "table"``, grouped by ``meta["table"]`` and merged over
        the chain; dense tensors: the arrays of ``role == "dense"`` parts; other arrays: those of
        parts without a role, named ``"<part>/<array>"``. Parts with ``role == "pending"`` (ids
        waiting for admission, shard-local bookkeeping) are not model content and are left out.
        """
        d = ModelDigest()
        chain = self.chain(version)
        dense: dict[str, np.ndarray] = {}
        extra: dict[str, np.ndarray] = {}
        for (kind, name), _ in self.groups(version).items():
            if kind == "table":
                d.table(name, self.materialize(version, table_parts(name), verify=verify))
            elif kind == "part":
                role = next((p.meta.get("role") for m in reversed(chain) for p in m.parts if p.name == name), None)
                arrays = self.materialize(version, _escape(name), verify=verify)
                if role == "dense":
                    dense.update(arrays)
                else:
                    extra.update({f"{name}/{k}": v for k, v in arrays.items()})
        for k in sorted(dense):
            d.dense(k, dense[k])
        for k in sorted(extra):
            d.array(k, extra[k])
        return d.hexdigest()

    # ---------------------------------------------------------------- writing
    def begin(
        self, kind: str = "full", parent: int | None = None, step: int = 0, meta: Mapping | None = None
    ) -> "VersionWriter":
        """Start writing the next version. A delta needs a committed ``parent``; ``meta`` becomes the
        default of the manifest's ``extra``."""
        if kind not in KINDS:
            raise VersionWriteError(None, f"kind must be one of {list(KINDS)}, got {kind!r}")
        if kind == "delta":
            if parent is None:
                raise VersionWriteError(None, "a delta needs parent=<a committed version>; write a full version first")
            try:
                self.manifest(parent)
            except NoSuchVersionError as exc:
                raise VersionWriteError(None, f"the parent of a delta must be committed: {exc}") from None
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise VersionWriteError(None, f"step must be an integer >= 0, got {step!r}")
        meta = as_json_value(dict(meta or {}), "begin(meta=...)")
        if self._writer.epoch is None:
            self.acquire_writer()  # waits up to writer_wait_s for another writer's lease to lapse
        while True:
            taken = self._version_dirs()
            latest = self.latest()
            floor = max(taken + ([latest] if latest is not None else []) + [0])
            state = self._writer.update(lambda st, floor=floor: self._allocate(st, floor, parent))
            self._writer.epoch, self._writer.renewed = int(state["epoch"]), time.time()
            epoch, version = int(state["epoch"]), int(state["last_version"])
            path = self.vdir(version)
            if self.local:  # mkdir: an exclusive claim even against a writer that predates the lease
                os.makedirs(self.root, exist_ok=True)
                try:
                    os.mkdir(path)
                except FileExistsError:
                    self._writer_done(version, epoch)
                    continue
            break
        began = {
            "version": version,
            "kind": kind,
            "parent": parent,
            "step": int(step),
            "meta": meta,
            "began_at": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "epoch": epoch,
            "holder": self._writer.holder,
        }
        self._write_small(f"{path}/{BEGUN}", json.dumps(began).encode())
        return VersionWriter(self, version, kind, parent, int(step), meta, epoch)

    def _allocate(self, state: dict | None, floor: int, parent: int | None) -> dict:
        """(Inside the writer lease's compare-and-swap) take or renew the lease, then the next version
        number, recorded as in flight."""
        state = self._writer._take(state)
        version = max(int(state.get("last_version", 0)), floor) + 1
        writing = dict(state.get("writing", {}))
        writing[str(version)] = parent
        return {
            **state,
            "last_version": version,
            "writing": writing,
            "renewed_at": time.time(),
            "expires_at": time.time() + self.writer_ttl_s,
        }

    def _writer_done(self, version: int, epoch: int) -> None:
        """Drop ``version`` from the lease's in-flight list (committed or aborted)."""

        def drop(state):
            if state is None or str(version) not in state.get("writing", {}):
                return None
            writing = {k: p for k, p in state["writing"].items() if k != str(version)}
            return {**state, "writing": writing}

        self._writer.update(drop)

    # ------------------------------------------------------------ writer lease
    def acquire_writer(self, *, takeover: bool = False, wait_s: float | None = None) -> dict:
        """Hold this store's writer lease (``begin()`` does it for you); returns the lease state.

        Another holder's lease is waited for up to ``wait_s`` (default ``writer_wait_s``: a crashed
        writer's lease lapses within ``writer_ttl_s``), then WriterFencedError names it.
        ``takeover=True`` takes a live lease over at once (the operator knows the other writer is
        gone): its epoch is bumped, so that writer's later commits are refused."""
        return self._writer.acquire(takeover=takeover, wait_s=wait_s)

    def release_writer(self) -> bool:
        """Give up the writer lease now (it is also released at interpreter exit); False when not held."""
        return self._writer.release()

    def writer_state(self) -> dict | None:
        """The store's writer lease (``WRITER.json``) plus ``live``; None when no writer ever held it."""
        state, _ = self._writer.read()
        return None if state is None else {**state, "live": is_live(state)}

    def part_writer(self, version: int) -> "PartWriter":
        """A picklable writer of ``version``'s parts (begun, not committed) for another process."""
        return PartWriter(self.url, version, self.storage_options)

    def remove_version(self, version: int) -> None:
        """Delete a version directory (manifest first, so it stops being visible before its parts go)."""
        path = self.vdir(version)
        with self._io(f"remove {path}"):
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(f"{path}/{MANIFEST}")
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path, recursive=True)
        self._manifests.pop(int(version), None)

    def gc(self, keep: int = 5, grace_s: float = 3600.0, lease_skew_s: float = LEASE_SKEW_S) -> dict[str, list[int]]:
        """Delete what no one needs; never a version that is, or may still become, committed.

        Kept: the newest ``keep`` committed versions, LATEST, PUBLISHED, PINNED, every version a serving
        lease names (unexpired, or expired less than ``lease_skew_s`` ago: clocks differ between hosts),
        the parent of every version the writer is writing, and the chains all of these need.

        Uncommitted directories are judged from the **writer's state** (``WRITER.json``, read after
        the directories were listed): a version the live writer lists as in flight is never removed;
        one whose manifest appeared meanwhile is committed and kept. The in-flight versions of a writer
        whose lease lapsed are removed only after gc has taken its lease over (the epoch is bumped, so
        that writer's commit is refused), then released. Other uncommitted directories (aborted,
        or of a fenced writer) go once older than ``grace_s``. Temporary files of failed writes
        (``*.tmp-*`` older than a minute) go too.

        Returns ``{"removed": [...], "kept": [...], "removed_uncommitted": [...], "removed_temp": [...]}``.
        """
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ValueError(f"gc keep must be an integer >= 1, got {keep!r}")
        listed = self._version_dirs()  # BEFORE the writer's state: what is listed was begun before it is read
        committed = self.versions()
        writer, in_flight = self._in_flight()
        if writer is not None and not self._writer_live(writer) and writer.get("writing"):
            with contextlib.suppress(WriterFencedError):  # fence the lapsed writer before touching its versions
                self._writer.acquire(wait_s=0)
                self.release_writer()
            writer, in_flight = self._in_flight()
        done = set(in_flight) & set(committed)  # committed, but its writer could not say so (a store error)
        if done:
            with contextlib.suppress(StoreError):
                self._writer.update(
                    lambda st: (
                        None
                        if st is None
                        else {**st, "writing": {k: p for k, p in st.get("writing", {}).items() if int(k) not in done}}
                    )
                )
            in_flight = {v: p for v, p in in_flight.items() if v not in done}
        latest = self.latest()
        t = time.time()
        leased = {lease.version for lease in self.leases(include_expired=True) if t < lease.expires_at + lease_skew_s}
        parents = {p for p in in_flight.values() if p is not None}
        committed_set = set(committed)
        serving = ({self.published(), self.pinned()} | leased | parents) & committed_set
        wanted = set(committed[-keep:]) | ({latest} if latest is not None else set()) | serving
        needed = set()
        for v in wanted:
            try:
                needed |= {m.version for m in self.chain(v)}
            except CorruptVersionError:
                needed.add(v)  # keep what is there; verify reports the gap
        removed = [v for v in committed if v not in needed]
        for v in reversed(removed):  # newest first: a delta goes before its base, so a version a reader
            self.remove_version(v)  # can still see always has its whole chain
        stale = []
        for v in listed:
            if v in committed_set or v in in_flight:
                continue
            with self._io(f"list {self.vdir(v)}"):
                self.fs.invalidate_cache(self.vdir(v))
            if self._exists(f"{self.vdir(v)}/{MANIFEST}"):
                continue  # committed while gc ran
            began = self._began_at(v)
            if began is None or time.time() - began > grace_s:
                self.remove_version(v)
                stale.append(v)
        temp = []
        with contextlib.suppress(OSError, StoreError):
            temp = self.clean_temp_files(
                [self.root, f"{self.root}/{LEASES}", *(self.vdir(v) for v in self._version_dirs())]
            )
        return {"removed": removed, "kept": sorted(needed), "removed_uncommitted": stale, "removed_temp": temp}

    def _in_flight(self) -> tuple[dict | None, dict[int, int | None]]:
        """The writer's state and, when its lease is live, the versions it is writing -> their parents."""
        writer, _ = self._writer.read()
        if not self._writer_live(writer):
            return writer, {}
        return writer, {int(k): (None if p is None else int(p)) for k, p in writer.get("writing", {}).items()}

    def _writer_live(self, writer: dict | None) -> bool:
        """A live lease, or one held by this very process (alive, whatever its clock says)."""
        if writer is not None and writer.get("holder") == self._writer.holder and not writer.get("released"):
            return True
        return is_live(writer)

    def clean_temp_files(self, folders: Sequence[str], older_than_s: float = TMP_GRACE_S) -> list[str]:
        """Remove the temporary files (``*.tmp-*``) of failed writes in ``folders`` (a version folder:
        recursively) that are older than ``older_than_s``. Only a local store has any: elsewhere a write
        is one PUT. Returns the paths removed."""
        if not self.local:
            return []
        out, cutoff = [], time.time() - older_than_s
        for folder in folders:
            if not os.path.isdir(folder):
                continue
            if _VDIR.match(os.path.basename(folder.rstrip("/"))):
                names = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
            else:
                names = [os.path.join(folder, f) for f in os.listdir(folder)]
            for path in names:
                if ".tmp-" not in os.path.basename(path):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if os.path.getmtime(path) < cutoff:
                        os.remove(path)
                        out.append(path)
        return sorted(out)

    def _began_at(self, version: int) -> float | None:
        for name, key in ((ABORTED, "aborted_at"), (BEGUN, "began_at")):
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
                return float(json.loads(self._read_small(f"{self.vdir(version)}/{name}"))[key])
        times = []  # no marker (a crash right after mkdir, or a late part write): its newest file's time
        with contextlib.suppress(Exception):
            for info in self.fs.find(self.vdir(version), detail=True, withdirs=True).values():
                t = info.get("mtime") or info.get("LastModified") or info.get("created")
                if t is not None:
                    times.append(float(t.timestamp() if hasattr(t, "timestamp") else t))
        with contextlib.suppress(Exception):
            info = self.fs.info(self.vdir(version))
            t = info.get("mtime") or info.get("LastModified") or info.get("created")
            if t is not None:
                times.append(float(t.timestamp() if hasattr(t, "timestamp") else t))
        return max(times) if times else None

    def compact(self, version: int, step: int | None = None, extra: Mapping | None = None) -> Manifest:
        """Write a new full version equal to materialising ``version`` (same content, digest, ledger, step).

        Each table becomes one part ``compacted/<table>`` (readers select tables by ``meta``, not by
        name, so any shard count restores from it); other parts are copied from the newest version
        that has them.
        """
        src = self.manifest(version)
        held = self._writer.epoch is not None  # the writer's own compaction keeps its lease
        try:
            return self._compact(src, version, step, extra)
        finally:
            if not held and self._writer.epoch is not None:
                # a one-off compaction (an operator, a helper thread) gives the lease back at once: held on,
                # its renewals would fence the trainer out of its own store for as long as it lives
                with contextlib.suppress(StoreError):
                    self.release_writer()

    def _compact(self, src: Manifest, version: int, step: int | None, extra: Mapping | None) -> Manifest:
        w = self.begin(
            "full",
            parent=version,
            step=src.step if step is None else step,
            meta={**src.extra, **dict(extra or {}), "compacted_from": version},
        )
        try:
            newest = self.latest()  # under the writer lease now: no other writer can commit until we are done
            if newest != version:
                raise VersionWriteError(
                    w.version,
                    f"version {version} is no longer the newest committed version (v{newest} was committed "
                    f"since): its compaction would become the newest version and roll the store back to "
                    f"v{version}'s model and data state; compact v{newest} instead",
                )
            infos = []
            for kind, name in self.groups(version):
                newest = next(p for m in reversed(self.chain(version)) for p in m.parts if group_of(p) == (kind, name))
                if kind == "table":
                    arrays = self.materialize(version, table_parts(name))
                    meta = {**newest.meta, "kind": "full", "rows_after": len(arrays["ids"])}
                    for k in ("shard", "num_shards"):
                        meta.pop(k, None)
                    siblings = [
                        p.meta for m in reversed(self.chain(version)) for p in m.parts if group_of(p) == (kind, name)
                    ]
                    for k in [k for k in meta if k.startswith("ps_")]:  # shard counters: the largest
                        meta[k] = max(int(sm.get(k, 0)) for sm in siblings)
                    infos.append(w.write_part(f"compacted/{name}", arrays, meta))
                elif kind == "pending":
                    arrays = self.materialize(version, table_parts(name, role="pending"))
                    infos.append(w.write_part(f"compacted/{name}.pending", arrays, dict(newest.meta)))
                else:
                    infos.append(w.write_part(name, self.materialize(version, _escape(name)), dict(newest.meta)))
            return w.commit(infos, ledger=src.ledger, model_digest=src.model_digest)
        except BaseException:
            w.abort()
            raise


class VersionWriter:
    """Writes one version: ``write_part`` (or ``part_writer()`` in other processes), then ``commit``
    or ``abort``."""

    def __init__(
        self,
        store: VersionStore,
        version: int,
        kind: str,
        parent: int | None,
        step: int,
        meta: dict,
        epoch: int | None = None,
    ):
        self.store, self.version, self.kind, self.parent, self.step, self.meta = (
            store,
            version,
            kind,
            parent,
            step,
            meta,
        )
        self.epoch = epoch  # the writer lease's epoch this version began under: commit needs it still current
        self.done = False

    def part_writer(self) -> "PartWriter":
        """A picklable writer of this version's parts, for Ray actors writing their own parts."""
        return PartWriter(self.store.url, self.version, self.store.storage_options)

    def write_part(self, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping | None = None) -> PartInfo:
        return write_part(self.store, self.version, name, arrays, meta=meta)

    def digest(self, parts: list[PartInfo]) -> str:
        """The model digest of the version ``parts`` would commit (its parent's chain plus these
        parts), computed from the store: what the manifest's ``model_digest`` should say, without
        shipping any row to this process through Ray. O(rows of the model) reads."""
        store = self.store
        with store._io(f"list {store.vdir(self.version)}"):
            store.fs.invalidate_cache(store.vdir(self.version))  # parts were written by other processes
        store._manifests[self.version] = Manifest(
            version=self.version,
            parent=self.parent,
            kind=self.kind,
            step=self.step,
            committed_at=0.0,
            committed_at_iso="",
            ledger={},
            data_files=(),
            rows=0,
            bytes=0,
            model_digest="",
            parts=tuple(parts),
        )
        try:
            return store.digest(self.version)
        finally:
            store._manifests.pop(self.version, None)

    def commit(
        self,
        parts: list[PartInfo],
        ledger: Mapping | None = None,
        model_digest: str = "",
        extra: Mapping | None = None,
        rows: int | None = None,
    ) -> Manifest:
        """Check every part, write MANIFEST.json, then LATEST. Returns the manifest."""
        store, v = self.store, self.version
        if self.done:
            raise VersionWriteError(v, "this writer already committed or aborted")
        names = [p.name for p in parts]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise VersionWriteError(v, f"parts listed twice: {dup}")
        if not parts:
            raise VersionWriteError(v, "no parts: a version needs at least one part")
        with store._io(f"list {store.vdir(v)}"):
            store.fs.invalidate_cache(store.vdir(v))  # parts were written by other processes
        if store._exists(f"{store.vdir(v)}/{MANIFEST}"):
            raise VersionWriteError(v, "it is already committed")
        for p in parts:
            path = store.part_path(v, p.name)
            with store._io(f"check {path}"):
                try:
                    size = store.fs.size(path)
                except FileNotFoundError:
                    if self.epoch is not None:
                        store._writer.check(self.epoch, v)  # a fenced writer's parts may be gc'd: say fenced
                    raise VersionWriteError(v, f"part {p.name!r} was not written (no {path})") from None
            if size != p.bytes:
                raise VersionWriteError(v, f"part {p.name!r} has {size} bytes on storage, {p.bytes} were written")
        if self.kind == "delta":
            try:
                store.manifest(self.parent)
            except NoSuchVersionError:
                raise VersionWriteError(v, f"its parent {self.parent} is no longer committed (gc?)") from None
        ledger = as_json_value(dict(ledger or {}), "ledger")
        if self.epoch is not None:  # fencing: refused if another writer took the store over since begin()
            store._writer.check(self.epoch, v)
        t, iso = now()
        manifest = Manifest(
            version=v,
            parent=self.parent,
            kind=self.kind,
            step=self.step,
            committed_at=t,
            committed_at_iso=iso,
            ledger=ledger,
            data_files=data_files_of(ledger),
            rows=int(rows) if rows is not None else rows_of(parts, self.kind),
            bytes=sum(p.bytes for p in parts),
            model_digest=str(model_digest),
            parts=tuple(parts),
            extra=as_json_value({**self.meta, **dict(extra or {})}, "extra"),
        )
        store._write_small(f"{store.vdir(v)}/{MANIFEST}", manifest.to_json().encode())
        self.done = True
        current = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            current = int(store._read_small(f"{store.root}/{LATEST}").decode().strip())
        if current is None or v > current:
            store._write_small(f"{store.root}/{LATEST}", f"{v}\n".encode())
        with contextlib.suppress(Exception):
            store.fs.rm_file(f"{store.vdir(v)}/{BEGUN}")
        store._manifests[v] = manifest
        with contextlib.suppress(FileNotFoundError, StoreError):  # after the manifest: the version is committed
            store._writer_done(v, self.epoch)
        with contextlib.suppress(OSError, StoreError):
            store.clean_temp_files([store.root, f"{store.root}/{LEASES}", store.vdir(v)])
        return manifest

    def abort(self) -> None:
        """Remove this version's parts (nothing of it was visible). The directory keeps a small
        ``_ABORTED`` marker until gc, so the number is not reused while a late writer might still
        write a part of it."""
        if self.done:
            return
        self.done = True
        store = self.store
        store.remove_version(self.version)
        store._write_small(f"{store.vdir(self.version)}/{ABORTED}", json.dumps({"aborted_at": time.time()}).encode())
        with contextlib.suppress(FileNotFoundError, StoreError):
            store._writer_done(self.version, self.epoch)


class PartWriter:
    """Picklable: writes parts of one version of the store at ``url`` (from any process)."""

    def __init__(self, url: str, version: int, storage_options: Mapping | None = None) -> None:
        self.url, self.version, self.storage_options = url, int(version), dict(storage_options or {})

    def write(self, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping | None = None) -> PartInfo:
        return write_part(self.url, self.version, name, arrays, self.storage_options, meta)


def write_part(
    store: VersionStore | str,
    version: int,
    name: str,
    arrays: Mapping[str, np.ndarray],
    storage_options: Mapping | None = None,
    meta: Mapping | None = None,
) -> PartInfo:
    """Write part ``name`` of (uncommitted) ``version``; returns its PartInfo for ``commit``.

    ``store`` is a VersionStore or its URL. ``rows`` in the PartInfo is ``len(arrays["ids"])``
    for a keyed part, else 0. Locally the file is written under a temporary name, fsynced and
    renamed; on an object store one upload is one atomic object.
    """
    if not isinstance(store, VersionStore):
        store = VersionStore(store, storage_options)
    check_part_name(name)
    meta = as_json_value(dict(meta or {}), f"meta of part {name!r}")
    path = store.part_path(version, name)

    def write_once() -> tuple[str, int]:
        if store.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
            try:
                with open(tmp, "wb") as f:
                    got = partfile.write(f, arrays, meta)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # a failed try leaves no temp file behind
                raise
            return got
        with store.fs.open(path, "wb") as f:
            return partfile.write(f, arrays, meta)

    sha, size = store._retrying(f"write {path}", write_once)  # one whole object: a second try rewrites it
    rows = len(arrays["ids"]) if "ids" in arrays else 0
    return PartInfo(name=name, sha256=sha, bytes=size, rows=int(rows), meta=meta)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _escape(name: str) -> str:
    return re.sub(r"([*?\[\]])", r"[\1]", name)


Selector = "Callable[[PartInfo], bool]"


def table_parts(table: str, role: str = "table"):
    """Selector of the parameter-server parts of ``table`` (any shard count, any part name)."""

    def select(p: PartInfo) -> bool:
        return p.meta.get("role") == role and p.meta.get("table") == table

    select.__name__ = f"{role}_parts({table!r})"
    return select


def group_of(p: PartInfo) -> tuple[str, str]:
    """The logical group of a part (see :meth:`VersionStore.groups`)."""
    role = p.meta.get("role")
    if role in ("table", "pending") and "table" in p.meta:
        return (role, str(p.meta["table"]))
    return ("part", p.name)
