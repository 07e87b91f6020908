"""Inputs and the incoming directory as fsspec URLs, against a real S3 API on loopback
(moto's server in a thread, bound to 127.0.0.1 on a free port; s3fs talks HTTP to it)."""

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from trainer.data import DataLedger, Validator, iter_batches, load_spec, read_data_file
from trainer.data.follow import follow_data_files

ROWS = [f"{u},{u * 7},{u % 3},{'buy' if u % 4 == 0 else 'pv'},{1511658000 + u}\n" for u in range(1, 41)]


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3(s3_server, monkeypatch):
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    if not fs.exists("logs"):
        fs.mkdir("logs")
    yield fs
    for path in fs.find("logs"):
        fs.rm(path)
    s3fs.S3FileSystem.clear_instance_cache()


def test_validate_and_read_from_s3_urls(s3):
    s3.pipe("logs/day1/part-1.csv", "".join(ROWS[:20]).encode())
    s3.pipe("logs/day1/part-2.csv", "".join(ROWS[20:]).encode())
    s3.pipe("logs/day1/.part-3.csv.tmp", b"half written")
    v = Validator(load_spec("taobao"))
    got = sum(len(b) for b in iter_batches(["s3://logs/day1/"], v, progress=False))
    assert got == 40 and v.report.files == 2 and v.report.balanced
    batch = read_data_file("s3://logs/day1/part-2.csv", Validator(load_spec("taobao")))
    assert len(batch) == 20


def test_follow_an_s3_prefix_as_files_land(s3):
    ledger = DataLedger()
    assert list(follow_data_files(None, "s3://logs/incoming/", ledger, drain=True, poll_s=0.05)) == []  # no prefix yet
    s3.pipe("logs/incoming/part-1.csv", "".join(ROWS[:10]).encode())
    v = Validator(load_spec("taobao"), stream=True)
    seen = []
    for ref in follow_data_files(None, "s3://logs/incoming/", ledger, drain=True, poll_s=0.05, settle_s=0.0):
        batch = read_data_file(ref, v)
        ledger.record(ref, v.last_file.rows_in, complete=v.last_file.complete)
        seen.append((ref.name, len(batch)))
        if ref.name == "part-1.csv":  # a second file lands while the first is being trained
            s3.pipe("logs/incoming/part-2.csv", "".join(ROWS[10:25]).encode())
    assert seen == [("part-1.csv", 10), ("part-2.csv", 15)]
    assert [e.rows for e in ledger.entries] == [10, 15] and all(len(e.sha256) == 64 for e in ledger.entries)
    # nothing new: a second follow over the same prefix takes nothing again
    assert list(follow_data_files(None, "s3://logs/incoming/", ledger, drain=True, poll_s=0.05, settle_s=0.0)) == []
