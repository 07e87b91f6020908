"""A bounded, open-loop gRPC load generator (asyncio, loopback): a fixed offered load, latencies, errors.

Requests are sent at fixed times t0 + i / qps whatever the answers (open loop, so a slow
server cannot lower the load it is measured under); a request's latency runs from its
scheduled time to its answer. Bounded in count (qps x seconds) and time (a per-call deadline).

The generator's own cost is measured with it: ``loadgen_cpu_share`` is the CPU time of this process
during the phase over its wall time (1.0 = one core busy: the generator then competes with the
server for the machine), ``send_lag_p99_ms`` how late the generator sent its requests (a late send
counts in the latency, since latency runs from the scheduled time).

    res = asyncio.run(offered_load(lambda stub, i: stub.Score(reqs[i % 64]), target, qps=200, seconds=10))
    res.summary()   # {"sent": 2000, "ok": 2000, "errors": 0, "p50_ms": 2.1, "p99_ms": 6.3, "qps": 199.7}
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections import Counter

import numpy as np


@dataclasses.dataclass
class LoadResult:
    latencies_ms: list[float]
    errors: Counter
    sent: int
    wall_s: float
    versions: list[tuple[float, int]]  # (answer time, model_version) of each answer
    cpu_s: float = 0.0  # CPU seconds of this process (every thread) during the phase
    send_lag_ms: list[float] = dataclasses.field(default_factory=list)  # send time - scheduled time

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        lag = np.asarray(self.send_lag_ms) if self.send_lag_ms else np.asarray([0.0])
        return {
            "sent": self.sent,
            "ok": len(self.latencies_ms),
            "errors": sum(self.errors.values()),
            "error_codes": dict(self.errors),
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "qps": len(self.latencies_ms) / self.wall_s,
            "loadgen_cpu_share": self.cpu_s / self.wall_s,
            "send_lag_p99_ms": float(np.percentile(lag, 99)),
        }


async def offered_load(
    call,
    target: str,
    qps: float,
    seconds: float,
    timeout_s: float = 2.0,
    metadata=(("application", "freshrec"),),
    channels: int = 2,
    stub=None,
    sent_at_key: str | None = None,
) -> LoadResult:
    """``call(stub, i, timeout_s, metadata)`` returns the awaitable of request i on a stub (``stub``: its class,
    default ``ScorerStub``) of a grpc.aio channel. ``sent_at_key``: also send this metadata key with the send's
    ``time.time_ns()`` (a replica with ``serve.request_spans`` measures the arrival lag from it)."""
    import grpc

    if stub is None:
        from serving.wire import pb_grpc

        stub = pb_grpc.ScorerStub
    chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    stubs = [stub(c) for c in chans]
    n = int(qps * seconds)
    lat: list[float] = []
    versions: list[tuple[float, int]] = []
    errors: Counter = Counter()
    lag: list[float] = []

    async def one(i: int, due: float) -> None:
        lag.append((time.perf_counter() - due) * 1e3)
        md = metadata if sent_at_key is None else (*metadata, (sent_at_key, str(time.time_ns())))
        try:
            r = await call(stubs[i % channels], i, timeout_s, md)
            now = time.perf_counter()
            lat.append((now - due) * 1e3)
            versions.append((time.time(), int(getattr(r, "model_version", 0))))
        except grpc.RpcError as exc:
            errors[exc.code().name] += 1
        except Exception as exc:
            errors[type(exc).__name__] += 1

    try:
        for c in chans:
            await c.channel_ready()
        t0 = time.perf_counter() + 0.05
        cpu0 = time.process_time()
        tasks = []
        for i in range(n):
            due = t0 + i / qps
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        for c in chans:
            await c.close()
    return LoadResult(lat, errors, n, wall, versions, cpu, lag)


def run_load(call, target: str, qps: float, seconds: float, **kw) -> LoadResult:
    return asyncio.run(offered_load(call, target, qps, seconds, **kw))


def median_of(rounds: list[dict]) -> dict:
    """Median and range over rounds of p50_ms, p99_ms and qps (summaries of :func:`run_load`); errors summed."""
    out = {}
    for key in ("p50_ms", "p99_ms", "qps"):
        vals = [r[key] for r in rounds]
        out[key] = statistics.median(vals)
        out[f"{key}_range"] = [min(vals), max(vals)]
    out["errors"] = sum(r["errors"] for r in rounds)
    return out
