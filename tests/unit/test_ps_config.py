"""Typed configs explain their errors; PS errors pickle with their context."""

import pickle

import numpy as np
import pytest

from cluster.config import ConfigError
from paramserver import (
    BadPullError,
    BadPushError,
    PSConfig,
    ShardUnavailableError,
    TableConfig,
    UnknownTableError,
    init_rows,
)
from paramserver.shard import EmbeddingShard

T = (TableConfig("a", 8),)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tables=(TableConfig("a", 8), TableConfig("a", 4))), "unique"),
        (dict(tables=T, optimizer="adam"), "needs CUDA"),
        (dict(tables=T, optimizer="lamb"), "optimizer must be one of"),
        (dict(tables=T, num_shards=0), "num_shards must be an integer >= 1"),
        (dict(tables=T, learning_rate=-1.0), "learning_rate"),
        (dict(tables=T, mode="bsp"), "mode must be one of"),
        (dict(tables=T, weights_dtype="bf16"), "weights_dtype"),
        (dict(tables=T, ttl_versions=0), "ttl_versions"),
        (dict(tables=T, ttl_seconds=-1.0), "ttl_seconds"),
        (dict(tables=T, lfu_decay=1.0), "lfu_decay"),
        (dict(tables=T, lfu_decay_every=0), "lfu_decay_every"),
        (dict(tables=T, full_table="grow"), "full_table"),
        (dict(tables=T, lease_timeout_s=0), "lease_timeout_s"),
        (dict(tables=T, max_staleness=-1), "max_staleness"),
    ],
)
def test_bad_configs_say_what_to_fix(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PSConfig(**kwargs)


def test_table_dim_must_suit_fbgemm():
    with pytest.raises(ConfigError, match="multiple of 4"):
        TableConfig("x", 6)


def test_from_dict_refuses_unknown_keys_and_builds_tables():
    cfg = PSConfig.from_dict({"tables": [{"name": "u", "dim": 4}], "num_shards": 2})
    assert cfg.tables == (TableConfig("u", 4),) and cfg.num_shards == 2
    with pytest.raises(ConfigError, match="unknown key"):
        PSConfig.from_dict({"tables": [{"name": "u", "dim": 4}], "shards": 2})
    with pytest.raises(ConfigError, match=r"tables\[0\]"):
        PSConfig.from_dict({"tables": [{"name": "u", "dim": 4, "size": 3}]})


def test_adam_on_auto_device_without_cuda_is_a_config_error():
    cfg = PSConfig(tables=T, optimizer="adam", device="auto")
    with pytest.raises(ConfigError, match="needs CUDA"):
        EmbeddingShard(cfg)


@pytest.mark.parametrize(
    "err",
    [
        UnknownTableError("t", ("a", "b")),
        BadPushError("a", "NaN"),
        BadPullError("a", "dtype"),
        ShardUnavailableError(3, "actor died"),
    ],
)
def test_errors_pickle_with_context(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and back.args == err.args


def test_init_rows_is_a_pure_function_of_seed_table_and_id():
    t = TableConfig("item", 16)
    ids = np.array([3, -7, 2**62, 3, 0])
    rows = init_rows(t, ids, seed=5)
    assert rows.dtype == np.float32 and rows.shape == (5, 16)
    assert (np.abs(rows) <= t.scale).all()
    assert (rows[0] == rows[3]).all()
    assert (init_rows(t, ids[::-1], seed=5) == rows[::-1]).all()  # any order
    assert (init_rows(t, ids[1:2], seed=5)[0] == rows[1]).all()  # any batch
    assert not np.allclose(init_rows(t, ids, seed=6), rows)
    assert not np.allclose(init_rows(TableConfig("user", 16), ids, seed=5), rows)
    assert abs(float(init_rows(t, np.arange(20000)).mean())) < 0.01  # centred


def test_eviction_knobs_come_from_the_config_tree_and_reach_the_shards(tmp_path):
    """Admission, capacity, TTL, aged LFU, the full-table policy and lease timeout: YAML, then --set,
    then ps_config_for; a bad value is refused naming the key."""
    from cluster.config import load_run_config
    from trainer.backends import ps_config_for
    from trainer.data import load_spec

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("ps: {capacity_per_shard: 4096, ttl_versions: 500, lfu_decay_every: 100}\n")
    cfg = load_run_config(
        yaml_file,
        [
            "ps.ttl_seconds=3600",
            "ps.lfu_decay=0.75",
            "ps.full_table=error",
            "ps.admission_threshold=2",
            "ps.lease_timeout_s=60",
        ],
    )
    ps = ps_config_for(load_spec("taobao"), cfg.train, cfg.ps, num_workers=2)
    assert (
        ps.capacity_per_shard,
        ps.ttl_versions,
        ps.ttl_seconds,
        ps.lfu_decay_every,
        ps.lfu_decay,
        ps.full_table,
        ps.admission_threshold,
        ps.lease_timeout_s,
        ps.num_workers,
    ) == (4096, 500, 3600, 100, 0.75, "error", 2, 60, 2)
    assert cfg.to_dict()["ps"]["lfu_decay_every"] == 100
    with pytest.raises(ConfigError, match="ps.lfu_decay must"):
        load_run_config(None, ["ps.lfu_decay=2"])
    with pytest.raises(ConfigError, match="ttl_steps"):  # gone: TTL is in versions or seconds
        load_run_config(None, ["ps.ttl_steps=10"])
