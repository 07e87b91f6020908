"""Every Ray call of the parameter server lives here: the shard actor and its creation.

``ShardHost`` only hosts an :class:`EmbeddingShard` and adds what needs an event loop:
in sync mode a pull for step s waits (without blocking the actor) until step s-1 is
applied; pushes are assembled per step by :class:`SyncAggregator`; in async mode each push
is checked by :class:`StalenessPolicy`. The actor is an asyncio actor: method bodies run
one at a time on its loop, so the shard needs no locks.

Leases: a training pull (``lease=True``) pins its rows until its step's push is applied: in
async mode the lease ``(rank, step)`` is released by that rank's push of that step; in sync
mode every lease of step s is released when step s is applied. With several workers in sync
mode the leased pulls of one step are gathered (every rank sends one to every shard, even
empty) and served as ONE pull of their union, counts summed in rank order: admission and
eviction then see exactly what one process pulling the whole global minibatch sees, whatever
the arrival order (deterministic, and equal to the local backend).

A shard actor's process runs an orphan guard (:mod:`common.orphans`): once its raylet is gone (the
``freshrec stream`` driver's process group was killed) it exits (status 75) instead of lingering with
its tables until Ray notices; its rows are in the last committed version.

``ShardHost`` is plain Python (its methods are coroutines): the unit tests drive it without Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from common import orphans
from paramserver import wire
from paramserver.config import PSConfig
from paramserver.consistency import SyncAggregator
from paramserver.errors import BadPullError, BadPushError, ShardUnavailableError
from paramserver.policies import StaleDecision, StalenessPolicy
from paramserver.telemetry import ShardTelemetry

log = logging.getLogger(__name__)


class ShardHost:
    """Hosts shard ``index``; methods take and return numpy arrays only."""

    def __init__(self, cfg: PSConfig, index: int, set_threads: bool = True, orphan_guard: bool | None = None) -> None:
        import torch

        from paramserver.shard import EmbeddingShard

        if set_threads:  # an actor process: one torch thread (an in-process host leaves the caller's alone)
            torch.set_num_threads(1)
        # an actor process exits once its raylet is gone (common.orphans). orphan_guard None: when this is a Ray
        # actor's process (an in-process host, set_threads=False, lives in a Ray Train worker, which has its own
        # guard); True: always (a test); False: never
        self.orphan_guard = None
        if orphan_guard or (orphan_guard is None and set_threads):
            self.orphan_guard = orphans.start_if_ray_worker(
                f"parameter-server shard actor {index}",
                "(its rows are in the last committed version: a restarted stream starts new shard actors from it)",
                force=orphan_guard is True,
            )
        self.cfg = cfg
        self._init_error: Exception | None = None
        try:
            self.shard = EmbeddingShard(cfg, index)
        except Exception as exc:  # re-raised by ready(), so the caller gets the error itself
            self._init_error = exc
        self.aggregator = SyncAggregator(cfg.num_workers)
        self.policy = StalenessPolicy(cfg.max_staleness, cfg.stale_policy)
        self._applied: asyncio.Condition | None = None
        self._gathering: dict[int, dict] = {}  # sync, W > 1: step -> {"ranks": {rank: batch}, "done": future}
        self._own: dict[int, int] = {}  # async: rank -> its pushes applied here (the worker's own clock)
        self._dims = {t.name: t.dim for t in cfg.tables}
        self._busy = {"pull_cpu_s": 0.0, "push_cpu_s": 0.0}
        self._next_call: dict = {}  # client id -> number of its next call to start (calls start in sent order)
        self._call_waiting: dict = {}  # (client id, call number) -> future of a call that arrived early
        self.telemetry = ShardTelemetry(index)

    def _condition(self) -> asyncio.Condition:
        if self._applied is None:
            self._applied = asyncio.Condition()
        return self._applied

    async def ready(self) -> int:
        if self._init_error is not None:
            raise self._init_error
        return self.shard.index

    async def _in_order(self, order: tuple | None) -> None:
        """Start one client's calls in the order it sent them (``order`` = (client id, call number)).

        Ray may start an async actor's tasks out of order (a later call is ready while an earlier
        one's arguments are still arriving); a worker's pipelined or prefetched pulls and its pushes
        must reach the shard in the trainer's order, since admission and eviction follow it. A call
        that arrives early waits (without blocking the actor) for its predecessor to start."""
        if order is None:
            return
        caller, n = order
        expected = self._next_call.get(caller, 0)
        if n < expected:
            raise BadPullError("*", f"call {n} of client {caller} arrived twice (the next expected is {expected})")
        if n > expected:
            future = asyncio.get_running_loop().create_future()
            self._call_waiting[(caller, n)] = future
            try:
                await asyncio.wait_for(future, self.cfg.lease_timeout_s)
            except TimeoutError:
                self._call_waiting.pop((caller, n), None)
                raise ShardUnavailableError(
                    self.shard.index,
                    f"call {n - 1} of client {caller} never arrived within {self.cfg.lease_timeout_s} s",
                ) from None
        self._next_call[caller] = n + 1
        successor = self._call_waiting.pop((caller, n + 1), None)
        if successor is not None and not successor.done():
            successor.set_result(None)

    async def pull(
        self,
        msg: tuple,
        step: int | None,
        rank: int = 0,
        lease: bool = False,
        stale: int = 0,
        order: tuple | None = None,
    ) -> tuple[np.ndarray, int]:
        """Rows for a packed pull request (see :mod:`paramserver.wire`) and the read marker the rank's push
        of this step sends back (async: the rank's own pushes applied here; sync: the shard version).

        Sync mode waits for steps < ``step - stale`` (``stale`` > 0: rows that may miss the updates of the
        ``stale`` steps just before ``step``: pipelining, or ids the steps in between do not touch).
        ``lease``: a training pull, whose rows stay resident until the step's push is applied (module
        docstring). ``order``: (client id, call number), see :meth:`_in_order`."""
        await self._in_order(order)
        t_call = time.perf_counter()
        sync = self.cfg.mode == "sync"
        if lease and step is None:
            raise BadPullError("*", "a leased (training) pull needs its step")
        if not 0 <= rank < self.cfg.num_workers:
            raise BadPullError("*", f"rank {rank} is outside [0, num_workers={self.cfg.num_workers})")
        if not isinstance(stale, int) or isinstance(stale, bool) or stale < 0:
            raise BadPullError("*", f"stale must be an integer >= 0, got {stale!r}")
        if sync and step is not None:
            if step < 0:
                raise BadPullError("*", f"step must be >= 0, got {step}")
            ready = step - stale
            if self.shard.version < ready:
                cond = self._condition()
                async with cond:
                    await cond.wait_for(lambda: self.shard.version >= ready)
        batch = wire.unpack_ids(msg)
        if sync and lease and self.cfg.num_workers > 1:
            rows = await self._gathered_pull(batch, step, rank)
        else:
            t0 = time.thread_time()
            rows = self.shard.pull_flat(batch, step, lease=(rank, step) if lease else None)  # the reply itself
            self._busy["pull_cpu_s"] += time.thread_time() - t0
        self.telemetry.latency("pull", time.perf_counter() - t_call)
        return rows, (self._own.get(rank, 0) if not sync else self.shard.version)

    async def _gathered_pull(self, batch: dict, step: int, rank: int) -> np.ndarray:
        """Sync, W > 1: wait for every rank's leased pull of ``step``, serve their union once, hand each
        rank its rows (its flat pull reply)."""
        entry = self._gathering.get(step)
        if entry is None:
            entry = self._gathering[step] = {"ranks": {}, "done": asyncio.get_running_loop().create_future()}
        if rank in entry["ranks"]:
            raise BadPullError("*", f"rank {rank} already sent its training pull of step {step}")
        entry["ranks"][rank] = batch
        if len(entry["ranks"]) == self.cfg.num_workers:
            del self._gathering[step]
            t0 = time.thread_time()
            try:
                entry["done"].set_result(self._serve_union(entry["ranks"], step))
            except Exception as exc:  # every rank gets the error (e.g. TableFullError)
                entry["done"].set_exception(exc)
            self._busy["pull_cpu_s"] += time.thread_time() - t0
        result = await asyncio.shield(entry["done"])
        return result[rank]

    def _serve_union(self, ranks: dict, step: int) -> dict:
        """Each rank's pull reply (flat, :mod:`paramserver.wire`): its rows taken from the union's, once."""
        union = merge_pulls([ranks[r] for r in sorted(ranks)])
        rows = self.shard.pull(union, step, lease=(-1, step))
        out = {}
        for r, batch in ranks.items():
            parts = [
                (rows[t], np.searchsorted(union[t][0], v[0] if isinstance(v, tuple) else v)) for t, v in batch.items()
            ]
            flat = np.empty(sum(len(at) * src.shape[1] for src, at in parts), np.float32)
            start = 0
            for src, at in parts:
                size = len(at) * src.shape[1]
                np.take(src, at, axis=0, out=flat[start : start + size].reshape(len(at), src.shape[1]))
                start += size
            out[r] = flat
        return out

    async def push(
        self, msg: tuple, step: int | None, rank: int, read_version: int | None, order: tuple | None = None
    ) -> dict:
        """Apply (async) or buffer until the step is complete (sync) a packed push; returns what happened."""
        await self._in_order(order)
        t0, t_call = time.thread_time(), time.perf_counter()
        try:
            batch = wire.unpack_grads(msg, self._dims)
            return await self._push(batch, step, rank, read_version)
        finally:
            self._busy["push_cpu_s"] += time.thread_time() - t0
            self.telemetry.latency("push", time.perf_counter() - t_call)
            self.telemetry.counters(self.shard.stats)

    async def _push(self, batch: dict, step: int | None, rank: int, read_version: int | None) -> dict:
        if self.cfg.mode == "sync":
            if step is None:
                raise BadPushError("*", "sync mode needs push_many(..., step=s) with s counting up from 0")
            prepared = self.shard.prepare_push(batch)
            ready = self.aggregator.add(rank, step, prepared, next_step=self.shard.version)
            for s, merged in ready:
                self.shard.apply_push(merged, s, lease=(-1 if self.cfg.num_workers > 1 else 0, s))
                self.shard.release_through(s)  # the step is applied: its rows may go
            if ready:
                cond = self._condition()
                async with cond:
                    cond.notify_all()
            return {"applied_steps": [s for s, _ in ready], "version": self.shard.version}
        prepared = self.shard.prepare_push(batch)
        if read_version is None:
            raise BadPushError(
                "*",
                f"async push of step {step} from rank {rank} carries no read version: pull the "
                "ids with pull_many(..., step=s), wait for the rows, then push_many(..., step=s)",
            )
        own = self._own.get(rank, 0)
        staleness = own - int(read_version)
        decision = self.policy.decide(int(read_version), own)
        if decision is not StaleDecision.APPLY:
            self.shard.count_stale(dropped=decision is StaleDecision.DROP)
        dropped_rows = 0
        if decision is not StaleDecision.DROP:
            dropped_rows = self.shard.apply_push(prepared, step, lease=(rank, step))
            self._own[rank] = own + 1
        if step is not None:
            self.shard.release_through(step, rank)  # applied or dropped: this rank is done with these rows
        return {
            "decision": decision.value,
            "staleness": staleness,
            "version": self.shard.version,
            "dropped_rows": dropped_rows,
        }

    async def push_pull(
        self,
        push_msg: tuple,
        pull_msg: tuple,
        step: int,
        rank: int,
        read_version: int | None,
        ahead: int = 1,
        order: tuple | None = None,
    ) -> tuple[np.ndarray, int]:
        """Push of ``step`` then the training pull of step ``step + ahead`` in one call (sync: answered once
        ``step`` is applied; ``ahead`` > 1 is pipelining, the rows miss the ``ahead - 1`` steps in between)."""
        await self._in_order(order)
        if not isinstance(ahead, int) or isinstance(ahead, bool) or ahead < 1:
            raise BadPullError("*", f"ahead must be an integer >= 1, got {ahead!r}")
        await self.push(push_msg, step, rank, read_version)
        return await self.pull(pull_msg, step + ahead, rank, True, ahead - 1)

    async def stats(self) -> dict:
        self.telemetry.counters(self.shard.stats, force=True)
        return {**self.shard.stats(), **self._busy}

    async def orphan_guarded(self) -> bool:
        """Whether this host runs an orphan guard (every shard actor in a Ray worker process does)."""
        return self.orphan_guard is not None and self.orphan_guard.running

    async def pid(self) -> int:
        """The process hosting this shard (operations, and the recovery tests that SIGKILL it)."""
        import os

        return os.getpid()

    async def node_id(self) -> str | None:
        """The Ray node hosting this shard (None outside Ray): where ``ps.spread`` put it."""
        try:
            import ray

            return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        except Exception:  # pragma: no cover (no Ray)
            return None

    # --------------------------------------------------------------- versions
    async def prepare_cut(self, cut_id: str, full: bool) -> dict:
        """Copy what version cut ``cut_id`` needs; the only part of a version inside the training pause."""
        return self.shard.prepare_cut(cut_id, full)

    async def write_cut(self, cut_id: str, store_url: str, version: int, storage_options: dict | None = None) -> list:
        """Write this shard's parts in a thread, so pulls and pushes go on meanwhile; returns PartInfos."""
        return await asyncio.to_thread(self.shard.write_cut, cut_id, store_url, version, storage_options)

    async def commit_cut(self, cut_id: str) -> None:
        self.shard.commit_cut(cut_id)

    async def abort_cut(self, cut_id: str) -> bool:
        return self.shard.abort_cut(cut_id)

    async def restore(self, store_url: str, version: int, storage_options: dict | None = None) -> dict:
        """Replace this shard's state with ``version``'s rows, read and loaded one hash slice at a time
        (off the event loop; nothing else may use the shard meanwhile: restores precede training)."""
        await asyncio.to_thread(self.shard.restore_from_store, store_url, version, storage_options)
        self.aggregator = SyncAggregator(self.cfg.num_workers)
        self._own = {}
        for entry in self._gathering.values():
            if not entry["done"].done():
                entry["done"].set_exception(ShardUnavailableError(self.shard.index, "the shard was restored"))
        self._gathering = {}
        cond = self._condition()
        async with cond:
            cond.notify_all()
        return self.shard.stats()

    async def table_state(self, table: str) -> dict:
        """This shard's rows of ``table`` with optimizer state and metadata (for the model digest)."""
        return self.shard.table_state(table)

    async def read(self, table: str, ids: np.ndarray) -> np.ndarray:
        return self.shard.read(table, ids)


def merge_pulls(batches: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The union of several pulls ``{table: (distinct ids, counts)}``: distinct ids ascending, counts summed.

    >>> merge_pulls([{"t": (np.array([3, 5]), np.array([1, 2]))}, {"t": (np.array([5]), np.array([4]))}])["t"]
    (array([3, 5]), array([1, 6]))
    """
    tables: list[str] = []
    for b in batches:
        tables += [t for t in b if t not in tables]
    out = {}
    for t in tables:
        parts = [b[t] if isinstance(b[t], tuple) else np.unique(b[t], return_counts=True) for b in batches if t in b]
        ids = np.concatenate([p[0] for p in parts]).astype(np.int64, copy=False)
        counts = np.concatenate([p[1] for p in parts]).astype(np.int64, copy=False)
        uniq, inverse = np.unique(ids, return_inverse=True)
        total = np.zeros(len(uniq), np.int64)
        np.add.at(total, inverse, counts)
        out[t] = (uniq, total)
    return out


def alive_node_ids() -> list[str]:
    """The ids of the alive nodes of the connected Ray cluster, in a fixed order (by id)."""
    import ray

    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def shard_node_layout(num_shards: int, nodes: list[str]) -> list[str]:
    """``ps.spread=nodes``: the node of each shard, round-robin over ``nodes``.

    >>> shard_node_layout(3, ["a", "b"])
    ['a', 'b', 'a']
    """
    if not nodes:
        raise RuntimeError("ps.spread=nodes: the Ray cluster has no alive node to place shard actors on")
    return [nodes[i % len(nodes)] for i in range(num_shards)]


def _scheduling(cfg: PSConfig) -> tuple[list[dict], list[str | None]]:
    """The Ray options that place each shard (``ps.spread``; see :class:`PSConfig`), and the node each shard
    is meant for (None: anywhere)."""
    if cfg.spread == "spread":
        return [{"scheduling_strategy": "SPREAD"}] * cfg.num_shards, [None] * cfg.num_shards
    if cfg.spread == "nodes":
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        layout = shard_node_layout(cfg.num_shards, alive_node_ids())
        return [{"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)} for node in layout], layout
    return [{}] * cfg.num_shards, [None] * cfg.num_shards


def misplaced(targets: list, placed: list, alive: set) -> list[int]:
    """The shards not on the node meant for them while that node is alive (``ps.spread=nodes``).

    >>> misplaced(["a", "b", None], ["a", "a", "a"], {"a", "b"})
    [1]
    >>> misplaced(["a", "b"], ["a", "a"], {"a"})  # b is gone: shard 1 stays where the fallback put it
    []
    """
    return [i for i, t in enumerate(targets) if t is not None and placed[i] != t and t in alive]


PLACEMENT_ATTEMPTS = 4  # ps.spread=nodes: new actors for a shard that a soft affinity put off its node


def create_shard_actors(cfg: PSConfig) -> list:
    """Start ``cfg.num_shards`` shard actors (laid out over the nodes as ``cfg.spread`` says) and wait
    until each holds its tables.

    ``ps.spread=nodes`` uses a soft node affinity (a node lost meanwhile must not stop the run), and Ray falls
    back to another node when the scheduler does not know the target node yet (a node that just joined):
    seen as both shards on one node of a fresh two-node cluster. A new shard holds nothing yet, so a shard
    found off its node while that node is alive is replaced (up to ``PLACEMENT_ATTEMPTS`` times, then it
    stays where Ray put it, with a warning)."""
    import ray

    remote_cls = ray.remote(ShardHost)
    options, targets = _scheduling(cfg)

    def start(i: int):
        return remote_cls.options(num_cpus=cfg.actor_num_cpus, max_concurrency=1000, **options[i]).remote(cfg, i)

    actors = [start(i) for i in range(cfg.num_shards)]
    try:
        for i, actor in enumerate(actors):
            get(actor.ready.remote(), i)
        for attempt in range(1, PLACEMENT_ATTEMPTS + 1):
            if all(t is None for t in targets):
                break
            alive = set(alive_node_ids())
            placed = [get(a.node_id.remote(), i) for i, a in enumerate(actors)]
            off = misplaced(targets, placed, alive)
            if not off:
                break
            if attempt == PLACEMENT_ATTEMPTS:
                log.warning("ps.spread=nodes: shards %s are not on their nodes after %d attempts", off, attempt)
                break
            time.sleep(0.5 * attempt)  # the scheduler's view of a new node catches up
            for i in off:
                kill([actors[i]])
                actors[i] = start(i)
            for i in off:
                get(actors[i].ready.remote(), i)
    except Exception:
        kill(actors)
        raise
    return actors


def submit(actor, method: str, *args):
    """Start ``actor.method(*args)``; returns an object ref (a concurrent Future for an in-process shard)."""
    from paramserver.inprocess import InProcessShard

    if isinstance(actor, InProcessShard):
        return actor.call(method, *args)
    return getattr(actor, method).remote(*args)


def get(ref, shard: int, timeout_s: float | None = None):
    """Wait for one shard's reply; PS errors come back as themselves, a dead or silent shard
    as ShardUnavailableError."""
    import concurrent.futures

    if isinstance(ref, concurrent.futures.Future):  # an in-process shard: its errors come back as themselves
        try:
            return ref.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise ShardUnavailableError(
                shard, f"no reply within {timeout_s} s (sync mode: does every worker push every step?)"
            ) from None
    import ray
    from ray import exceptions as rex

    try:
        return ray.get(ref, timeout=timeout_s)
    except rex.GetTimeoutError:
        raise ShardUnavailableError(
            shard, f"no reply within {timeout_s} s (sync mode: does every worker push every step?)"
        ) from None
    except rex.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, rex.RayError):
            raise cause from None
        raise ShardUnavailableError(shard, repr(exc)) from None
    except (rex.RayActorError, rex.ActorUnavailableError, rex.ObjectLostError) as exc:
        raise ShardUnavailableError(shard, f"{type(exc).__name__}: {exc}") from None


def get_many(refs: list, timeout_s: float | None = None) -> list:
    """Wait for ``[(shard, ref)]`` with ONE ``ray.get``; on any failure, each reply is fetched alone so the
    error names its shard (see :func:`get`)."""
    import concurrent.futures

    if len(refs) == 1 or isinstance(refs[0][1], concurrent.futures.Future):
        return [get(ref, s, timeout_s) for s, ref in refs]
    import ray

    try:
        return ray.get([ref for _, ref in refs], timeout=timeout_s)
    except Exception:
        return [get(ref, s, timeout_s) for s, ref in refs]


def kill(actors: list) -> None:
    from paramserver.inprocess import InProcessShard

    for actor in [a for a in actors if isinstance(a, InProcessShard)]:
        actor.close()
    actors = [a for a in actors if not isinstance(a, InProcessShard)]
    if not actors:
        return
    import ray

    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass


__all__ = ["ShardHost", "alive_node_ids", "create_shard_actors", "get", "get_many", "kill", "merge_pulls", "submit"]
