"""The in-process placement (shards on threads of this process, no Ray) behind the client's ticket API:
the same results as the local backend, errors as themselves, and no pickling to other processes."""

import pickle

import numpy as np
import pytest

from paramserver import BadPushError, PSConfig, ShardUnavailableError, TableConfig, create_parameter_server
from paramserver.errors import BadPullError
from paramserver.shard import EmbeddingShard

T = (TableConfig("user", 8), TableConfig("item", 4))


def test_in_process_shards_train_like_one_local_shard_and_refuse_bad_calls():
    cfg = PSConfig(tables=T, num_shards=2, capacity_per_shard=64, learning_rate=0.05)
    client = create_parameter_server(cfg, placement="in_process")
    ref = EmbeddingShard(PSConfig(tables=T, capacity_per_shard=128, learning_rate=0.05))
    rng = np.random.default_rng(0)
    try:
        ids = [{t.name: rng.integers(0, 50, 20) for t in T} for _ in range(6)]
        ticket = client.pull_many(ids[0], step=0, lease=True)
        for s in range(6):
            rows = client.wait(ticket)
            want = ref.pull(ids[s], step=s)
            for t in T:
                np.testing.assert_array_equal(rows[t.name], want[t.name])
            grads = {t.name: (ids[s][t.name], rng.standard_normal((20, t.dim)).astype(np.float32)) for t in T}
            ref.push(grads, step=s)
            if s + 1 < 6:
                ticket = client.push_pull(grads, ids[s + 1], step=s)
            else:
                client.wait(client.push_many(grads, step=s))
        assert all(st["leases"] == 0 and st["version"] == 6 for st in client.stats())
        with pytest.raises(BadPushError, match="NaN"):
            client.push("user", np.array([1]), np.full((1, 8), np.nan, np.float32), step=6)
        from paramserver import actor as ps_actor
        from paramserver import wire

        msg = wire.pack_ids({"user": (np.array([1]), np.array([1]))})
        with pytest.raises(BadPullError, match="outside"):  # the shard's own check comes back as itself
            ps_actor.get(ps_actor.submit(client._actors[0], "pull", msg, 6, 5, False), 0)
    finally:
        client.shutdown()
    with pytest.raises(TypeError, match="cannot be sent"):
        pickle.dumps(client)
    with pytest.raises(ShardUnavailableError, match="shut down"):
        client.wait(client.pull("user", np.array([1])))
