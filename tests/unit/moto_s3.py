"""Shared pytest fixtures: moto's S3 server on 127.0.0.1 (a free port) and fresh buckets through s3fs.

Import the fixtures into a test module (``from moto_s3 import s3_server, s3_options  # noqa: F401``).
"""

import uuid

import pytest


@pytest.fixture(scope="module")
def s3_server():
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.skip(f"moto[server] and s3fs are needed for the S3 tests ({exc}); pip install -r requirements-dev.txt")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        server.start()
    except Exception as exc:
        pytest.skip(f"moto's S3 server could not start on 127.0.0.1: {exc}")
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    yield endpoint
    server.stop()  # the writer leases its stores still hold are forgotten after the module (tests/conftest.py)


@pytest.fixture
def s3_options(s3_server, monkeypatch):
    """``(url_of(name) -> s3://fresh-bucket/name, storage_options)``: a new bucket per test."""
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    options = {"endpoint_url": s3_server, "key": "test", "secret": "test"}
    return (lambda name="versions": f"s3://{bucket}/{name}"), options
