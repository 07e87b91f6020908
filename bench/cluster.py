"""``freshrec bench cluster``: PS training on a multi-node Ray cluster of this machine, store and data on S3 (issue 21).

    freshrec bench cluster --nodes 1,2,3 --json                       # the figures (quiet machine)
    freshrec bench cluster --nodes 1,2 --files 3 --rows 300 --json    # a smoke run

Per node count N: a fresh ``ray.cluster_utils.Cluster`` (as ``tests/integration/test_multinode.py``: one GCS,
one raylet per node, each node its own temp directory, ``--cpus-per-node`` CPUs each, never registered in
``/tmp/ray/ray_current_cluster``), the version store AND the incoming data files on S3 (moto's server on
loopback, a process of its own), ``N`` PS shards laid out one per node (``ps.spread: nodes``) and ``N`` Ray
Train workers of one CPU each (with the default ``--cpus-per-node 1``: one worker per node). The run drains
``--files`` data files of ``--rows`` rows, a version after each. Reported per N:

* ``examples_per_s``: examples over the workers' training seconds (start-up excluded, as ``bench train``),
  and ``examples_per_wall_s`` over the whole run (start-up included);
* ``cpu_s_per_1000``: CPU-seconds per 1,000 examples summed over **every process of the cluster** (the
  driver, GCS, raylets, Ray Train workers and controller, shard actors, Ray's helpers: :mod:`bench.cputree`),
  start-up included; S3 (moto's process) is left out and reported as ``s3_cpu_s`` (an object store is not
  the cluster's CPU); ``cpu_by_process``: the largest contributors;
* ``shard_nodes``: the distinct nodes the shards ran on (the spread at work), ``shard_layout`` the node of each
  shard (``head``, ``worker-K``).

On a 2-core machine the examples/s of more nodes cannot rise (the nodes share the cores): the CPU-seconds per
1,000 examples is the figure that transfers to a real cluster (``cpu_per_1000_vs_fewest_nodes``: over the
fewest nodes').

**Node loss** (``--node-loss``, default on, with the largest N >= 2): the same stream, following S3
(``drain`` off); after ``--loss-after`` versions the last worker node is removed with every process on it
(``remove_node(allow_graceful=False)``: a Ray Train worker and a shard), one new data file lands and a
replacement node joins. ``recovery_s``: the loss -> the commit of the first version after it (Ray notices the
dead node, the run restarts the shards and workers from the last committed version, replays, trains the
new file); ``restart_event_s``: the loss -> the driver's restart decision. The remaining files follow, and the
run's final ``model_digest`` is compared with the uninterrupted run's of the same N (``same_digest``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

DESCRIPTION = (
    "multi-node Ray cluster on this machine (store and data on moto S3, shards spread over nodes): examples/s "
    "and CPU-seconds per 1,000 examples over every process for each node count; node-loss recovery time"
)
BASE_TS = 1_511_600_000
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
OBJECT_STORE = 80 * 1024 * 1024
# a dead node is noticed in about 1.5 s (Ray's default: 5 missed checks of 3 s)
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}
MAX_NODES = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", default="1,2,3", help="comma list of node counts (default 1,2,3)")
    p.add_argument("--files", type=int, default=8, help="data files per run (default 8)")
    p.add_argument("--rows", type=int, default=4000, help="rows per data file (default 4000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cpus-per-node", type=int, default=1, help="logical CPUs of each node (default 1)")
    p.add_argument(
        "--node-loss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the recovery from a lost node with the largest node count >= 2 (default on)",
    )
    p.add_argument("--loss-after", type=int, default=2, help="versions committed before the node is lost (default 2)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the data files here (default: a temp dir)")


# ---------------------------------------------------------------------------------------------- pure parts
def parse_nodes(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (sorted, unique, 1..MAX_NODES); a clear error otherwise."""
    from common.errors import UserError

    try:
        counts = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--nodes must be a comma list of node counts like 1,2,3, got {text!r}") from None
    if not counts or counts[0] < 1 or counts[-1] > MAX_NODES:
        raise UserError(f"--nodes takes node counts from 1 to {MAX_NODES}, got {text!r}")
    return counts


def summarize(metrics: list[dict], seconds: float, cpu_s: float, s3_cpu_s: float) -> dict:
    """One run's figures from its per-file metrics records (``examples_trained``, ``train_seconds``), its wall
    seconds and the CPU-seconds of the cluster's processes (``cpu_s``, S3 already left out)."""
    from bench.cputree import per_thousand

    examples = int(sum(m.get("examples_trained", 0) for m in metrics))
    train_s = float(sum(m.get("train_seconds", 0.0) for m in metrics))
    return {
        "examples": examples,
        "files": len(metrics),
        "examples_per_s": examples / train_s if train_s > 0 else float("nan"),
        "examples_per_wall_s": examples / seconds if seconds > 0 else float("nan"),
        "run_s": seconds,
        "cpu_s": cpu_s,
        "cpu_s_per_1000": per_thousand(cpu_s, examples),
        "s3_cpu_s": s3_cpu_s,
    }


def cpu_diff(before: dict[str, float], after: dict[str, float], top: int = 8) -> dict[str, float]:
    """CPU-seconds per process name used between two ``ProcessTreeCPU.by_name()`` readings, largest first."""
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    return {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1])[:top] if v > 0}


def relative(per_n: dict[int, dict], key: str) -> dict[str, float]:
    """``key`` of every node count over the smallest node count's (``{"2": 1.3, ...}``)."""
    base = per_n[min(per_n)][key]
    return {str(n): (r[key] / base if base and base == base else float("nan")) for n, r in per_n.items()}


# ------------------------------------------------------------------------------------------ the machinery
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _moto_server():
    """moto's S3 server in a process of its own on loopback: ``(endpoint, pid)``."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's S3 server did not start on port {port} (python -m moto.server)")
            time.sleep(0.2)
        yield endpoint, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _cpu_of(pid: int) -> float:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


@contextlib.contextmanager
def no_address_file():
    """``Cluster`` records its GCS in /tmp/ray/ray_current_cluster, where a plain ``ray.init()`` of another
    process on this machine would find and join it: keep that file as it is."""
    import ray._private.utils as ray_utils

    saved = ray_utils.write_ray_address
    ray_utils.write_ray_address = lambda *args, **kwargs: None
    try:
        yield
    finally:
        ray_utils.write_ray_address = saved


def twice(start):
    """Ray gives a new raylet 30 s to register: on a loaded machine that can run out once."""
    try:
        return start()
    except Exception as exc:
        if "timed out during startup" not in str(exc):
            raise
        return start()


class _Cluster:
    """``nodes`` nodes of ``cpus`` CPUs each (the head is one of them), each with its own temp directory."""

    def __init__(self, nodes: int, cpus: int) -> None:
        from ray.cluster_utils import Cluster

        self.cpus, self.scratch, self.cluster = cpus, [], None
        try:
            with no_address_file():
                self.cluster = twice(
                    lambda: Cluster(initialize_head=True, head_node_args=self._args(_system_config=SYSTEM_CONFIG))
                )
            self.workers = [self.add_node() for _ in range(nodes - 1)]
        except BaseException:
            self.shutdown()  # a node that failed to start: its scratch directories go too
            raise

    def _args(self, **kw) -> dict:
        scratch = tempfile.mkdtemp(prefix="frc-", dir="/tmp")  # short: Ray's socket paths live under it
        self.scratch.append(scratch)
        return dict(
            temp_dir=scratch, object_store_memory=OBJECT_STORE, include_dashboard=False, num_cpus=self.cpus, **kw
        )

    def node_names(self) -> dict[str, str]:
        """Node id -> ``head`` / ``worker-K`` (the order they joined)."""
        out = {self.cluster.head_node.node_id: "head"}
        out.update({node.node_id: f"worker-{k}" for k, node in enumerate(self.workers)})
        return out

    def add_node(self):
        with no_address_file():
            return twice(lambda: self.cluster.add_node(**self._args()))

    def shutdown(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()
        for d in self.scratch:
            for _ in range(3):  # a process of the node may still write its logs there for a moment
                shutil.rmtree(d, ignore_errors=True)
                if not os.path.exists(d):
                    break
                time.sleep(1.0)


class _Bucket:
    def __init__(self, endpoint: str) -> None:
        import boto3

        self.name = f"bench-cluster-{uuid.uuid4().hex[:8]}"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        self.s3.create_bucket(Bucket=self.name)
        # no s3fs listing cache: a poller that listed a version directory mid-write would not see it committed
        self.options = {"endpoint_url": endpoint, "key": "test", "secret": "test", "use_listings_cache": False}

    def url(self, prefix: str) -> str:
        return f"s3://{self.name}/{prefix}"

    def upload(self, path: Path, prefix: str) -> None:
        # one PUT: the object appears whole, as a data file landing under its final name must
        self.s3.put_object(Bucket=self.name, Key=f"{prefix}/{path.name}", Body=path.read_bytes())


def _data_files(root: Path, files: int, rows: int) -> list[Path]:
    from bench.servedata import write_taobao_csv

    return [
        write_taobao_csv(root / f"part-{i:05d}.csv", rows=rows, seed=i, start_ts=BASE_TS + i * 3600)
        for i in range(files)
    ]


def _job(args, n: int, run_dir: Path, bucket: _Bucket, prefix: str, drain: bool):
    from paramserver.config import PSConfig
    from trainer.config import TrainConfig
    from trainer.data import load_spec
    from trainer.run import TrainJob

    return TrainJob(
        load_spec("taobao"),
        run_dir,
        train=TrainConfig(batch_size=args.batch_size, seed=7),
        ps=PSConfig(num_shards=n, placement="ray", spread="nodes"),
        incoming=bucket.url(f"{prefix}/incoming"),
        drain=drain,
        idle_timeout_s=None if drain else 600.0,
        num_workers=n,
        store_url=bucket.url(f"{prefix}/versions"),
        storage_options=bucket.options,
    )


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")


def run(args: argparse.Namespace) -> dict:
    from common.errors import UserError

    counts = parse_nodes(args.nodes)
    if args.files < 1 or args.rows < 10 or args.batch_size < 1 or args.cpus_per_node < 1:
        raise UserError("--files >= 1, --rows >= 10, --batch-size >= 1, --cpus-per-node >= 1")
    loss_n = max(counts) if args.node_loss and max(counts) >= 2 else None
    if loss_n is not None and not 1 <= args.loss_after < args.files:
        raise UserError(f"--loss-after must be in [1, --files) to lose a node mid-stream, got {args.loss_after}")
    import ray

    if ray.is_initialized():
        raise UserError("bench cluster starts its own clusters: run it in a fresh process (ray is initialised)")
    keep = args.work_dir is not None
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="freshrec-bench-cluster-"))
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # this process reads the store on S3 too
    try:
        files = _data_files(work / "data", args.files, args.rows)
        with _moto_server() as (endpoint, moto_pid):
            per_n: dict[int, dict] = {}
            loss = None
            for n in counts:
                per_n[n], digest = _throughput(args, n, files, endpoint, moto_pid, work)
                if n == loss_n:
                    loss = _node_loss(args, n, files, endpoint, work, digest)
        out: dict = {
            "nodes": {str(n): r for n, r in per_n.items()},
            "cpu_per_1000_vs_fewest_nodes": relative(per_n, "cpu_s_per_1000"),
            "examples_per_s_vs_fewest_nodes": relative(per_n, "examples_per_s"),
            "files": args.files,
            "rows_per_file": args.rows,
            "cpus_per_node": args.cpus_per_node,
            "machine_cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        }
        if loss is not None:
            out["node_loss"] = loss
        return out
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _connected(n: int, cpus: int, endpoint: str):
    import ray

    from paramserver.actor import alive_node_ids

    cluster = _Cluster(n, cpus)
    try:
        ray.init(
            address=cluster.cluster.address,
            namespace="freshrec-bench-cluster",
            log_to_driver=False,
            runtime_env={"env_vars": {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}},
        )
        # the shard layout is taken from the nodes alive when the shards start: all must be registered
        _wait_for(lambda: len(alive_node_ids()) == n, 120, f"{n} nodes alive in ray.nodes()")
        # and their CPUs known to the scheduler (not enough: shards were still seen on one node of two, the soft
        # node affinity falling back; docs/benchmarks.md); ``shard_nodes`` in the result says where they ran
        _wait_for(lambda: ray.cluster_resources().get("CPU", 0) >= n * cpus, 120, f"{n * cpus} CPUs in the cluster")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _throughput(args, n: int, files: list[Path], endpoint: str, moto_pid: int, work: Path) -> tuple[dict, str]:
    from bench.cputree import ProcessTreeCPU
    from trainer.run import run_ps_training
    from versions import VersionStore

    with _connected(n, args.cpus_per_node, endpoint) as cluster:
        bucket = _Bucket(endpoint)
        for f in files:
            bucket.upload(f, "run/incoming")
        # after the cluster started: its processes are this one's descendants (a poll every 0.25 s: the poll is CPU too)
        tree = ProcessTreeCPU(interval_s=0.25).start()
        try:
            c0, s0, names0 = tree.snapshot(), _cpu_of(moto_pid), tree.by_name()
            t0 = time.perf_counter()
            result, client = run_ps_training(
                _job(args, n, work / f"run-{n}", bucket, "run", drain=True).replace(keep_ps=True)
            )
            seconds = time.perf_counter() - t0
            try:
                where = client.node_ids()
                shard_nodes = len(set(where))
                names_of = cluster.node_names()
                layout = [names_of.get(node, "?") for node in where]  # shard i -> "head" / "worker-k"
            finally:
                client.shutdown()
            cpu, s3 = tree.snapshot() - c0, _cpu_of(moto_pid) - s0
            names = cpu_diff(names0, tree.by_name())
        finally:
            tree.stop()
        store = VersionStore(bucket.url("run/versions"), bucket.options)
        digest = store.manifest(store.latest()).model_digest
    out = summarize(result.metrics, seconds, cpu - s3, s3)  # moto is a descendant too: its CPU is left out
    names.pop("python:-m moto.server", None)
    result_ = {**out, "shard_nodes": shard_nodes, "shard_layout": layout, "workers": n, "cpu_by_process": names}
    return result_, digest


def _node_loss(args, n: int, files: list[Path], endpoint: str, work: Path, want_digest: str) -> dict:
    """Lose the last worker node mid-stream; time the recovery to the next committed version."""
    from trainer import bundle
    from trainer.run import run_ps_training
    from trainer.runfiles import request_stop
    from versions import VersionStore

    with _connected(n, args.cpus_per_node, endpoint) as cluster:
        bucket = _Bucket(endpoint)
        run_dir = work / f"loss-{n}"
        job = _job(args, n, run_dir, bucket, "loss", drain=False)
        store = VersionStore(bucket.url("loss/versions"), bucket.options)
        before = args.loss_after
        for f in files[:before]:
            bucket.upload(f, "loss/incoming")
        events: list[tuple[float, str]] = []
        box: dict = {}

        def train() -> None:
            try:
                box["result"], _ = run_ps_training(job, on_event=lambda text: events.append((time.time(), text)))
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=train, name="bench-cluster-loss", daemon=True)
        thread.start()
        try:

            def consumed() -> int:
                v = store.latest()
                return bundle.ledger_totals(store.manifest(v))[0] if v is not None else 0

            _wait_for(lambda: consumed() >= before or not thread.is_alive(), 600, f"{before} files in a version")
            if not thread.is_alive():
                raise RuntimeError(f"the stream ended before the node was lost: {box.get('error')!r}")
            committed = store.latest()
            t_loss = time.time()
            cluster.cluster.remove_node(cluster.workers.pop(), allow_graceful=False)  # raylet + every process
            bucket.upload(files[before], "loss/incoming")
            cluster.workers.append(cluster.add_node())  # a replacement node joins
            after = _wait_for(
                lambda: (v := store.latest()) is not None and v > committed and v, 600, "a version after the loss"
            )
            recovered_at = store.manifest(after).committed_at
            for f in files[before + 1 :]:
                bucket.upload(f, "loss/incoming")
            _wait_for(
                lambda: consumed() >= len(files) or not thread.is_alive(),
                600,
                "every file in a version",
            )
        finally:
            request_stop(run_dir)
            thread.join(timeout=300)
        if "error" in box:
            raise RuntimeError(f"the stream failed after the node loss: {box['error']!r}; events: {events[-3:]}")
        restart_at = next((t for t, text in events if "restart" in text and t >= t_loss), None)
        final = store.manifest(store.latest())
        return {
            "nodes": n,
            "lost_after_versions": committed,
            "recovery_s": recovered_at - t_loss,
            "restart_event_s": None if restart_at is None else restart_at - t_loss,
            "restarts": box["result"].restarts,
            "same_digest": final.model_digest == want_digest,
        }
