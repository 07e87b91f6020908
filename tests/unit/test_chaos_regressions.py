"""Defects the chaos harness found outside the data layer, kept as regression tests (moto's S3 server on loopback)."""

from __future__ import annotations

import time

import numpy as np
import pytest


@pytest.fixture
def s3_endpoint(monkeypatch):
    try:
        import boto3
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.skip(f"moto[server] and s3fs are needed ({exc}); pip install -r requirements-dev.txt")
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="models")
    yield endpoint
    server.stop()


@pytest.mark.parametrize("wrapped", [False, True], ids=["s3", "faulty-over-s3"])
def test_a_poller_on_s3_sees_a_version_committed_by_another_writer_after_it_looked_mid_write(s3_endpoint, wrapped):
    """Found by bench chaos (store=s3): s3fs caches each directory's listing and ``invalidate_cache(root)``
    does not clear the version directories' listings, so a poller that listed a version directory while it
    was being written (no manifest yet) never saw that version committed. Failed before
    ``VersionStore.forget_listings``; also through a wrapper filesystem (``faulty://``, rate 0)."""
    from bench.chaos import faultyfs
    from versions import VersionStore

    options = {"endpoint_url": s3_endpoint, "key": "test", "secret": "test"}
    prefix = f"models/poller-{'wrapped' if wrapped else 'plain'}"  # moto keeps its buckets per process
    if wrapped:
        faultyfs.register()
        reader = VersionStore(f"faulty://{prefix}", {"target": "s3", "options": options, "rate": 0.0, "enospc": 0.0})
    else:  # a serving replica, a gc loop, the CLI's version ticker
        reader = VersionStore(f"s3://{prefix}", options)
    writer = VersionStore(f"s3://{prefix}", {**options, "skip_instance_cache": True})  # another process
    w = writer.begin("full", step=1)
    w.commit([w.write_part("dense", {"w": np.ones(2)}, {"role": "dense"})])
    assert reader.latest() == 1 and reader.versions() == [1]
    w = writer.begin("full", step=2)
    assert reader.latest() == 1 and reader.versions() == [1]  # looked (and listed) while version 2 was written
    w.commit([w.write_part("dense", {"w": np.ones(2)}, {"role": "dense"})])
    assert reader.latest() == 2 and reader.versions() == [1, 2]


def test_faulty_over_a_local_directory_writes_whole_objects_atomically(tmp_path):
    """Found by the default chaos seed: over a local directory, faulty://'s pipe_file wrote MANIFEST.json in
    place, so the CLI's version ticker parsed an empty manifest (CorruptVersionError) mid-write. An object
    store's PUT is atomic; the wrapper now writes a temporary name and renames it."""
    import fsspec

    from bench.chaos import faultyfs

    faultyfs.register()
    fs, root = fsspec.core.url_to_fs(f"faulty://{tmp_path}/store", rate=0.0, enospc=0.0)
    seen = []
    real = fs.fs.pipe_file

    def spy(path, value, *a, **k):  # what a concurrent reader would find at the final name meanwhile
        seen.append((path, fs.fs.exists(f"{tmp_path}/store/v1/MANIFEST.json")))
        return real(path, value, *a, **k)

    fs.fs.pipe_file = spy
    fs.pipe_file(f"{root}/v1/MANIFEST.json", b'{"version": 1}')
    assert [exists for _, exists in seen] == [False] and ".tmp-" in seen[0][0]
    assert fs.cat_file(f"{root}/v1/MANIFEST.json") == b'{"version": 1}'
    assert sorted(p.name for p in (tmp_path / "store" / "v1").iterdir()) == ["MANIFEST.json"]  # no temp file left


def _commit(store, step: int) -> None:
    w = store.begin("full", step=step)
    w.commit([w.write_part("dense", {"w": np.ones(2)}, {"role": "dense"})])


def test_the_cli_version_ticker_starts_through_store_errors_and_never_ends_the_cli(tmp_path, capsys, monkeypatch):
    """Found by bench chaos (``faulty://`` store): the CLI's ``VersionTicker`` read ``latest()`` in its
    ``__init__`` unguarded, so a store failing a few calls in a row at the start (beyond the store's own 3
    tries) ended ``freshrec stream``; a restart, with the same fault schedule, ended the same way. Its first
    reading is now retried like the other store reads; a store that stays down leaves the reading to the
    thread, and nothing a store raises ends the CLI. Real ``faulty://`` filesystems over a local store."""
    from bench.chaos import faultyfs
    from cluster.commands.train import VersionTicker
    from versions import StoreUnavailableError, VersionStore

    faultyfs.register()
    monkeypatch.setenv(faultyfs.ENV, '{"rate": 0.0, "enospc": 0.0}')
    writer = VersionStore(str(tmp_path))
    _commit(writer, 1)
    state = {"calls": 0, "fail_first": 0}

    def decide(self, method, path):  # the first `fail_first` store calls fail (connection reset), then none
        state["calls"] += 1
        return "reset" if state["calls"] <= state["fail_first"] else None

    monkeypatch.setattr(faultyfs.FaultyFileSystem, "_decide", decide)
    url = f"faulty://{tmp_path}"
    state.update(calls=0, fail_first=4)
    with pytest.raises(StoreUnavailableError):  # more failures in a row than the store's own tries
        VersionStore(url).latest()

    state.update(calls=0, fail_first=4)
    ticker = VersionTicker(url, poll_s=0.05, backoff_s=0.01)  # raised StoreUnavailableError before the fix
    assert ticker.seen == 1 and state["calls"] > 4  # retried past the failures, then took its reading
    with ticker:
        _commit(writer, 2)
        deadline = time.monotonic() + 10
        while ticker.seen != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "committed version 2: full" in capsys.readouterr().out

    state.update(calls=0, fail_first=10**9)  # a store that does not answer at all
    ticker = VersionTicker(url, poll_s=0.05, attempts=3, backoff_s=0.01)
    assert ticker.seen is None and "not answering" in capsys.readouterr().err
    with ticker:  # the thread keeps polling; leaving the block (a final tick) raises nothing
        time.sleep(0.2)
    assert ticker.seen is None
    state.update(fail_first=0)  # the store answers again: the thread's next poll takes the first reading
    ticker._tick()
    assert ticker.seen == 2
