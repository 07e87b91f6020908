"""Tables too large for one replica: read-only shards restored from a version, read through a hot-row cache.

A table named in ``ServeConfig.remote_tables`` is not held by the scoring replicas. It is split
over ``table_shards`` read-only shards by the parameter server's own routing
(``paramserver.shard_of``); each shard restores only its ids from the version store (the
``keep`` filter as parts are read) and follows versions with the deltas, as a replica does::

    replica ── RemoteTable(version v) ── HotRowCache ──miss──► ShardSlice k of n  (ids with shard_of(id, n) == k)
                                                               versions {v-1: FrozenTable, v: FrozenTable}

Every lookup names its version, and a shard serves any version a replica asks for that is still in
the store: one it does not hold is loaded on demand (a rollback target, a lagging replica, a
restarted shard). It keeps every version a serving lease names (``VersionStore.leases``) and, up to
``keep_versions`` in all, the most recently asked-for others (least recently used evicted first),
so a request is answered by one version even while the shards load the next one. Unknown ids get the same
cold-start row as in a local table (:class:`serving.tables.FrozenTable`).

The replica's cache for version v+1 starts as v's cache minus the ids v+1 changed
(:meth:`ShardSlice.load` returns them), so following a stream of small deltas keeps it warm.

This module is plain Python (tested without Ray); :mod:`serving.app` hosts a ``ShardSlice`` in a
Ray Serve deployment per shard and hands the replicas a fetch function over their handles.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from paramserver.config import PSConfig, TableConfig
from paramserver.sharding import group_by_shard, shard_of
from serving.cache import HotRowCache
from serving.errors import ServingError
from serving.tables import FrozenTable
from versions import VersionStore, table_parts
from versions.errors import CorruptVersionError, NoSuchVersionError
from versions.merge import merge_keyed

log = logging.getLogger(__name__)

# fetch(version, table, {shard: ids}) -> {shard: (rows float32 [n, dim], known bool [n])}
Fetch = Callable[[int, str, Mapping[int, np.ndarray]], Mapping[int, tuple[np.ndarray, np.ndarray]]]


class ShardSlice:
    """Shard ``index`` of ``num_shards`` of the ``tables`` of a version store, read-only.

    >>> s = ShardSlice(VersionStore("runs/r1/versions"), ps_cfg, ("user",), 0, 2)   # doctest: +SKIP
    >>> s.load(7)                 # {"user": ids changed since the version loaded before}, or None
    >>> s.lookup(7, "user", np.array([3, 11]))   # (rows, known) of this shard's ids
    """

    def __init__(
        self,
        store: VersionStore,
        ps_cfg: PSConfig,
        tables: Sequence[str],
        index: int,
        num_shards: int,
        keep_versions: int = 3,
    ) -> None:
        if not 0 <= index < num_shards:
            raise ValueError(f"shard index {index} is not in [0, {num_shards})")
        by_name = {t.name: t for t in ps_cfg.tables}
        unknown = sorted(set(tables) - set(by_name))
        if unknown:
            raise ValueError(f"remote tables {unknown} are not tables of the model ({sorted(by_name)})")
        self.store, self.ps_cfg = store, ps_cfg
        self.cfgs: dict[str, TableConfig] = {t: by_name[t] for t in tables}
        self.index, self.num_shards, self.keep_versions = index, num_shards, max(2, keep_versions)
        self._versions: dict[int, dict[str, FrozenTable]] = {}
        self._used: dict[int, float] = {}  # version -> when a replica last asked for it (load or lookup)
        self._changed: dict[int, tuple[int, dict[str, np.ndarray] | None]] = {}  # v -> (loaded on, changed ids)
        self._lock = threading.Lock()

    def _keep(self, ids: np.ndarray) -> np.ndarray:
        return shard_of(ids, self.num_shards) == self.index

    @property
    def versions(self) -> list[int]:
        return sorted(self._versions)

    def rows_held(self, version: int) -> int:
        return sum(len(t) for t in self._versions.get(version, {}).values())

    def load(self, version: int, since: int | None = None) -> dict[str, np.ndarray] | None:
        """Hold ``version`` (deltas applied to the newest held version of its chain, else its whole
        chain read); return the ids of each table changed after ``since`` (None: unknown, e.g. a
        full version in between or ``since`` never held here)."""
        with self._lock:
            self._hold(version)
            return self._changes(since, version)

    def _hold(self, version: int) -> dict[str, FrozenTable]:
        """The tables of ``version``, loaded on demand (the caller holds the lock)."""
        self._used[version] = time.monotonic()
        held = self._versions.get(version)
        if held is None:
            self._load(version)
            held = self._versions[version]
            self._evict(keep={version})
        return held

    def _evict(self, keep: set[int]) -> None:
        """Keep ``keep`` (the version just loaded), every version a serving lease names, and the most
        recently asked-for others up to ``keep_versions`` in all: the least recently used go first
        (not the oldest: a rollback target or a lagging replica's version stays while it is used)."""
        try:
            leased = {lease.version for lease in self.store.leases()}
        except Exception as exc:
            log.warning(
                "shard %d/%d: serving leases unreadable (%s): evicting by use only", self.index, self.num_shards, exc
            )
            leased = set()
        protected = (keep | leased) & set(self._versions)
        others = sorted((v for v in self._versions if v not in protected), key=lambda v: self._used.get(v, 0.0))
        room = max(0, self.keep_versions - len(protected))
        for old in others[: max(0, len(others) - room)]:
            del self._versions[old]
            self._used.pop(old, None)
        for old in [v for v in self._changed if v not in self._versions]:
            self._changed.pop(old, None)

    def _load(self, version: int) -> None:
        chain = self.store.chain(version)
        numbers = [m.version for m in chain]
        base = max((v for v in self._versions if v in numbers and v < version), default=None)
        admit, fp16 = self.ps_cfg.admission_threshold <= 1, self.ps_cfg.weights_dtype == "fp16"
        out: dict[str, FrozenTable] = {}
        changed: dict[str, np.ndarray] | None = {} if base is not None else None
        for name, cfg in self.cfgs.items():
            select = table_parts(name)
            if base is None:
                try:
                    arrays = self.store.materialize(version, select, keep=self._keep, fields=("rows",))
                except KeyError:  # no row of this table yet
                    arrays = {"ids": np.zeros(0, np.int64), "rows": np.zeros((0, cfg.dim), np.float32)}
            else:
                held = self._versions[base][name]
                arrays = {"ids": held.ids, "rows": held.rows.numpy()}
                moved = []
                for m in chain[numbers.index(base) + 1 :]:
                    parts = [
                        self.store.read_part(m.version, p.name)
                        for p in sorted(m.parts, key=lambda p: p.name)
                        if select(p)
                    ]
                    if not parts:
                        continue
                    if m.kind == "full":
                        changed = None  # everything may have changed: the replicas start their caches cold
                    parts = [{k: v for k, v in p.items() if k in ("ids", "deleted", "rows")} for p in parts]
                    if changed is not None:
                        moved += [
                            ids[self._keep(ids)]
                            for p in parts
                            for k in ("ids", "deleted")
                            if k in p and len(ids := np.asarray(p[k], np.int64))
                        ]
                    layers = [parts] if m.kind == "full" else [[arrays], parts]
                    arrays = merge_keyed(layers, self._keep, ("rows",))
                if changed is not None:
                    changed[name] = np.unique(np.concatenate(moved)) if moved else np.zeros(0, np.int64)
            out[name] = FrozenTable.build(cfg, arrays["ids"], arrays["rows"], self.ps_cfg.seed, admit, fp16)
        self._versions[version] = out
        self._changed[version] = (base, changed)
        log.info(
            "shard %d/%d holds version %d (%d rows%s)",
            self.index,
            self.num_shards,
            version,
            self.rows_held(version),
            f", deltas on {base}" if base is not None else "",
        )

    def _gone(self, version: int) -> bool:
        """Whether ``version`` or a version of its chain is no longer committed in the store (a fresh listing)."""
        try:
            committed = set(self.store.versions())
            v = version
            for _ in range(len(committed) + 1):  # walk the parents: a delta needs every version down to a full one
                if v not in committed:
                    return True
                m = self.store.manifest(v)
                if m.kind == "full" or m.parent is None:
                    return False
                v = m.parent
            return False
        except NoSuchVersionError:
            return True
        except Exception:  # the store cannot say now: not known to be gone
            return False

    def _changes(self, since: int | None, version: int) -> dict[str, np.ndarray] | None:
        if since is None or since >= version:
            return None
        acc: dict[str, list[np.ndarray]] = {t: [] for t in self.cfgs}
        v = version
        while v != since:  # walk back along the load history: version <- base <- ... <- since
            if v not in self._changed:
                return None
            base, changed = self._changed[v]
            if base is None or changed is None or base < since:
                return None
            for t, ids in changed.items():
                acc[t].append(ids)
            v = base
        return {t: np.unique(np.concatenate(a)) if a else np.zeros(0, np.int64) for t, a in acc.items()}

    def lookup(self, version: int, table: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows float32 [n, dim], known [n]) of ``ids`` (all routed to this shard) at ``version``.

        A version this shard must load but that gc removed from the store meanwhile (a request still in flight
        on a replica's previous model, reaching a shard restarted since) raises :class:`VersionGoneError`: the
        replica answers UNAVAILABLE and the client's retry is served by its current version. A version still
        in the store whose parts fail to read stays a CorruptVersionError."""
        held = self._versions.get(version)
        if held is None:  # a version this shard does not hold (a rollback, a lagging replica): load it
            with self._lock:
                try:
                    held = self._hold(version)
                except (CorruptVersionError, NoSuchVersionError) as exc:
                    if self._gone(version):
                        raise VersionGoneError(version, self.store.url) from exc
                    raise
        else:
            self._used[version] = time.monotonic()
        if table not in held:
            raise KeyError(f"table {table!r} is not served by the read-only shards (they hold {sorted(held)})")
        return held[table].lookup(np.asarray(ids, np.int64))


class VersionGoneError(LookupError):
    """A shard was asked for a version (or a version of its chain) that gc has removed from the store since the
    asking replica loaded it: transient for the client (its retry reaches the replica's current version)."""

    def __init__(self, version: int, store_url: str = "") -> None:
        super().__init__(version, store_url)
        self.version, self.store_url = version, store_url

    def __str__(self) -> str:
        return (
            f"version {self.version} is no longer in the store {self.store_url} (gc removed it while a request "
            "on it was in flight): retry, the replica serves a newer version"
        )


class ShardUnavailableError(ServingError):
    """A table shard died, restarts, or failed to read the store (UNAVAILABLE: the caller retries)."""

    code = "UNAVAILABLE"


# Ray's errors for an actor that died or cannot be reached (matched by name: this module runs without Ray)
RAY_UNAVAILABLE = frozenset(
    {"RayActorError", "ActorDiedError", "ActorUnavailableError", "ActorUnschedulableError", "NodeDiedError"}
)


def shard_unavailable(exc: BaseException) -> bool:
    """True when a shard call failed for a transient reason: the shard's actor died or is unreachable (a kill,
    a restart), the shard's store read failed (``OSError``: ``StoreUnavailableError``, a connection reset;
    Ray re-raises a task's exception as a subclass of its type), or the version was removed by gc while the
    request was in flight (:class:`VersionGoneError`). A checksum, format or lookup error is not."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & (RAY_UNAVAILABLE | {"VersionGoneError"})) or isinstance(exc, OSError)


@dataclasses.dataclass
class RemoteTable:
    """One table of one version, read through the shards and the replica's hot-row cache.

    It answers like a :class:`serving.tables.FrozenTable` (``cfg``, ``lookup``) so the training
    core's scoring code path is the same whether a table is local or remote.
    """

    cfg: TableConfig
    version: int
    num_shards: int
    fetch: Fetch
    cache: HotRowCache

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Concurrent requests share the cache: ``get`` and ``put`` are each atomic (the cache's lock),
        the shard fetch runs outside any lock; two requests missing the same id both fetch it and
        put the same row of this version."""
        ids = np.asarray(ids, np.int64)
        uniq, inverse = np.unique(ids, return_inverse=True)
        rows, known, miss = self.cache.get(uniq)
        if len(miss):
            missing = uniq[miss]
            groups = group_by_shard(missing, self.num_shards)
            asked = {s: missing[g] for s, g in enumerate(groups) if len(g)}
            try:
                got = self.fetch(self.version, self.cfg.name, asked)
            except Exception as exc:
                if shard_unavailable(exc):
                    raise ShardUnavailableError(
                        f"a table shard of {self.cfg.name!r} could not answer for version {self.version} "
                        f"({type(exc).__name__}: {str(exc)[:200]}): it is restarting or its store failed; retry"
                    ) from exc
                raise
            for s, g in enumerate(groups):
                if len(g):
                    r, k = got[s]
                    rows[miss[g]] = r
                    known[miss[g]] = k
            self.cache.put(missing, rows[miss], known[miss])
        return rows[inverse], known[inverse]


class RemoteTables:
    """The remote side of a replica: opens each version's :class:`RemoteTable` s, caches carried over.

    ``load(version, since) -> {table: changed ids} | None`` asks every shard to hold ``version``
    (merged over shards); ``fetch`` reads rows. Both are the Ray calls :mod:`serving.app` provides.
    """

    def __init__(
        self,
        tables: Sequence[str],
        num_shards: int,
        cache_rows: int,
        load: Callable[[int, int | None], dict[str, np.ndarray] | None],
        fetch: Fetch,
    ) -> None:
        self.names = tuple(tables)
        self.num_shards, self.cache_rows = num_shards, cache_rows
        self._load, self._fetch = load, fetch

    def open(
        self, ps_cfg: PSConfig, version: int, previous: Mapping[str, RemoteTable] | None = None
    ) -> dict[str, RemoteTable]:
        since = next(iter(previous.values())).version if previous else None
        changed = self._load(version, since)
        by_name = {t.name: t for t in ps_cfg.tables}
        out = {}
        for name in self.names:
            cfg = by_name[name]
            old = (previous or {}).get(name)
            if old is not None and old.cfg == cfg:
                cache = old.cache.carried(None if changed is None else changed.get(name))
            else:
                cache = HotRowCache(self.cache_rows, cfg.dim)
            out[name] = RemoteTable(cfg, version, self.num_shards, self._fetch, cache)
        return out


def merge_changes(per_shard: Sequence[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray] | None:
    """The union over shards of :meth:`ShardSlice.load` answers (None if any shard could not say)."""
    if any(c is None for c in per_shard):
        return None
    names = {t for c in per_shard for t in c}
    return {t: np.concatenate([c[t] for c in per_shard if t in c]) for t in names}
