"""Issue 22's CPU per request (``bench serve``'s ``cpu_ms_per_request``) and the replica's cProfile, as pure logic:
the per-process arithmetic, the medians and the freshrec-over-no-op figures per round, the pstats summary per
request, and the replica's cProfile switch (called without Ray, as Ray Serve would on the request loop)."""

from __future__ import annotations

import asyncio

from bench.profiling import actor_pids, cpu_ms_per_request, handled_requests, summarize_pstats
from bench.serve import cpu_per_request


def test_cpu_ms_per_request_divides_each_processs_cpu_by_the_requests_sent():
    before = {"replica": 10.0, "proxy": 4.0, "gone": 1.0}
    after = {"replica": 12.5, "proxy": 5.0, "new": 3.0}
    assert cpu_ms_per_request(before, after, 500) == {"replica": 5.0, "proxy": 2.0}
    assert cpu_ms_per_request(before, after, 0) == {}


def _phase(**cpu):
    return {"cpu_ms_per_request": cpu}


def test_cpu_per_request_gives_medians_and_freshrecs_replica_against_the_noop_replica_round_by_round():
    rounds = {
        "Score": {
            "freshrec": [_phase(replica=5.0, proxy=4.0), _phase(replica=6.0, proxy=4.2), _phase(replica=5.5)],
            "noop": [
                _phase(noop_replica=2.5, proxy=4.1, replica=0.1),
                _phase(noop_replica=3.0),
                _phase(noop_replica=2.75),
            ],
            "grpcio": [_phase(grpcio=2.0), _phase(grpcio=2.2), _phase(grpcio=2.1)],
        },
        "Recommend": {"freshrec": [_phase(replica=7.0)], "noop": [{}]},  # a phase without figures: no ratio
    }
    got = cpu_per_request(rounds)
    s = got["Score"]
    assert s["freshrec"] == {"replica": 5.5, "proxy": 4.1}  # proxy: the median of the two rounds that gave it
    assert s["noop"] == {"noop_replica": 2.75, "proxy": 4.1, "replica": 0.1}
    assert s["replica_idle_ms"] == [0.1, None, None]  # freshrec's replica while the no-op app took the load
    assert s["grpcio"] == {"grpcio": 2.1}
    assert s["replica_over_noop"] == [2.0, 2.0, 2.0]
    assert s["replica_minus_noop_ms"] == [2.5, 3.0, 2.75]
    assert got["Recommend"]["freshrec"] == {"replica": 7.0} and "replica_over_noop" not in got["Recommend"]


def _stats():
    # {(file, line, function): (primitive calls, calls, own s, cumulative s)} for 4 requests
    return {
        ("/x/serving/service.py", 262, "score"): (4, 4, 0.001, 0.008),
        ("/x/serving/service.py", 270, "recommend"): (0, 0, 0.0, 0.0),
        ("/x/serving/features.py", 128, "batch"): (4, 4, 0.0005, 0.002),
        ("~", 0, "<built-in method torch._C._nn.linear>"): (20, 20, 0.003, 0.003),
        ("/x/ray/serve/_private/replica.py", 900, "handle_request"): (4, 4, 0.0002, 0.009),
    }


def test_the_replicas_pstats_become_ms_and_calls_per_request():
    stats = _stats()
    assert handled_requests(stats) == 4
    out = summarize_pstats(stats, handled_requests(stats), top=3)
    assert out["requests"] == 4
    assert out["cumulative_ms_per_request"] == [
        ["_private/replica.py:handle_request", 2.25, 1.0],  # 9 ms over 4 requests, one call each
        ["serving/service.py:score", 2.0, 1.0],
        ["~:<built-in method torch._C._nn.linear>", 0.75, 5.0],
    ]
    assert out["own_ms_per_request"] == [
        ["~:<built-in method torch._C._nn.linear>", 0.75, 5.0],
        ["serving/service.py:score", 0.25, 1.0],
        ["serving/features.py:batch", 0.125, 1.0],
    ]
    assert summarize_pstats({}, 0)["requests"] == 1  # nothing profiled: no division by zero


def test_actor_pids_without_ray_finds_nothing_and_does_not_raise():
    assert actor_pids() == {}


def test_the_replicas_cprofile_switch_profiles_the_loops_thread_and_returns_the_raw_table():
    from serving.app import ScorerDeployment

    replica = ScorerDeployment.func_or_class.__new__(ScorerDeployment.func_or_class)
    assert asyncio.run(replica.cprofile("stop")) == {}  # never started: nothing

    def work():
        return sum(i * i for i in range(2000))

    asyncio.run(replica.cprofile("start"))
    for _ in range(3):
        work()
    stats = asyncio.run(replica.cprofile("stop"))
    calls = {name: v[1] for (_, _, name), v in stats.items()}
    assert calls.get("work") == 3
    assert all(len(v) == 4 for v in stats.values())
    assert asyncio.run(replica.cprofile("stop")) == {}  # stopped: a second stop gives nothing


def test_a_phase_reports_each_processs_cpu_per_request_and_the_load_generators():
    """``ReplicaPerf.phase`` (no Ray: the handle is not used without spans) on a phase that burns this process's
    CPU: its pid's CPU per request sent, and the load generator's from the LoadResult."""
    import os
    import time
    from collections import Counter

    from bench.loadgen import LoadResult
    from bench.serve import ReplicaPerf

    perf = ReplicaPerf.__new__(ReplicaPerf)
    perf.pids, perf.spans, perf.handle = {"replica": os.getpid()}, False, None

    def run():
        t0 = time.process_time()
        while time.process_time() - t0 < 0.05:  # 50 ms of CPU
            pass
        return LoadResult([1.0] * 10, Counter(), 10, 0.1, [], cpu_s=0.02)

    s = perf.phase("freshrec", run)
    assert s["sent"] == 10 and "replica" not in s
    assert s["cpu_ms_per_request"]["loadgen"] == 2.0  # 20 ms over 10 requests
    assert 4.0 <= s["cpu_ms_per_request"]["replica"] < 50.0  # >= 50 ms of CPU over 10 requests
    assert s["cpu_share"]["replica"] > 0
