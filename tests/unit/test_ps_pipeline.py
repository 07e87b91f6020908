"""Sync pipelining (``ps.pipeline_depth``) and sync prefetch (``ps.sync_prefetch``): the same core over
in-process PS shards and over the local backend ends bit-identical under eviction pressure; prefetch is
exact (equal to plain sync); depth d really reads rows d updates stale; the shard waits accordingly."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from common.config import ConfigError
from paramserver import PSConfig, TableConfig, create_parameter_server, wire
from paramserver.actor import ShardHost
from tests.support.data import synthetic_file
from trainer.backends import LocalBackend, ps_config_for
from trainer.config import ModelConfig, TrainConfig
from trainer.core import TrainerCore
from trainer.data import load_spec

SPEC = load_spec("taobao")
TCFG = TrainConfig(batch_size=64, seed=5, sparse_lr=0.1)
PRESSURE = dict(capacity_per_shard=150, ttl_versions=8, lfu_decay_every=4)  # well below the id universe


def _batches():
    return [synthetic_file(SPEC, 700, seed=s) for s in range(3)]


def _train(backend, batches):
    core = TrainerCore(SPEC, ModelConfig(), TCFG, backend)
    for i, b in enumerate(batches):
        core.step_file(b, f"f{i}")
    return core


def _state(core):
    return core.dense_state(), core.backend.table_state(), [m.auc for m in core.validator.files]


def _assert_same(a, b):
    for k, v in a[0].items():
        assert torch.equal(b[0][k], v), k
    for table, arrays in a[1].items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(b[1][table][key], value, err_msg=f"{table} {key}")
    assert a[2] == b[2]


@pytest.mark.parametrize("extra", [dict(pipeline_depth=1), dict(pipeline_depth=2), dict(sync_prefetch=True)])
def test_in_process_shards_equal_the_local_backend_when_pipelined_or_prefetching(extra):
    batches = _batches()
    local = _train(LocalBackend(ps_config_for(SPEC, TCFG, PSConfig(num_shards=1, **PRESSURE, **extra))), batches)
    stats = local.backend.shard.stats()
    assert stats["evicted_lfu"] > 1000 and stats["refused_rows"] > 0
    client = create_parameter_server(
        ps_config_for(SPEC, TCFG, PSConfig(num_shards=2, **PRESSURE, **extra)), placement="in_process"
    )
    try:
        ps = _train(client, batches)
        st = client.stats()
        assert sum(s["leases"] for s in st) == 0 and sum(s["lease_timeouts"] for s in st) == 0
        assert sum(s["version"] for s in st) == 2 * local.step
        ps_state = _state(ps)
    finally:
        client.shutdown()
    one = create_parameter_server(
        ps_config_for(SPEC, TCFG, PSConfig(num_shards=1, **PRESSURE, **extra)), placement="in_process"
    )
    try:  # one shard of the local backend's capacity: bit-identical, eviction included
        _assert_same(_state(local), _state(_train(one, batches)))
    finally:
        one.shutdown()
    assert ps_state[2] and all(np.isfinite(ps_state[2]))


def test_sync_prefetch_is_exact_and_pipelining_is_stale():
    """Without eviction pressure, prefetching step k+1's untouched ids changes nothing at all; a pipeline
    depth of 1 trains on rows one update old, so the parameters differ (but training still learns)."""
    batches = _batches()
    plain = _state(_train(LocalBackend(ps_config_for(SPEC, TCFG, PSConfig(num_shards=1))), batches))
    pre = _state(_train(LocalBackend(ps_config_for(SPEC, TCFG, PSConfig(num_shards=1, sync_prefetch=True))), batches))
    for k, v in plain[0].items():
        assert torch.equal(pre[0][k], v), k
    for table, arrays in plain[1].items():
        for key in ("ids", "rows", "opt_state_0", "count"):  # last_seen differs: the prefetch sees ids a step early
            np.testing.assert_array_equal(pre[1][table][key], arrays[key], err_msg=f"{table} {key}")
    assert pre[2] == plain[2]
    stale = _state(_train(LocalBackend(ps_config_for(SPEC, TCFG, PSConfig(num_shards=1, pipeline_depth=1))), batches))
    assert not np.array_equal(stale[1]["item"]["rows"], plain[1]["item"]["rows"])
    assert stale[2][-1] > 0.6 and abs(stale[2][-1] - plain[2][-1]) < 0.05


def test_the_shard_answers_a_stale_pull_once_the_step_it_needs_is_applied():
    cfg = PSConfig(tables=(TableConfig("t", 4),), mode="sync")
    host = ShardHost(cfg, 0, set_threads=False)
    ids = wire.pack_ids({"t": (np.array([1, 2]), np.array([1, 1]))})
    grads = wire.pack_grads({"t": (np.array([1, 2]), np.ones((2, 4), np.float32))})

    async def scenario():
        await host.pull(ids, 0, 0, True)
        await host.pull(ids, 1, 0, True, 1)  # step 1, one step stale: needs nothing applied
        exact = asyncio.ensure_future(host.pull(ids, 2, 0, True, 0))
        stale = asyncio.ensure_future(host.pull(ids, 2, 0, True, 1))
        await asyncio.sleep(0.01)
        assert not exact.done() and not stale.done()
        await host.push(grads, 0, 0, None)  # step 0 applied: the one-stale pull of step 2 may go
        await asyncio.sleep(0.01)
        assert stale.done() and not exact.done()
        await host.push(grads, 1, 0, None)
        await asyncio.sleep(0.01)
        assert exact.done()
        with pytest.raises(Exception, match="stale must be"):
            await host.pull(ids, 3, 0, True, -1)

    asyncio.run(scenario())


def test_pipeline_options_are_checked():
    with pytest.raises(ConfigError, match="pipeline_depth must be"):
        PSConfig(tables=(TableConfig("t", 4),), pipeline_depth=9)
    with pytest.raises(ConfigError, match="for sync mode"):
        PSConfig(tables=(TableConfig("t", 4),), pipeline_depth=1, mode="async")
    with pytest.raises(ConfigError, match="sync_prefetch"):
        PSConfig(sync_prefetch="yes")


def test_the_async_trainer_over_in_process_shards_reports_the_drops_the_shards_make():
    """Async mode (the placement a one-worker run gets): prefetched rows stay leased, and with a staleness bound
    of 0 every part the shards drop is counted by the trainer."""
    client = create_parameter_server(
        ps_config_for(SPEC, TCFG, PSConfig(num_shards=2, mode="async", max_staleness=0, capacity_per_shard=150)),
        placement="in_process",
    )
    try:
        core = _train(client, _batches())
        stats = client.stats()
    finally:
        client.shutdown()
    dropped = sum(s["dropped_stale_pushes"] for s in stats)
    assert dropped > 0 and core.dropped_pushes == dropped
    assert sum(s["leases"] for s in stats) == 0 and sum(s["evicted_lfu"] for s in stats) > 0


def test_the_shard_starts_one_clients_calls_in_the_order_sent():
    """Ray may start an async actor's tasks out of order; a call that arrives before its predecessor waits for
    it, so a pull sent after a push reads the pushed rows whatever the arrival order."""
    cfg = PSConfig(tables=(TableConfig("t", 4),), mode="async")
    host = ShardHost(cfg, 0, set_threads=False)
    ids = wire.pack_ids({"t": (np.array([1, 2]), np.array([1, 1]))})
    grads = wire.pack_grads({"t": (np.array([1, 2]), np.ones((2, 4), np.float32))})

    async def scenario():
        before, marker = await host.pull(ids, 0, 0, True, 0, ("c", 0))
        late_pull = asyncio.ensure_future(host.pull(ids, 1, 0, True, 0, ("c", 2)))  # arrives first
        await asyncio.sleep(0.01)
        assert not late_pull.done()
        await host.push(grads, 0, 0, marker, ("c", 1))
        after, _ = await late_pull
        assert not np.array_equal(after, before)  # the pull ran after the push it was sent after
        np.testing.assert_array_equal(after, host.shard.read("t", np.array([1, 2])).reshape(-1))
        with pytest.raises(Exception, match="arrived twice"):
            await host.pull(ids, 1, 0, False, 0, ("c", 1))
        other, _ = await host.pull(ids, None, 0, False, 0, ("d", 0))  # another client has its own order
        np.testing.assert_array_equal(other, after)

    asyncio.run(scenario())
