"""The version store against a real S3 API: moto's server on 127.0.0.1 (a free port), through s3fs."""

import numpy as np
import pytest
from moto_s3 import s3_options, s3_server  # noqa: F401 (pytest fixtures)

from versions import CorruptVersionError, VersionStore, table_parts

KEYED = {"role": "table", "table": "user", "merge": "by_id"}


@pytest.fixture
def s3_store(s3_options):  # noqa: F811 (the fixture from moto_s3)
    url_of, options = s3_options  # the listings cache on, as by default
    return VersionStore(url_of("run-1/versions"), options)


def test_s3_round_trip_delta_chain_verify_and_gc(s3_store):
    store = s3_store
    w = store.begin("full", step=5)
    ids = np.arange(1000, dtype=np.int64)
    rows = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float16)
    p = w.write_part("ps/shard-0/user", {"ids": ids, "rows": rows, "deleted": np.empty(0, np.int64)}, KEYED)
    d = w.write_part("dense", {"w": np.ones((4, 4), np.float32)}, {"role": "dense"})
    w.commit([p, d], ledger={"version": 2, "entries": [{"file": "a.parquet", "rows": 9, "complete": True}]})
    w2 = store.begin("delta", parent=1, step=6)
    p2 = w2.write_part(
        "ps/shard-0/user",
        {"ids": np.array([3, 2000]), "rows": np.zeros((2, 16), np.float16), "deleted": np.array([4])},
        KEYED,
    )
    unfinished = store.begin("full", step=7)  # never committed
    unfinished.write_part("dense", {"w": np.zeros(1)})
    w2.commit([p2])
    fresh = VersionStore(store.url, store.storage_options)  # another process: only what is on S3
    assert fresh.versions() == [1, 2] and fresh.latest() == 2
    assert fresh.manifest(1).data_files == ("a.parquet",)
    got = fresh.materialize(2, table_parts("user"))
    assert len(got["ids"]) == 1000 and 4 not in got["ids"] and got["ids"][-1] == 2000
    np.testing.assert_array_equal(got["rows"][:3], rows[:3])  # ids 0, 1, 2 untouched
    assert (got["rows"][3] == 0).all() and got["ids"][3] == 3  # id 3 replaced by the delta
    assert fresh.verify(1) == [] and fresh.verify(2) == [] and fresh.latest_valid() == 2
    path = store.part_path(1, "ps/shard-0/user")
    data = bytearray(store.fs.cat_file(path))
    data[-1] ^= 1
    store.fs.pipe_file(path, bytes(data))
    with pytest.raises(CorruptVersionError, match="checksum"):
        VersionStore(store.url, store.storage_options).read_part(1, "ps/shard-0/user")
    assert VersionStore(store.url, store.storage_options).latest_valid() is None
    assert fresh.gc(keep=1, grace_s=0)["removed_uncommitted"] == []  # in flight for the live writer
    store.release_writer()  # the writer stops (as if it crashed): its unfinished version can never commit now
    assert fresh.gc(keep=1, grace_s=0)["removed_uncommitted"] == [unfinished.version]


def test_an_unreachable_endpoint_is_a_store_unavailable_error():
    import socket

    pytest.importorskip("s3fs", reason="s3fs is needed for the S3 tests; pip install -r requirements-dev.txt")
    from versions import StoreUnavailableError

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = VersionStore(
        "s3://models/run",
        {
            "endpoint_url": f"http://127.0.0.1:{port}",
            "key": "x",
            "secret": "y",
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
        },
    )
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}") as err:
        store.versions()
    assert "storage_options" in str(err.value)
