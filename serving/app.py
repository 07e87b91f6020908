"""The Ray Serve application: replicas of :class:`ScoringService` behind Ray Serve's gRPC ingress.

Every Ray call of serving is in this module. A replica loads the newest committed version at
start, follows the store in a background thread and swaps atomically; ``user_config``
(``{"pin_version": 12}`` or ``{"pin_version": null}``) reaches :meth:`ScorerDeployment.reconfigure`
and changes settings only, never weights::

    client ──gRPC──► Ray Serve proxy (reflection on) ──► ScorerDeployment replica × N
                     freshrec.v1.Scorer/Score                 ScoringService ─ VersionFollower ─► store

    start_serving(ServeConfig(store_url="runs/r1/versions"), grpc_port=9000, replicas=1)
    # grpcurl -plaintext 127.0.0.1:9000 freshrec.v1.Scorer/ModelInfo
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import threading
import time

import grpc
from ray import serve
from ray.serve.config import gRPCOptions

from common.config import ConfigError
from serving.config import FollowSettings, ServeConfig
from serving.errors import ServingError
from serving.follower import LeaseSettings, VersionFollower
from serving.model import ps_config_of
from serving.service import ScoringService, arrival_lag_s, thread_cpu
from serving.shards import RemoteTables, ShardSlice, merge_changes
from serving.telemetry import replica_name
from serving.wire import SERVICER_FUNCTION, pb
from versions import VersionStore

log = logging.getLogger(__name__)
APP_NAME = "freshrec"
# freshrec.v1.Search (the search application, search/app.py) shares the proxy: registered here by name only
SEARCH_SERVICER_FUNCTION = "protos.freshrec.v1.search_pb2_grpc.add_SearchServicer_to_server"
# grpc.health.v1.Health/Check, answered by the replica the proxy routes it to (metadata ``application``)
HEALTH_SERVICER_FUNCTION = "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server"
# a replica that has not loaded a version this long after it started fails Ray Serve's health check
# (and is restarted); shorter would restart replicas whose first load is still reading the store
READY_GRACE_S = 60.0


# a shard call waits at most this long: while a killed table shard restarts (30 s and more on a loaded host)
# Serve queues calls for it; a request then answers UNAVAILABLE (serving.shards), a load is retried
SHARD_LOOKUP_TIMEOUT_S = 5.0
SHARD_LOAD_TIMEOUT_S = 60.0


def _result(call, timeout_s: float):
    """A DeploymentResponse's result within ``timeout_s`` (``TimeoutError`` after it, the call cancelled)."""
    try:
        return call.result(timeout_s=timeout_s)
    except TimeoutError:
        call.cancel()
        raise


def health_check(health, started: float, grace_s: float = READY_GRACE_S) -> None:
    """Raise (Ray Serve's ``check_health`` contract) when ``health() -> (ok, why)`` is not ok: at once when
    the follower thread died, after ``grace_s`` when no version has loaded yet."""
    ok, why = health()
    if ok:
        return
    if "not running" in why or time.monotonic() - started > grace_s:
        raise RuntimeError(why)


def health_response(health):
    """A ``grpc.health.v1.HealthCheckResponse`` from ``health() -> (ok, why)``."""
    from grpc_health.v1 import health_pb2

    ok, _ = health()
    return health_pb2.HealthCheckResponse(
        status=health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    )


@serve.deployment(name="Scorer", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64, health_check_period_s=2.0)
class ScorerDeployment:
    """One replica: a ScoringService and the gRPC methods of freshrec.v1.Scorer.

    The methods are coroutines that compute without awaiting: a request costs 1-3 ms of CPU, less
    than a hop to a thread pool, and the replica's loop runs one at a time (the model's lock is
    never contended). Loading versions happens on the follower's own thread. That loop is Ray Serve's
    own unless ``serve.user_code_thread`` (:func:`replica_actor_options`). ``serve.request_spans``: the
    replica records where each request's time goes (:meth:`perf_report`, ``bench serve --replica-perf``).

    ``serve.max_ongoing_requests`` (default 64) is the deployment's option of that name (set in
    :func:`build_app`). ``serve.score_batch_size`` > 1 turns on ``@serve.batch`` for Score: requests that
    arrive within ``serve.score_batch_wait_s`` are scored in one forward (ScoringService.score_many); off by
    default (scores then equal scoring alone up to float rounding only, see ServeConfig).
    """

    def __init__(self, cfg: ServeConfig, *shards) -> None:
        logging.basicConfig(level=logging.INFO)
        self._started = time.monotonic()
        self.shards = shards  # DeploymentHandles of the TableShard deployments (cfg.remote_tables)
        remote = None
        if cfg.remote_tables:
            remote = RemoteTables(cfg.remote_tables, len(shards), cfg.cache_rows, self._shard_load, self._shard_fetch)
        # with shards, the first version is loaded by the follower thread (a constructor must not wait on them)
        self.service = ScoringService(cfg, remote=remote).start(load_now=remote is None)
        self._batching = cfg.score_batch_size > 1  # serve.score_batch_size: Score requests scored together
        self._spans = self.service.spans  # serve.request_spans: None (off) or the service's RequestSpans
        self._lag_probe = None  # the loop-lag probe task (request_spans only), started by the first request
        self._cpu0 = thread_cpu() if self._spans is not None else {}
        if self._batching:
            self._score_together.set_max_batch_size(cfg.score_batch_size)
            self._score_together.set_batch_wait_timeout_s(cfg.score_batch_wait_s)

    def _shard_load(self, version: int, since: int | None):
        calls = [h.load.remote(version, since) for h in self.shards]
        return merge_changes([_result(c, SHARD_LOAD_TIMEOUT_S) for c in calls])

    def _shard_fetch(self, version: int, table: str, asked):
        calls = {s: self.shards[s].lookup.remote(version, table, ids) for s, ids in asked.items()}
        return {s: _result(c, SHARD_LOOKUP_TIMEOUT_S) for s, c in calls.items()}

    def reconfigure(self, user_config: dict) -> None:
        self.service.reconfigure(user_config)

    def _call(self, fn, request, grpc_context, empty):
        try:
            return fn(request)
        except ServingError as exc:  # INVALID_ARGUMENT & co: answered, the replica goes on
            grpc_context.set_code(getattr(grpc.StatusCode, exc.code))
            grpc_context.set_details(exc.message)
            return empty

    async def _answer(self, fn, request, grpc_context, empty):
        t0 = self._arrived(grpc_context)
        if not self.shards:  # compute on the loop: cheaper than a hop to a thread
            out = self._call(fn, request, grpc_context, empty)
        else:  # remote tables wait on shard calls, which must not block (or run on) the replica's event loop
            out = await asyncio.get_running_loop().run_in_executor(None, self._call, fn, request, grpc_context, empty)
        self._handled(t0)
        return out

    def _arrived(self, grpc_context) -> float | None:
        """With ``serve.request_spans``: record the ``arrival`` span (the client's send to this handler), start
        the loop-lag probe once, and return the handler's start time; None (nothing recorded) otherwise."""
        if self._spans is None:
            return None
        t0 = time.perf_counter()
        lag = arrival_lag_s(grpc_context)
        if lag is not None:
            self._spans.add("arrival", lag)
        if self._lag_probe is None:
            self._lag_probe = asyncio.get_running_loop().create_task(self._probe_loop())
        return t0

    def _handled(self, t0: float | None) -> None:
        """The ``handler`` span (this handler's own time) of a request :meth:`_arrived` timed."""
        if t0 is not None:
            self._spans.add("handler", time.perf_counter() - t0)

    async def _probe_loop(self, period_s: float = 0.005) -> None:
        """How late this replica's request loop wakes a 5 ms sleep (``loop_lag``): how long a request that
        arrives would wait for the loop."""
        while True:
            t = time.perf_counter()
            await asyncio.sleep(period_s)
            self._spans.add("loop_lag", time.perf_counter() - t - period_s)

    def perf_report(self, reset: bool = True) -> dict:
        """Where this replica's time went since the last report (``serve.request_spans``): per-stage spans of
        the requests (:class:`serving.service.RequestSpans`) and the CPU seconds of each of its threads."""
        if self._spans is None:
            return {"error": "serve.request_spans is off: nothing is recorded"}
        now = thread_cpu()
        cpu = {k: round(v - self._cpu0.get(k, 0.0), 3) for k, v in now.items()}
        if reset:
            self._cpu0 = now
        return {"spans": self._spans.summary(reset), "thread_cpu_s": {k: v for k, v in cpu.items() if v > 0}}

    async def cprofile(self, action: str):
        """A cProfile of this replica's request loop (``bench serve --profile``): ``start`` profiles the thread
        that runs the request methods (this coroutine runs on the same loop: Ray Serve's own, or the user-code
        thread's with ``serve.user_code_thread``), so Ray Serve's own per-request work on that loop counts
        too; ``stop`` ends it and returns the raw ``pstats`` table ({(file, line, function): (primitive calls,
        calls, own s, cumulative s)}; the caller summarises it per request)."""
        import cProfile

        if action == "start":
            self._cprofile = cProfile.Profile()
            self._cprofile.enable()
            return {}
        prof, self._cprofile = getattr(self, "_cprofile", None), None
        if prof is None:
            return {}
        prof.disable()
        prof.create_stats()
        return {k: v[:4] for k, v in prof.stats.items()}

    async def Score(self, request, grpc_context):
        if self._batching:
            t0 = self._arrived(grpc_context)
            out = await self._score_batched(request, grpc_context)
            self._handled(t0)
            return out
        return await self._answer(self.service.score, request, grpc_context, pb.ScoreResponse())

    async def _score_batched(self, request, grpc_context):
        out = await self._score_together(request)
        if isinstance(out, ServingError):  # this request refused, the others of its batch answered
            grpc_context.set_code(getattr(grpc.StatusCode, out.code))
            grpc_context.set_details(out.message)
            return pb.ScoreResponse()
        return out

    @serve.batch(max_batch_size=2, batch_wait_timeout_s=0.002)  # sizes set from the ServeConfig in __init__
    async def _score_together(self, requests: list) -> list:
        """Score requests that arrived together in one forward (ScoringService.score_many)."""
        return self.service.score_many(requests)

    async def Recommend(self, request, grpc_context):
        return await self._answer(self.service.recommend, request, grpc_context, pb.RecommendResponse())

    async def ModelInfo(self, request, grpc_context):
        return self._call(self.service.model_info, request, grpc_context, pb.ModelInfoResponse())

    async def Check(self, request, grpc_context):
        return health_response(self.service.health)

    def check_health(self) -> None:
        health_check(self.service.health, self._started)

    def __del__(self) -> None:
        try:
            self.service.stop()
        except Exception:
            pass


@dataclasses.dataclass(frozen=True)
class HeldVersion:
    """What a table shard's follower "serves": the version it holds (the rows live in the ShardSlice)."""

    version: int


@serve.deployment(
    name="TableShard", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256, health_check_period_s=2.0
)
class TableShardDeployment:
    """One read-only shard of the ``remote_tables`` (:class:`serving.shards.ShardSlice`): it restores its
    ids from the version store and follows the versions the scoring replicas ask for."""

    def __init__(self, cfg: ServeConfig, index: int) -> None:
        logging.basicConfig(level=logging.INFO)
        self.cfg, self.index = cfg, index
        self.store = VersionStore(cfg.require_store(), cfg.storage_options)
        self.slice: ShardSlice | None = None
        self._lock = threading.Lock()
        # the shard follows the same pointers as the replicas (the one follower): it loads the target before
        # the replicas ask for it, and leases it; any other version a replica asks for is loaded on demand
        self.follower = VersionFollower(
            self.store,
            self._prefetch,
            poll_interval_s=cfg.poll_interval_s,
            pin_version=cfg.pin_version,
            lease=LeaseSettings(holder=f"table-shard-{index}-{replica_name()}", role="table-shard"),
            name=f"table-shard-{index}",
        ).start()

    def _prefetch(self, version: int, previous) -> HeldVersion:
        self._slice(version).load(version)
        return HeldVersion(version)

    def reconfigure(self, user_config: dict) -> None:
        s = FollowSettings.from_user_config(user_config)
        self.follower.configure(s.pin_version, s.poll_interval_s)

    def check_health(self) -> None:
        if not self.follower.alive:
            raise RuntimeError("the table shard's version follower thread is not running")

    def __del__(self) -> None:
        try:
            self.follower.stop()
        except Exception:
            pass

    def _slice(self, version: int) -> ShardSlice:
        with self._lock:
            if self.slice is None:
                self.slice = ShardSlice(
                    self.store,
                    ps_config_of(self.store, version),
                    self.cfg.remote_tables,
                    self.index,
                    self.cfg.table_shards,
                )
            return self.slice

    async def load(self, version: int, since: int | None = None):
        """Hold ``version`` (loaded on a thread: lookups of held versions go on meanwhile)."""
        return await asyncio.to_thread(lambda: self._slice(version).load(version, since))

    def lookup(self, version: int, table: str, ids):
        return self._slice(version).lookup(version, table, ids)


def free_port() -> int:
    """A free TCP port on this machine (Ray Serve needs a number; port 0 cannot be read back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_FOLLOW = object()


def build_app(cfg: ServeConfig, replicas: int | None = None, pin_version=_FOLLOW):
    """The application (``replicas`` scorers; None: ``cfg.replicas``). ``pin_version`` (default:
    ``cfg.pin_version``) travels in ``user_config``: re-running the same ``cfg`` with another pin is a
    lightweight update (``reconfigure`` on the running replicas, no restart); a different ``cfg`` would
    replace the replicas."""
    cfg.require_store()
    replicas = cfg.replicas if replicas is None else replicas
    pin = cfg.pin_version if pin_version is _FOLLOW else pin_version
    user_config = {"pin_version": pin, "poll_interval_s": cfg.poll_interval_s}
    logs = {"enable_access_log": cfg.access_log}  # serve.access_log: a log line per request, off by default
    shards = [
        TableShardDeployment.options(name=f"TableShard{i}", user_config=user_config, logging_config=logs).bind(cfg, i)
        for i in range(cfg.table_shards if cfg.remote_tables else 0)
    ]
    return ScorerDeployment.options(
        num_replicas=replicas,
        user_config=user_config,
        max_ongoing_requests=cfg.max_ongoing_requests,
        logging_config=logs,
        ray_actor_options=replica_actor_options(cfg),
    ).bind(cfg, *shards)


USER_CODE_THREAD_ENV = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"  # read by Ray Serve when the replica starts


def replica_actor_options(cfg: ServeConfig) -> dict:
    """The Scorer replica's ``ray_actor_options``: no CPU reserved; with ``serve.user_code_thread: false`` the
    environment that makes Ray Serve run the request methods on its own loop (the job's env_vars, such as the
    workers' PYTHONPATH, are merged with it by Ray)."""
    opts: dict = {"num_cpus": 0}
    if not cfg.user_code_thread:
        opts["runtime_env"] = {"env_vars": {USER_CODE_THREAD_ENV: "0"}}
    return opts


def app_from_args(args: dict):
    """The builder a Ray Serve config file names (``import_path: serving.app:app_from_args``, as the
    KubeRay RayService in k8s/ does): Ray Serve calls it with the application's ``args``: ``store`` (the
    version store URL) and any key of the run config's ``serve:`` section (:class:`ServeConfig`: ``replicas``,
    ``pin_version``, ``catalogue``, ``poll_interval_s``, ``remote_tables``, ``limits``...; ``grpc_port``
    belongs to the proxy and changes nothing here). Defaults are ServeConfig's; an unknown key is refused."""
    args = dict(args or {})
    store = args.pop("store", None) or args.get("store_url")
    if not store:
        raise ServingError("serve config args: 'store' (the version store URL) is required")
    args["store_url"] = str(store)
    try:
        cfg = ServeConfig.from_dict(args, where="serve config args")
    except ConfigError as exc:
        raise ServingError(str(exc)) from None
    return build_app(cfg)


GRPC_SIZE_ENV = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"  # Ray 2.60's proxy reads its receive/send limit here at start


def proxy_env(max_request_bytes: int) -> dict[str, str]:
    """The environment that makes Serve's gRPC proxy refuse a message above ``max_request_bytes`` before
    parsing it (gRPCOptions has no size field in Ray 2.60; its default is 2 GiB). Set it where the proxy
    starts: the local Ray's environment (``freshrec serve`` sets it before ``ray.init``), the controller's
    runtime_env (:func:`start_serving`), the pods' env (k8s/base/rayservice.yaml)."""
    return {GRPC_SIZE_ENV: str(int(max_request_bytes))}


def start_proxy(
    grpc_port: int,
    max_request_bytes: int,
    host: str = "127.0.0.1",
    http_port: int | None = None,
    access_log: bool = False,
) -> None:
    """Start Serve (once per Ray cluster) with the gRPC proxy serving Scorer, Search and grpc.health.v1.

    ``host``: the HTTP proxy's bind address (loopback unless told otherwise). Ray 2.60's gRPC proxy binds
    every interface (``[::]:PORT``, not configurable): keep the port closed to the outside by the network
    (the k8s NetworkPolicy, a host firewall) where that matters. ``access_log`` (``serve.access_log``): the
    proxy's log line per request (off: a formatted line and a file write per request)."""
    serve.start(
        http_options={"host": host, "port": http_port or free_port()},
        logging_config={"enable_access_log": access_log},
        grpc_options=gRPCOptions(
            port=grpc_port,
            enable_reflection=True,
            grpc_servicer_functions=[SERVICER_FUNCTION, SEARCH_SERVICER_FUNCTION, HEALTH_SERVICER_FUNCTION],
        ),
        controller_options={"runtime_env": {"env_vars": proxy_env(max_request_bytes)}},
    )


def start_serving(
    cfg: ServeConfig,
    grpc_port: int | None = None,
    replicas: int | None = None,
    http_port: int | None = None,
    wait_s: float = 120.0,
    host: str | None = None,
) -> int:
    """Deploy the application on the connected Ray (``ray.init`` first) and return the gRPC port.

    The proxy serves ``freshrec.v1.Scorer`` with reflection (:func:`start_proxy`); HTTP binds ``host``
    (None: ``cfg.host``). ``grpc_port`` None: a free port (tests, the demo); ``freshrec serve`` passes
    ``cfg.grpc_port``. ``replicas`` None: ``cfg.replicas``.
    """
    grpc_port = grpc_port or free_port()
    start_proxy(grpc_port, cfg.limits.max_request_bytes, host or cfg.host, http_port, cfg.access_log)
    serve.run(build_app(cfg, replicas), name=APP_NAME, route_prefix="/", blocking=False)
    return grpc_port


def serve_and_wait(
    cfg: ServeConfig, grpc_port: int | None = None, replicas: int | None = None, timeout_s: float = 120.0
) -> tuple[str, int]:
    """Deploy (Ray initialised first) and wait until a version answers: ("127.0.0.1:PORT", version).

    What ``freshrec demo`` calls after training::

        target, version = serve_and_wait(ServeConfig(store_url=str(run_dir / "versions")))
        print(score_and_show(target, user=1, items=[2268318, 2333346]))   # serving.client
    """
    from serving.client import ScoringClient

    port = start_serving(cfg, grpc_port, replicas)
    target = f"127.0.0.1:{port}"
    with ScoringClient(target) as client:
        return target, client.wait_ready(timeout_s).model_version


def pin(cfg: ServeConfig, version: int | None, replicas: int | None = None) -> None:
    """Pin every replica to ``version`` (rollback), or follow the newest again (None): a user_config
    update of the running application started with ``cfg`` (the replicas stay up and keep serving)."""
    serve.run(build_app(cfg, replicas, pin_version=version), name=APP_NAME, route_prefix="/", blocking=False)


def stop_serving() -> None:
    serve.delete(APP_NAME)
    serve.shutdown()


def worker_env() -> dict:
    """A runtime_env that makes Ray workers import THIS checkout's packages (and its generated stubs)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}
