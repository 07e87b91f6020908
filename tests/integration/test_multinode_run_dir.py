"""``freshrec stream`` driving a two-node Ray cluster with no shared disk in the run's path (issue 21): the data
files and the version store on S3 (moto's server on loopback) reached through ``--storage-option`` alone (no
AWS variable anywhere: the nodes are started without them), the Ray Train worker on a node of its own, and the
driver's run directory filled by the driver from what rank 0 sends through Ray (metrics.jsonl, ledger.json,
dense.pt): the driver prints a line per data file and ``freshrec report`` on the driver's node reports the run.

On this one machine the nodes do share a disk; what the test pins is that the driver's run directory is complete
although rank 0 runs on another node (the head has no CPUs, a Ray Train worker needs one) and the workers never
open it (trainer/worker.py writes no file: tests/unit/test_run_book.py).
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from tests.unit.moto_s3 import s3_server  # noqa: F401 (pytest fixture)

pytestmark = pytest.mark.integration
ARGS = ["--spec", "taobao", "--batch-size", "128", "--seed", "7", "--ps-shards", "2"]
ARGS += ["--set", "ps.placement=ray", "--set", "ps.spread=nodes"]
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
)


@pytest.fixture(scope="module")
def cluster(s3_server):  # noqa: F811 (the fixture imported above)
    """Two nodes started with no AWS variable in their environment; the CLI joins with ``--address``."""
    import ray

    from tests.support.multinode import LocalCluster

    if ray.is_initialized():  # the shared embedded Ray of other modules (conftest stops it before this module)
        ray.shutdown()
    saved = {k: os.environ.pop(k) for k in AWS_VARIABLES if k in os.environ}
    local = LocalCluster()
    try:
        yield local
    finally:
        ray.shutdown()
        local.shutdown()
        os.environ.update(saved)


@pytest.fixture
def bucket(s3_server):  # noqa: F811
    """``(url_of(prefix), storage options, upload(local_path, prefix))`` on a fresh bucket."""
    import boto3

    name = f"run-dir-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    s3.create_bucket(Bucket=name)

    def upload(path, prefix: str) -> None:
        s3.put_object(Bucket=name, Key=f"{prefix}/{path.name}", Body=path.read_bytes())

    options = {
        "endpoint_url": s3_server,
        "key": "t",
        "secret": "t",
        "use_listings_cache": False,
        "client_kwargs": {"region_name": "us-east-1"},
    }
    return (lambda prefix: f"s3://{name}/{prefix}"), options, upload


def test_stream_on_another_node_fills_the_drivers_run_directory_and_reads_s3_with_storage_options(
    cluster, bucket, data_files, uninterrupted, tmp_path, capsys
):
    import ray
    import torch

    from cluster.cli import main
    from trainer import bundle
    from versions import VersionStore

    want, _ = uninterrupted
    url, options, upload = bucket
    for f in data_files:
        upload(f, "incoming")
    names = [f.name for f in data_files]
    flags = [f"--storage-option={k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in options.items()]
    run_dir = tmp_path / "driver-run"
    argv = ["stream", "--incoming", url("incoming"), "--drain", "--store", url("versions"), "--run-dir", str(run_dir)]
    rc = main([*argv, *ARGS, "--address", cluster.address, *flags])
    out = capsys.readouterr().out
    assert rc == 0, out

    # rank 0 ran on another node: the driver's node (the head) has no CPU for a Ray Train worker
    here = ray.get_runtime_context().get_node_id()
    assert [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n["NodeID"] == here] == [0]
    # the driver printed one line per data file, as rank 0 finished it
    assert [n for n in names if any(line.split()[1:2] == [n] for line in out.splitlines())] == names, out
    # ... and wrote the run directory's files from what rank 0 sent
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == names
    assert [e["file"] for e in json.loads((run_dir / "ledger.json").read_text())["entries"]] == names
    dense = torch.load(run_dir / "dense.pt")
    assert dense["step"] == records[-1]["step"]

    store = VersionStore(url("versions"), options)
    latest = store.latest()
    assert store.manifest(latest).model_digest == want  # the one-process reference's model
    assert [e.file for e in bundle.read_ledger(store, latest).entries] == names
    assert "storage_options" not in json.dumps(store.manifest(latest).extra)  # credentials stay out of versions

    rc = main(["report", "--run-dir", str(run_dir), "--store", url("versions"), *flags])
    assert rc == 0
    report = (run_dir / "report" / "report.md").read_text()
    assert f"data files trained: **{len(names)}**" in report, report
    assert f"versions: **{len(store.versions())}** committed" in report, report
