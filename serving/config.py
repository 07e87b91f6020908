"""Typed, frozen settings of serving; every error says what to fix. THE place where every serving
setting and its default is defined: the ``serve:`` section of the run config tree
(:class:`cluster.config.RunConfig`, ``freshrec config show``), the ``freshrec serve`` flags,
``serving.app:app_from_args`` (the Ray Serve config's ``args``), the grpcio launcher and Search's replica
all take their defaults from here (the FAISS index's from :class:`serving.ann.AnnOptions`).

>>> ServeConfig(store_url="runs/r1/versions", poll_interval_s=0.1).limits.max_candidates
1000
>>> ServeConfig.from_dict({"retrieve": 50, "limits": {"max_k": 20}}).limits.max_k
20
"""

from __future__ import annotations

import dataclasses
from typing import Any

from common.config import ConfigError, check_keys
from serving.ann import AnnOptions


@dataclasses.dataclass(frozen=True)
class RetrievalOptions:
    """Recommend's candidate retrieval: exact inner product up to ``ann_above`` items, else a FAISS
    IVF index (:mod:`serving.ann`) with ``ann`` settings. The one definition of these defaults
    (``ServeConfig.ann_above`` / ``ann_nprobe`` and the ``serve`` flags take theirs from here)."""

    ann_above: int = 1_000_000
    ann: AnnOptions = AnnOptions()


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a request may ask for; anything beyond is INVALID_ARGUMENT (the replica keeps serving).

    max_candidates: candidates of one Score call. max_k: items of one Recommend call.
    max_retrieve: candidates Recommend retrieves before ranking. max_request_bytes: the
    serialised request: the transports refuse a larger one before parsing it (RESOURCE_EXHAUSTED: the
    grpcio host's max_receive_message_length, the Serve proxy's RAY_SERVE_GRPC_MAX_MESSAGE_SIZE); the
    service's own check answers INVALID_ARGUMENT for in-process callers.
    max_exclude: excluded items of one Recommend call.
    """

    max_candidates: int = 1000
    max_k: int = 1000
    max_retrieve: int = 5000
    max_request_bytes: int = 1 << 20
    max_exclude: int = 10_000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"serve.limits.{f.name} must be an integer >= 1, got {v!r}")
        if self.max_retrieve < self.max_k:
            raise ConfigError(f"serve.limits.max_retrieve ({self.max_retrieve}) must be >= max_k ({self.max_k})")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """One replica's settings (Ray Serve passes them as the deployment's init argument).

    store_url / storage_options: the version store (``RUN_DIR/versions``, ``s3://...``); None in a run
    config (``freshrec serve --run-dir DIR`` / ``--store URL`` give it); a replica refuses to start without.
    pin_version: serve exactly this version (rollback) instead of following the newest.
    poll_interval_s: how often the replica looks for a newer committed version.
    catalogue: data files (the spec's format) whose item-side columns (e.g. category_id) give
    each item's features for Recommend and for Score requests that leave them out.
    user_feature / item_feature: the spec's sparse features that name the user and the item
    (None: the feature called ``user`` / ``item``, or whose column starts with ``user`` / ``item``).
    retrieve: candidates Recommend retrieves by inner product before the full model ranks them.
    torch_threads: intra-op threads of the replica's torch (1: requests run side by side).
    metrics_path: the run's ``metrics.jsonl`` (progressive validation per data file) for ModelInfo.
    ann_above / ann_nprobe: Recommend retrieves exactly up to ``ann_above`` items, above that with a
    FAISS IVF index (:mod:`serving.ann`) scanning ``ann_nprobe`` inverted lists per query.
    remote_tables: tables too large for one replica, read through ``table_shards`` read-only shards
    restored from the version (:mod:`serving.shards`) with a hot-row cache of ``cache_rows`` rows
    (a power of two) per table in each replica. Keep the item table local: retrieval needs its rows.
    replicas / grpc_port / host: the application, not one replica: scorer replicas, the Serve proxy's gRPC
    port and its HTTP bind address (127.0.0.1: this machine only; Ray 2.60's gRPC proxy binds every
    interface whatever it says).
    max_ongoing_requests: requests one scorer replica accepts at a time (Ray Serve's deployment option;
    more wait in the proxy's queue).
    score_batch_size / score_batch_wait_s: 1 (default): each Score request is scored alone. Above 1: Score
    requests that arrive within ``score_batch_wait_s`` of each other are scored together, up to this many
    (Ray Serve's ``@serve.batch``), in one forward: the fixed cost of a forward is paid once per batch, but a
    request waits up to ``score_batch_wait_s`` for company, and its scores come from a forward over other
    requests' rows too: equal to scoring it alone up to float rounding (about 1e-7), not bit for bit.
    access_log: Ray Serve's access log line per request, in the replicas and the proxy (off by default: a
    formatted line and a file write per request on the request path; freshrec's own request metrics count
    every request by method and code).
    user_code_thread: False (default): a Scorer replica runs the request methods on Ray Serve's own loop
    (``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0`` in the replica's runtime_env): no hop between two loops per
    request (a cross-thread future and a GIL hand-off each way, ~10% of the replica's samples), at the cost that
    a computing request holds up Ray Serve's own request handling meanwhile (the methods compute 1-5 ms without
    awaiting either way). True: Ray Serve's default, the methods on an event loop of their own thread.
    request_spans: record per-stage durations of every request in the replica (validate, convert, features,
    retrieval, forward, respond, telemetry; the handler and the arrival lag from the client's send time) and
    the CPU of the replica's threads, for ``bench serve --replica-perf`` (off by default: a few timer reads
    per request, and up to 100,000 floats per stage held until read).
    """

    store_url: str | None = None
    storage_options: dict | None = None
    pin_version: int | None = None
    poll_interval_s: float = 0.2
    catalogue: tuple[str, ...] = ()
    user_feature: str | None = None
    item_feature: str | None = None
    retrieve: int = 200
    torch_threads: int = 1
    metrics_path: str | None = None
    limits: Limits = Limits()
    ann_above: int = RetrievalOptions.ann_above
    ann_nprobe: int = AnnOptions.nprobe
    remote_tables: tuple[str, ...] = ()
    table_shards: int = 2
    cache_rows: int = 1 << 16
    replicas: int = 1
    grpc_port: int = 9000
    host: str = "127.0.0.1"
    max_ongoing_requests: int = 64
    score_batch_size: int = 1
    score_batch_wait_s: float = 0.002
    request_spans: bool = False
    access_log: bool = False
    user_code_thread: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.catalogue, str):
            object.__setattr__(self, "catalogue", (self.catalogue,))
        if isinstance(self.remote_tables, str):
            object.__setattr__(self, "remote_tables", tuple(t.strip() for t in self.remote_tables.split(",") if t))
        for name in ("catalogue", "remote_tables"):
            if not isinstance(getattr(self, name), (list, tuple)):
                raise ConfigError(f"serve.{name} must be a list, got {getattr(self, name)!r}")
        object.__setattr__(self, "catalogue", tuple(str(p) for p in self.catalogue))
        if isinstance(self.limits, dict):
            check_keys(Limits, self.limits, "serve.limits")
            object.__setattr__(self, "limits", Limits(**self.limits))
        if not isinstance(self.limits, Limits):
            raise ConfigError(f"serve.limits must be a mapping of limits, got {self.limits!r}")
        if self.store_url is not None and (not isinstance(self.store_url, str) or not self.store_url):
            raise ConfigError(
                f"serve.store_url must be a path or URL (or null), got {self.store_url!r}: pass --store URL or --run-dir DIR"
            )
        if self.storage_options is not None and not isinstance(self.storage_options, dict):
            raise ConfigError(
                f"serve.storage_options must be a mapping of fsspec options, got {self.storage_options!r}"
            )
        for name in ("user_feature", "item_feature", "metrics_path"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"serve.{name} must be a string or null, got {v!r}")
        pin = self.pin_version
        if pin is not None and (not isinstance(pin, int) or isinstance(pin, bool) or pin < 1):
            raise ConfigError(f"serve.pin_version must be a version number >= 1 or None, got {self.pin_version!r}")
        if not _seconds_ok(self.poll_interval_s):
            raise ConfigError(f"serve.poll_interval_s must be in [0.01, 3600] seconds, got {self.poll_interval_s!r}")
        if (
            not isinstance(self.retrieve, int)
            or isinstance(self.retrieve, bool)
            or not 1 <= self.retrieve <= self.limits.max_retrieve
        ):
            raise ConfigError(f"serve.retrieve must be in [1, {self.limits.max_retrieve}], got {self.retrieve!r}")
        for name in ("ann_above", "ann_nprobe"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"serve.{name} must be an integer >= 1, got {v!r}")
        object.__setattr__(self, "remote_tables", tuple(str(t) for t in self.remote_tables))
        if len(set(self.remote_tables)) != len(self.remote_tables):
            raise ConfigError(f"serve.remote_tables names a table twice: {list(self.remote_tables)}")
        if (
            not isinstance(self.table_shards, int)
            or isinstance(self.table_shards, bool)
            or not 1 <= self.table_shards <= 256
        ):
            raise ConfigError(f"serve.table_shards must be an integer in [1, 256], got {self.table_shards!r}")
        c = self.cache_rows
        if not isinstance(c, int) or isinstance(c, bool) or c < 1 or c & (c - 1):
            raise ConfigError(f"serve.cache_rows must be a power of two >= 1 (e.g. 65536), got {c!r}")
        for name in ("torch_threads", "replicas", "max_ongoing_requests", "score_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"serve.{name} must be an integer >= 1, got {v!r}")
        w = self.score_batch_wait_s
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 <= w <= 1:
            raise ConfigError(f"serve.score_batch_wait_s must be in [0, 1] seconds, got {w!r}")
        if self.score_batch_size > 1 and self.remote_tables:
            raise ConfigError(
                "serve.score_batch_size > 1 needs every table in the replica: remote_tables are read per request "
                "(set score_batch_size: 1, or serve without remote_tables)"
            )
        if self.score_batch_size > self.max_ongoing_requests:
            raise ConfigError(
                f"serve.score_batch_size ({self.score_batch_size}) must be <= serve.max_ongoing_requests "
                f"({self.max_ongoing_requests}): a replica never holds more requests than that to batch"
            )
        for name in ("request_spans", "access_log", "user_code_thread"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"serve.{name} must be true or false, got {getattr(self, name)!r}")
        g = self.grpc_port
        if not isinstance(g, int) or isinstance(g, bool) or not 0 < g < 65536:
            raise ConfigError(f"serve.grpc_port must be a TCP port in [1, 65535], got {g!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"serve.host must be an IP address to bind (127.0.0.1, 0.0.0.0), got {self.host!r}")

    def replace(self, **changes) -> "ServeConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "serve") -> "ServeConfig":
        """Build from a YAML mapping (a run config's ``serve:`` section), refusing unknown keys (named)."""
        check_keys(cls, raw, where)
        try:
            return cls(**raw)
        except TypeError as exc:  # e.g. a list where a number belongs
            raise ConfigError(f"{where}: {exc}") from None

    def require_store(self) -> str:
        """The version store a replica follows; ConfigError when the config names none."""
        if not self.store_url:
            raise ConfigError(
                "serve.store_url is not set: pass --store URL or --run-dir DIR (or set serve.store_url in the run YAML)"
            )
        return self.store_url

    @property
    def retrieval(self) -> RetrievalOptions:
        """Recommend's retrieval settings of this replica."""
        return RetrievalOptions(self.ann_above, dataclasses.replace(AnnOptions(), nprobe=self.ann_nprobe))


@dataclasses.dataclass(frozen=True)
class FollowSettings:
    """What Ray Serve's ``user_config`` may change on a running replica (never weights).

    >>> FollowSettings.from_user_config({"pin_version": 3})
    FollowSettings(pin_version=3, poll_interval_s=None)
    """

    pin_version: int | None = None  # None: follow the newest committed version
    poll_interval_s: float | None = None  # None: no change (the replica keeps ServeConfig.poll_interval_s)

    @classmethod
    def from_user_config(cls, raw: dict | None) -> "FollowSettings":
        raw = dict(raw or {})
        unknown = sorted(set(raw) - {"pin_version", "poll_interval_s"})
        if unknown:
            raise ConfigError(f"serve user_config: unknown key(s) {unknown}; allowed: pin_version, poll_interval_s")
        pin = raw.get("pin_version")
        if pin is not None and (not isinstance(pin, int) or isinstance(pin, bool) or pin < 1):
            raise ConfigError(f"serve user_config: pin_version must be a version >= 1 or null, got {pin!r}")
        poll = raw.get("poll_interval_s")
        if poll is not None and not _seconds_ok(poll):
            raise ConfigError(f"serve user_config: poll_interval_s must be in [0.01, 3600], got {poll!r}")
        return cls(pin, None if poll is None else float(poll))


def _seconds_ok(v: Any) -> bool:
    """A poll interval: a number of seconds in [0.01, 3600]."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.01 <= v <= 3600
