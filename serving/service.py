"""The serving logic behind the gRPC methods, without Ray or a server: messages in, messages out.

:class:`ScoringService` turns ``ScoreRequest`` / ``RecommendRequest`` / ``ModelInfoRequest``
into responses with the model the follower serves at the moment the request starts (one
version per answer). Every check of a request raises :class:`serving.errors.InvalidRequestError`
with a message naming the field; the transports (the Ray Serve deployment in
:mod:`serving.app`, the plain grpcio server in :mod:`serving.grpc_server`) answer it as
INVALID_ARGUMENT and go on serving.

    svc = ScoringService(ServeConfig(store_url="runs/r1/versions")).start()
    req = pb.ScoreRequest()
    req.context["user_id"].id = 7
    req.candidate_columns["item_id"].ids.extend([42, 9])
    svc.score(req)   # ScoreResponse(scores=[0.031, 0.012], model_version=12)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import time

import numpy as np
import pyarrow as pa
import torch

from serving.catalogue import ItemCatalogue
from serving.config import FollowSettings, ServeConfig
from serving.errors import InvalidRequestError, NotReadyError, ServingError, UnsupportedError, VersionMismatchError
from serving.follower import LeaseSettings, VersionFollower
from serving.model import ServableModel, VersionInfo, load_model
from serving.run_metrics import validation_metrics
from serving.telemetry import ReplicaTelemetry
from serving.wire import pb
from trainer.data.batch import EventBatch
from versions import VersionStore


class RequestSpans:
    """Where a replica's time goes, per request stage (``serve.request_spans``): durations in seconds per stage
    (``validate``, ``convert``, ``features``, ``retrieval``, ``forward``, ``respond``, ``telemetry``, and what the
    transport adds: ``handler`` and ``arrival``), at most ``cap`` per stage; :meth:`summary` gives count, mean,
    p50, p99 and total per stage (and forgets them with ``reset``)."""

    def __init__(self, cap: int = 100_000) -> None:
        self.cap = cap
        self._d: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        got = self._d.get(stage)
        if got is None:
            with self._lock:
                got = self._d.setdefault(stage, [])
        if len(got) < self.cap:
            got.append(seconds)

    def summary(self, reset: bool = False) -> dict:
        with self._lock:
            d = self._d
            if reset:
                self._d = {}
        out = {}
        for stage, vals in d.items():
            a = np.asarray(list(vals), np.float64) * 1e3
            if len(a):
                out[stage] = {
                    "n": len(a),
                    "mean_ms": float(a.mean()),
                    "p50_ms": float(np.percentile(a, 50)),
                    "p99_ms": float(np.percentile(a, 99)),
                    "total_s": float(a.sum() / 1e3),
                }
        return out


class _Clock:
    """Laps of one request's stages into a :class:`RequestSpans`."""

    __slots__ = ("spans", "t")

    def __init__(self, spans: RequestSpans) -> None:
        self.spans, self.t = spans, time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.spans.add(stage, now - self.t)
        self.t = now


class _NoClock:
    __slots__ = ()

    def lap(self, stage: str) -> None:
        pass


_NO_CLOCK = _NoClock()


class ScoringService:
    """Every call of :meth:`score`, :meth:`recommend` and :meth:`model_info` is timed and counted by
    status code (``freshrec_serving_request_latency_seconds{method}``,
    ``freshrec_serving_requests_total{method,code}``: OK, INVALID_ARGUMENT, ..., INTERNAL for an
    unexpected exception); the follower reports the served version, its lag and freshness."""

    def __init__(
        self,
        cfg: ServeConfig,
        catalogue: ItemCatalogue | None = None,
        telemetry: ReplicaTelemetry | None = None,
        remote=None,
    ) -> None:
        """``remote``: a :class:`serving.shards.RemoteTables` for ``cfg.remote_tables`` (the Ray app builds it
        over its shard deployments); required when ``cfg.remote_tables`` is set."""
        if cfg.remote_tables and remote is None:
            raise UnsupportedError(
                f"serve.remote_tables {list(cfg.remote_tables)} need read-only table shards: "
                "run them with the Ray Serve application (freshrec serve), not a plain process"
            )
        self.cfg = cfg
        self.remote = remote
        self.retrieval = cfg.retrieval
        self.telemetry = telemetry or ReplicaTelemetry()
        # serve.request_spans: per-stage durations of every request (bench serve --replica-perf reads them)
        self.spans: RequestSpans | None = RequestSpans() if cfg.request_spans else None
        torch.set_num_threads(cfg.torch_threads)
        self.store = VersionStore(cfg.require_store(), cfg.storage_options)
        self._catalogue = catalogue
        self._catalogue_loaded = catalogue is not None or not cfg.catalogue
        self.follower = VersionFollower(
            self.store,
            self._load,
            poll_interval_s=cfg.poll_interval_s,
            pin_version=cfg.pin_version,
            telemetry=self.telemetry,
            lease=LeaseSettings(holder=f"scorer-{self.telemetry.replica}", role="replica"),
            name="scorer",
        )

    def start(self, wait_s: float = 0.0, load_now: bool = True) -> "ScoringService":
        """Load the first version now (if there is one, and ``load_now``) and follow the store in the
        background (a Ray Serve replica with remote tables leaves the first load to the follower thread:
        it waits on the shards, which a constructor must not)."""
        if load_now:
            self.follower.poll()
        self.follower.start()
        deadline = time.monotonic() + wait_s
        while self.follower.model is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.follower.stop()

    def health(self) -> tuple[bool, str]:
        """(serving, why): False until a first version loaded (the reason: the store's or the load's error)."""
        return self.follower.health()

    def reconfigure(self, user_config: dict | None) -> None:
        """Ray Serve's ``user_config``: pin a version or follow the newest (settings, never weights)."""
        s = FollowSettings.from_user_config(user_config)
        self.follower.configure(s.pin_version, s.poll_interval_s)

    def _load(self, version: int, previous: ServableModel | None) -> ServableModel:
        same = self._compacted_from_served(version, previous)
        if same is not None:
            return same
        if not self._catalogue_loaded:
            self._catalogue = self._read_catalogue(version)
            self._catalogue_loaded = True
        model = load_model(
            self.store,
            version,
            self._catalogue,
            previous,
            self.cfg.user_feature,
            self.cfg.item_feature,
            remote=self.remote,
            retrieval=self.retrieval,
        )
        metrics = validation_metrics(self.cfg.metrics_path, model.info.data_files)
        if metrics:
            model.info = dataclasses.replace(model.info, metrics={**model.info.metrics, **metrics})
        return model

    def _compacted_from_served(self, version: int, previous: ServableModel | None) -> ServableModel | None:
        """The served model under ``version``'s number when ``version`` is the store's compaction of it (a full
        version written from the served one's chain: ``extra["compacted_from"]``, the same ``model_digest``):
        the same model, so nothing is read or rebuilt. Loading it from its parts took the follower's thread for
        a whole full load (every table) while the next data file's delta waited behind it. The next delta (a
        delta on ``version``) then applies on these tables as usual."""
        if previous is None:
            return None
        m = self.store.manifest(version)
        source = (m.extra or {}).get("compacted_from")
        if m.kind != "full" or source != previous.version or not m.model_digest:
            return None
        if m.model_digest != previous.info.model_digest:
            return None
        model = copy.copy(previous)  # shares the core, tables, features and index (and the core's lock)
        info = VersionInfo.of(m, previous.info.spec_name)
        metrics = validation_metrics(self.cfg.metrics_path, info.data_files)
        model.info = dataclasses.replace(info, metrics={**info.metrics, **metrics}) if metrics else info
        return model

    def _read_catalogue(self, version: int) -> ItemCatalogue:
        from serving.features import SpecRoles
        from serving.model import ModelSetup

        setup = ModelSetup.from_manifest(self.store.manifest(version))
        roles = SpecRoles.of(setup.spec, self.cfg.user_feature, self.cfg.item_feature)
        return ItemCatalogue.from_files(setup.spec, self.cfg.catalogue, roles.item_column, roles.item_columns)

    # ---------------------------------------------------------------- helpers
    def model(self, pin: int = 0) -> ServableModel:
        """The model to answer with (read once per request)."""
        return self._served(self.follower.model, pin)

    def _served(self, m: ServableModel | None, pin: int = 0) -> ServableModel:
        if m is None:
            raise NotReadyError(
                f"no model version is served yet ({self.follower.health()[1]}); the replica keeps "
                f"polling {self.cfg.store_url}"
            )
        if pin and pin != m.version:
            raise VersionMismatchError(
                f"pin_version {pin} is not served: this replica serves version {m.version} "
                f"(pin one with `freshrec serve --pin-version {pin}`)"
            )
        return m

    def _check_size(self, request) -> None:
        size = request.ByteSize()
        if size > self.cfg.limits.max_request_bytes:
            raise InvalidRequestError(
                f"the request is {size} bytes, over the limit of "
                f"{self.cfg.limits.max_request_bytes} bytes: send fewer candidates per call"
            )

    def _clock(self):
        return _Clock(self.spans) if self.spans is not None else _NO_CLOCK

    def _timed(self, method: str, fn, request):
        t0 = time.perf_counter()
        code = "INTERNAL"  # an unexpected exception: the transport answers it as an internal error
        try:
            out = fn(request)
            code = "OK"
            return out
        except ServingError as exc:
            code = exc.code
            raise
        finally:
            t1 = time.perf_counter()
            self.telemetry.request(method, code, t1 - t0)
            if self.spans is not None:
                self.spans.add("telemetry", time.perf_counter() - t1)

    def score(self, request: "pb.ScoreRequest") -> "pb.ScoreResponse":
        return self._timed("Score", self._score, request)

    def recommend(self, request: "pb.RecommendRequest") -> "pb.RecommendResponse":
        return self._timed("Recommend", self._recommend, request)

    def model_info(self, request: "pb.ModelInfoRequest | None" = None) -> "pb.ModelInfoResponse":
        return self._timed("ModelInfo", self._model_info, request)

    # ------------------------------------------------------------------ Score
    def _score(self, request: "pb.ScoreRequest") -> "pb.ScoreResponse":
        clock = self._clock()
        model, batch, defaulted = self._score_batch(request, self.follower.model, clock)
        scores, unknown = model.score(batch)
        clock.lap("forward")
        out = pb.ScoreResponse(
            scores=scores.tolist(), model_version=model.version, defaulted_columns=list(defaulted), unknown_ids=unknown
        )
        clock.lap("respond")
        return out

    def _score_batch(self, request: "pb.ScoreRequest", served: ServableModel | None, clock=_NO_CLOCK):
        """(model, EventBatch, defaulted columns) of a Score request; ``served``: the model read for it."""
        self._check_size(request)
        if request.pin_version < 0:
            raise InvalidRequestError(f"pin_version must be >= 0 (0: the served version), got {request.pin_version}")
        model = self._served(served, request.pin_version)
        clock.lap("validate")
        context = context_values(request.context, "context")
        columns, n = candidate_columns(request, self.cfg.limits.max_candidates)
        clock.lap("convert")
        batch, defaulted = model.features.batch(context, columns, n)
        clock.lap("features")
        return model, batch, defaulted

    def score_many(self, requests: list) -> list:
        """Score requests together (``serve.score_batch_size`` > 1: Ray Serve's ``@serve.batch`` hands a replica
        the requests that arrived together): one model for all of them (read once: every answer names it), each
        request validated and featurised on its own, then ONE forward over their rows. Returns, in order, a
        ScoreResponse or the :class:`ServingError` refusing that request (the others are answered). Each request
        is counted in telemetry with its code and the batch's time.

        A request's scores come from a forward over the other requests' rows too: equal to scoring it alone up
        to float rounding, not bit for bit (which is why batching is off by default). ``unknown_ids`` counts the
        request's own ids without a row (its single-valued and list features)."""
        t0 = time.perf_counter()
        out: list = [None] * len(requests)
        codes = ["INTERNAL"] * len(requests)
        try:
            served = self.follower.model
            ready = []
            for i, request in enumerate(requests):
                try:
                    ready.append((i, *self._score_batch(request, served)))
                except ServingError as exc:
                    out[i], codes[i] = exc, exc.code
            if ready:
                model = ready[0][1]  # every answered request has the one model read above
                batches = [b for _, _, b, _ in ready]
                scores, _ = model.score(batches[0] if len(batches) == 1 else EventBatch.concat(batches))
                lo = 0
                for i, _, b, defaulted in ready:
                    out[i] = pb.ScoreResponse(
                        scores=scores[lo : lo + len(b)].tolist(),
                        model_version=model.version,
                        defaulted_columns=list(defaulted),
                        unknown_ids=_unknown_ids(model, b),
                    )
                    codes[i] = "OK"
                    lo += len(b)
        finally:
            dt = time.perf_counter() - t0
            for code in codes:
                self.telemetry.request("Score", code, dt)
        return out

    # -------------------------------------------------------------- Recommend
    def _recommend(self, request: "pb.RecommendRequest") -> "pb.RecommendResponse":
        clock = self._clock()
        self._check_size(request)
        lim = self.cfg.limits
        if not 1 <= request.k <= lim.max_k:
            raise InvalidRequestError(f"k must be in [1, {lim.max_k}], got {request.k}")
        if request.num_candidates < 0 or request.num_candidates > lim.max_retrieve:
            raise InvalidRequestError(
                f"num_candidates must be in [0, {lim.max_retrieve}] (0: the server's default "
                f"{self.cfg.retrieve}), got {request.num_candidates}"
            )
        if len(request.exclude_item_ids) > lim.max_exclude:
            raise InvalidRequestError(
                f"exclude_item_ids holds {len(request.exclude_item_ids)} ids, over the limit of {lim.max_exclude}"
            )
        if request.pin_version < 0:
            raise InvalidRequestError(f"pin_version must be >= 0, got {request.pin_version}")
        model = self.model(request.pin_version)
        if model.index is None:
            raise UnsupportedError(
                f"version {model.version} cannot recommend: it needs a user and an item feature "
                f"of the same dim (found user={model.roles.user_feature}, "
                f"item={model.roles.item_feature})"
            )
        clock.lap("validate")
        context = context_values(request.context, "context")
        ucol, icol = model.roles.user_column, model.roles.item_column
        if ucol not in context:
            raise InvalidRequestError(f"context must give the user column {ucol!r}")
        if icol in context:
            raise InvalidRequestError(f"context must not give the item column {icol!r}: Recommend chooses the items")
        user_id = model.user_id(context[ucol])  # the user column alone (cached per version)
        category = None
        if request.HasField("category"):
            if model.index.categories is None:
                raise UnsupportedError("a category filter needs the item catalogue: serve with --catalogue FILES")
            category = self._category_id(model, request.category)
        n = max(request.num_candidates or self.cfg.retrieve, request.k)
        exclude = np.fromiter(request.exclude_item_ids, np.int64, len(request.exclude_item_ids))
        clock.lap("convert")
        with torch.inference_mode():  # the index's torch ops without autograd bookkeeping (same kernels, same bits)
            ids, retrieval = model.index.top(model.user_vector(user_id), n, exclude, category)
        clock.lap("retrieval")
        if len(ids) == 0:
            return pb.RecommendResponse(model_version=model.version, catalogue_items=len(model.index))
        batch, _ = model.features.batch(context, {icol: pa.array(ids)}, len(ids))
        clock.lap("features")
        scores, _ = model.score(batch)
        clock.lap("forward")
        order = np.argsort(-scores, kind="stable")[: request.k]
        out = pb.RecommendResponse(model_version=model.version, catalogue_items=len(model.index))
        add = out.items.add  # built in place: no message per item copied into the reply
        for i, s, r in zip(ids[order].tolist(), scores[order].tolist(), retrieval[order].tolist()):
            add(item_id=i, score=s, retrieval_score=r)
        clock.lap("respond")
        return out

    @staticmethod
    def _category_id(model: ServableModel, feature) -> int:
        col = model.category_column
        value = feature_value(feature, "category")
        batch_col = model.spec.column_map[col]
        from trainer.data.parse import Rejections, parse_columns

        rej = Rejections(1)
        parsed, _ = parse_columns(pa.table({col: _one(value)}), (batch_col,), model.spec.null_tokens, rej)
        if not rej.good.all():
            raise InvalidRequestError(f"category: {rej.detail[0]}")
        return int(np.asarray(parsed[col])[0])

    # -------------------------------------------------------------- ModelInfo
    def _model_info(self, request: "pb.ModelInfoRequest | None" = None) -> "pb.ModelInfoResponse":
        f = self.follower
        if f.model is None and request is not None and request.include_not_ready:
            return pb.ModelInfoResponse(ready=False, not_ready_reason=f.health()[1], last_load_error=f.last_error or "")
        model = self.model()
        i = model.info
        return pb.ModelInfoResponse(
            model_version=i.version,
            spec_name=i.spec_name,
            committed_at_unix_ms=int(i.committed_at * 1000),
            kind=i.kind,
            step=i.step,
            data_files=i.files_trained,
            rows_trained=i.rows_trained,
            last_data_file=i.data_files[-1] if i.data_files else "",
            model_digest=i.model_digest,
            metrics=i.metrics,
            pinned=self.follower.pinned,
            loaded_at_unix_ms=int(i.loaded_at * 1000),
            catalogue_items=len(model.index) if model.index else 0,
            ready=True,
            follows=f.why or "",
            last_load_error=f.last_error or "",
        )


SENT_AT_KEY = "x-freshrec-sent-ns"  # metadata a load generator may send: its time.time_ns() at the send


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each thread of this process, by Python thread name (threads Python did
    not start, Ray's and gRPC's C++ threads, summed under ``native``)."""
    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "native")
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def arrival_lag_s(grpc_context, now_ns: int | None = None) -> float | None:
    """Seconds from the client's send (metadata :data:`SENT_AT_KEY`) to now: the proxy, the hop to this replica
    and the wait for this replica's loop; None when the client sent no time."""
    for key, value in grpc_context.invocation_metadata():
        if key == SENT_AT_KEY:
            try:
                return ((now_ns or time.time_ns()) - int(value)) / 1e9
            except ValueError:
                return None
    return None


# ------------------------------------------------------------------ messages -> values
def feature_value(f, where: str):
    """The raw value of a Feature: int (id), str (token) or float (number, finite)."""
    kind = f.WhichOneof("value")
    if kind is None:
        raise InvalidRequestError(f"{where}: the Feature is empty: set id, token or number")
    value = getattr(f, kind)
    if kind == "number" and not math.isfinite(value):
        raise InvalidRequestError(f"{where}: non-finite number {value}")
    return value


def context_values(context, where: str) -> dict[str, object]:
    return {name: feature_value(f, f"{where}.{name}") for name, f in context.items()}


def candidate_columns(request, max_candidates: int) -> tuple[dict[str, pa.Array], int]:
    """({column: arrow array of n}, n) from the row form or the column form of a ScoreRequest."""
    rows, cols = len(request.candidates), request.candidate_columns
    if rows and len(cols):
        raise InvalidRequestError("give candidates either as `candidates` or as `candidate_columns`, not both")
    if not rows and all(len(c.ids) + len(c.tokens) + len(c.numbers) == 0 for c in cols.values()):
        raise InvalidRequestError("no candidates: give at least one in `candidates` or `candidate_columns`")
    if rows:
        if rows > max_candidates:
            raise InvalidRequestError(f"{rows} candidates, over the limit of {max_candidates} per call")
        names = sorted({k for c in request.candidates for k in c.features})
        values = {k: [] for k in names}
        for i, c in enumerate(request.candidates):
            feats = c.features
            if len(feats) != len(names):
                missing = sorted(set(names) - set(feats))
                raise InvalidRequestError(f"candidates[{i}] lacks column(s) {missing} that other candidates give")
            for k in names:
                values[k].append(feature_value(feats[k], f"candidates[{i}].{k}"))
        return {k: _column(v, f"candidates[].{k}") for k, v in values.items()}, rows
    out, n = {}, None
    for name, col in cols.items():
        given = [(k, getattr(col, k)) for k in ("ids", "tokens", "numbers") if len(getattr(col, k))]
        if len(given) != 1:
            raise InvalidRequestError(
                f"candidate_columns.{name}: set exactly one of ids, tokens, numbers "
                f"(found {[k for k, _ in given] or 'none'})"
            )
        kind, values = given[0]
        if n is None:
            n = len(values)
            if n > max_candidates:
                raise InvalidRequestError(f"{n} candidates, over the limit of {max_candidates} per call")
        elif len(values) != n:
            raise InvalidRequestError(
                f"candidate_columns.{name} has {len(values)} values, "
                f"candidate_columns.{next(iter(cols))} has {n}: give one per candidate"
            )
        if kind == "ids":
            out[name] = pa.array(np.fromiter(values, np.int64, len(values)))
        elif kind == "numbers":
            arr = np.fromiter(values, np.float64, len(values))
            bad = np.flatnonzero(~np.isfinite(arr))
            if len(bad):
                raise InvalidRequestError(
                    f"candidate_columns.{name}: non-finite number(s) at candidates {bad[:5].tolist()}"
                )
            out[name] = pa.array(arr)
        else:
            out[name] = pa.array(list(values), pa.string())
    return out, n


def _column(values: list, where: str) -> pa.Array:
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        raise InvalidRequestError(
            f"{where}: mixed value kinds {sorted(k.__name__ for k in kinds)}: use one of "
            "id, token, number for every candidate"
        )
    kind = kinds.pop()
    if kind is str:
        return pa.array(values, pa.string())
    return pa.array(np.asarray(values, np.float64 if kind is float else np.int64))


def _one(value) -> pa.Array:
    return _column([value], "value")


def _unknown_ids(model: ServableModel, batch) -> int:
    """Ids of ``batch`` that have no row in the model's tables (what ``ServableModel.score`` reports for a
    batch scored alone), counted over the tables' features that the batch carries."""
    unknown = 0
    for cfg in model.core.ebc.embedding_bag_configs():
        table = model.tables[cfg.name]
        for f in cfg.feature_names:
            if f in batch.sparse:
                _, known = table.positions(batch.sparse[f])
                unknown += int(len(known) - np.count_nonzero(known))
    return unknown
