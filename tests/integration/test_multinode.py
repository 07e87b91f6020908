"""A multi-node Ray cluster on this machine, with no shared disk in the data path: the version store AND the
incoming data files on S3 (moto's server on loopback), shard actors laid out over the nodes (``ps.spread=nodes``),
the Ray Train worker on a node of its own resources, one Serve replica on the head node.

* Two nodes, a few files: the final ``model_digest`` equals the one-process reference's, and the replica
  answers with the newest committed version.
* Node loss: the node that hosts the training worker and a shard is killed (every process on it, no grace)
  mid-stream; the driver restarts the shards and the worker on the nodes alive from the last committed
  version; the run ends with the uninterrupted digest, every file in the ledger once; the replica kept
  answering from its last version while training was down, and follows again when training resumes.

The cluster is ``ray.cluster_utils.Cluster`` (one GCS of its own, one raylet per node, each node with its own
temp directory); it never writes ``/tmp/ray/ray_current_cluster`` (another engineer's ``ray.init()`` on this
machine would join it), and the driver joins it only through ``ray.init(address=cluster.address)``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager

import pytest

from paramserver.config import PSConfig
from tests.unit.moto_s3 import s3_server  # noqa: F401 (pytest fixture)
from trainer import bundle
from trainer.config import ModelConfig, TrainConfig
from trainer.data import load_spec
from trainer.run import TrainJob, run_ps_training
from versions import VersionStore

pytestmark = pytest.mark.integration
SPEC = load_spec("taobao")
TCFG = TrainConfig(batch_size=128, seed=7)  # as test_recovery's one-process reference (`uninterrupted`)
PS = PSConfig(num_shards=2, placement="ray", spread="nodes")
# what a freshrec run writes into every manifest (the spec and the run config): serving needs it
EXTRA = bundle.version_extra(
    "taobao",
    {
        "model": dataclasses.asdict(ModelConfig()),  # the whole model config: serving builds the model from it
        "train": {"batch_size": 128, "seed": 7},
        "ps": {"num_shards": 2, "placement": "ray", "spread": "nodes"},
    },
)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
OBJECT_STORE = 80 * 1024 * 1024
# a dead node is noticed in about 1.5 s (Ray's default: 5 missed checks of 3 s)
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}


@contextmanager
def _no_address_file():
    """``Cluster`` records its GCS in /tmp/ray/ray_current_cluster, where a plain ``ray.init()`` of another
    process on this machine would find and join it: keep that file as it is."""
    import ray._private.utils as ray_utils

    saved = ray_utils.write_ray_address
    ray_utils.write_ray_address = lambda *args, **kwargs: None
    try:
        yield
    finally:
        ray_utils.write_ray_address = saved


def _twice(start):
    """Ray gives a new raylet 30 s to register (not configurable): on a machine loaded far past its cores that
    can run out once. The processes of a failed start are killed at this process's exit (Ray's atexit hook)."""
    try:
        return start()
    except Exception as exc:
        if "timed out during startup" not in str(exc):
            raise
        return start()


class LocalCluster:
    """A head node (no CPUs: the driver, Serve and its replica, a shard) and worker nodes with CPUs (Ray Train
    workers, shards), each node with its own scratch (temp) directory."""

    def __init__(self) -> None:
        from ray.cluster_utils import Cluster

        self.scratch: list[str] = []
        with _no_address_file():
            self.cluster = _twice(
                lambda: Cluster(
                    initialize_head=True,
                    head_node_args=self._node_args(num_cpus=0, resources={"serving": 1}, _system_config=SYSTEM_CONFIG),
                )
            )
        self.head = self.cluster.head_node
        self.workers = [self.add_worker_node()]

    def _node_args(self, **kw) -> dict:
        scratch = tempfile.mkdtemp(prefix="frn-", dir="/tmp")  # short: Ray's socket paths live under it
        self.scratch.append(scratch)
        return dict(temp_dir=scratch, object_store_memory=OBJECT_STORE, include_dashboard=False, **kw)

    def add_worker_node(self):
        with _no_address_file():
            return _twice(lambda: self.cluster.add_node(**self._node_args(num_cpus=2)))

    def node_id(self, node) -> str:
        return node.node_id

    def shutdown(self) -> None:
        self.cluster.shutdown()
        for d in self.scratch:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(s3_server):  # noqa: F811 (the fixture imported above)
    import ray

    if ray.is_initialized():  # the shared embedded Ray of other modules (conftest stops it before this module)
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # this process (the driver, the store reads of the test)
    local = LocalCluster()
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_server}  # every worker on every node reads data from S3
    try:
        ray.init(
            address=local.cluster.address,
            namespace="freshrec-multinode",
            log_to_driver=False,
            runtime_env={"env_vars": env},
        )
        yield local
    finally:
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            local.shutdown()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture
def bucket(s3_server):  # noqa: F811
    """``(url_of(name), storage_options, upload(local_path, name))`` on a fresh bucket."""
    import boto3

    name = f"multinode-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", **_boto_keys())
    s3.create_bucket(Bucket=name)

    def upload(path, prefix: str) -> None:
        # one PUT: the object appears whole, as a data file landing under its final name must
        s3.put_object(Bucket=name, Key=f"{prefix}/{path.name}", Body=path.read_bytes())

    # no s3fs listing cache: a poller that listed a version directory mid-write would never see it committed
    # (tests/unit/test_chaos_regressions.py, the strict xfail awaiting the store's fix)
    options = {"endpoint_url": s3_server, "key": "test", "secret": "test", "use_listings_cache": False}
    return (lambda prefix: f"s3://{name}/{prefix}"), options, upload


def _boto_keys() -> dict:
    return {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grpc_port(cluster) -> int:
    """Serve with its gRPC proxy on the head node only (every node of this one machine would otherwise bind the
    same port; on separate hosts the default, a proxy per node, is fine)."""
    from ray import serve
    from ray.serve.config import gRPCOptions

    from serving.app import HEALTH_SERVICER_FUNCTION, SEARCH_SERVICER_FUNCTION, SERVICER_FUNCTION, free_port, proxy_env
    from serving.config import Limits

    port = free_port()
    for attempt in range(2):  # a loaded machine can miss Serve's proxy start-up deadline once
        try:
            serve.start(
                proxy_location="HeadOnly",
                http_options={"host": "127.0.0.1", "port": free_port()},
                grpc_options=gRPCOptions(
                    port=port,
                    grpc_servicer_functions=[SERVICER_FUNCTION, SEARCH_SERVICER_FUNCTION, HEALTH_SERVICER_FUNCTION],
                ),
                controller_options={"runtime_env": {"env_vars": proxy_env(Limits().max_request_bytes)}},
            )
            return port
        except Exception:
            serve.shutdown()
            if attempt:
                raise
    raise AssertionError("unreachable")


def _serve(port: int, store_url: str, options: dict):
    """One Scorer replica on the head node (resource ``serving``), following ``store_url``; a ScoringClient."""
    from ray import serve

    from serving.app import APP_NAME, ScorerDeployment
    from serving.client import ScoringClient
    from serving.config import ServeConfig

    cfg = ServeConfig(store_url=store_url, storage_options=options, poll_interval_s=0.1)
    user_config = {"pin_version": None, "poll_interval_s": cfg.poll_interval_s}
    app = ScorerDeployment.options(
        num_replicas=1, user_config=user_config, ray_actor_options={"num_cpus": 0, "resources": {"serving": 0.01}}
    ).bind(cfg)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return ScoringClient(f"127.0.0.1:{port}")


def _stop_serving() -> None:
    from ray import serve

    from serving.app import APP_NAME

    serve.delete(APP_NAME)


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_two_nodes_with_s3_store_and_data_end_with_the_one_process_digest(
    cluster, grpc_port, bucket, data_files, uninterrupted, one_thread, tmp_path
):
    want, _ = uninterrupted
    url, options, upload = bucket
    for f in data_files:
        upload(f, "incoming")
    from paramserver.actor import alive_node_ids

    # the layout is taken from the nodes alive when the shards start: both must be registered by then
    _wait_for(lambda: len(alive_node_ids()) == 2, 60, "both nodes alive in ray.nodes()")
    result, client = run_ps_training(
        TrainJob(
            SPEC,
            tmp_path / "driver-scratch",
            model=ModelConfig(),
            train=TCFG,
            ps=PS,
            incoming=url("incoming"),
            drain=True,
            store_url=url("versions"),
            storage_options=options,
            version_extra=EXTRA,
            keep_ps=True,
        )
    )
    try:
        # one shard on the head, the other on the worker node: both nodes hold rows
        nodes = client.node_ids()
        assert cluster.node_id(cluster.head) in nodes and len(set(nodes)) == 2, nodes
    finally:
        client.shutdown()
    store = VersionStore(url("versions"), options)
    latest = store.latest()
    manifest = store.manifest(latest)
    assert manifest.model_digest == want
    assert [e.file for e in bundle.read_ledger(store, latest).entries] == [f.name for f in data_files]
    assert result.files == len(data_files)
    print(f"multinode run: {result.seconds:.1f} s for {result.files} files")
    scorer = _serve(grpc_port, url("versions"), options)
    try:
        answer = scorer.wait_ready(120)
        assert answer.model_version == latest
        r = scorer.score(1, [2268318, 2333346])
        assert r.model_version == latest and len(r.scores) == 2
    finally:
        scorer.close()
        _stop_serving()


@pytest.mark.skipif(
    os.environ.get("FRESHREC_NODE_LOSS") != "1",
    reason="two Ray Train start-ups and a node restart: over make test's budget; run with FRESHREC_NODE_LOSS=1 "
    "(docs/operations.md, 'Multi-node')",
)
def test_a_node_lost_mid_stream_recovers_to_the_uninterrupted_model_and_serving_follows(
    cluster, grpc_port, bucket, data_files, uninterrupted, one_thread, tmp_path
):
    """Kill the node of the training worker and shard 1 (every process on it, SIGKILL) after a few versions.
    Serving (on the head) keeps answering its last version; the driver restarts shards and worker on the
    nodes alive (a new node joins), from the last committed version; the final digest is the uninterrupted
    run's and the replica follows to it."""
    want, _ = uninterrupted
    url, options, upload = bucket
    for f in data_files[:3]:
        upload(f, "incoming")
    store = VersionStore(url("versions"), options)
    events: list[str] = []
    out: dict = {}

    def run():
        try:
            out["result"], _ = run_ps_training(
                TrainJob(
                    SPEC,
                    tmp_path / "driver-scratch",
                    model=ModelConfig(),
                    train=TCFG,
                    ps=PS,
                    incoming=url("incoming"),
                    drain=False,
                    idle_timeout_s=30.0,  # the node is killed while the stream waits for more files
                    store_url=url("versions"),
                    storage_options=options,
                    version_extra=EXTRA,
                ),
                on_event=events.append,
            )
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    scorer = _serve(grpc_port, url("versions"), options)
    try:
        _wait_for(
            lambda: (store.latest() or 0) >= 2 or not thread.is_alive(), 300, f"two committed versions ({events})"
        )
        assert thread.is_alive() and "error" not in out, f"the run ended before the node was lost: {out}; {events}"
        victim = cluster.workers.pop(0)
        cluster.cluster.remove_node(victim, allow_graceful=False)  # the raylet and every process on it
        # serving is on the head: it answers while training is down, from a committed version
        committed = store.latest()
        answered = scorer.wait_ready(120)
        assert 1 <= answered.model_version <= committed
        scored = scorer.score(1, [2268318, 2333346])
        assert scored.model_version >= answered.model_version and len(scored.scores) == 2
        cluster.workers.append(cluster.add_worker_node())  # a replacement node joins
        for f in data_files[3:]:
            upload(f, "incoming")
        thread.join(timeout=300)
        assert not thread.is_alive(), "the run did not finish"
        assert "error" not in out, f"the run failed: {out.get('error')!r}; events: {events}"
        result = out["result"]
        assert result.restarts >= 1 and any("restart" in e for e in events), events
        latest = store.latest()
        assert store.manifest(latest).model_digest == want
        assert [e.file for e in bundle.read_ledger(store, latest).entries] == [f.name for f in data_files]
        followed = _wait_for(
            lambda: (r := scorer.score(1, [2268318])).model_version == latest and r, 60, "the replica to follow"
        )
        assert followed.model_version == latest
    finally:
        scorer.close()
        _stop_serving()
        thread.join(timeout=5)
