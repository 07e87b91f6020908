"""A multi-node Ray cluster on this machine for the tests: ``ray.cluster_utils.Cluster`` with a head node of no
CPUs (the driver, Serve, actors of 0 CPUs) and worker nodes with CPUs (Ray Train workers), each node with its own
temp (scratch) directory and one GCS of its own.

The cluster never writes ``/tmp/ray/ray_current_cluster`` (a plain ``ray.init()`` of another process on this
machine would find and join it); join it only through ``ray.init(address=cluster.address)``.
"""

from __future__ import annotations

import shutil
import tempfile

from bench.cluster import no_address_file, twice

OBJECT_STORE = 80 * 1024 * 1024
# a dead node is noticed in about 1.5 s (Ray's default: 5 missed checks of 3 s)
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}


class LocalCluster:
    """A head node (no CPUs; ``head_resources`` custom resources) and ``workers`` worker nodes with
    ``worker_cpus`` CPUs each, each node with its own scratch (temp) directory (``scratch[i]``: node i, the head
    first)."""

    def __init__(self, workers: int = 1, worker_cpus: int = 2, head_resources: dict | None = None) -> None:
        from ray.cluster_utils import Cluster

        self.scratch: list[str] = []
        self.worker_cpus = worker_cpus
        with no_address_file():
            self.cluster = twice(
                lambda: Cluster(
                    initialize_head=True,
                    head_node_args=self._node_args(
                        num_cpus=0, resources=dict(head_resources or {}), _system_config=SYSTEM_CONFIG
                    ),
                )
            )
        self.head = self.cluster.head_node
        self.workers = [self.add_worker_node() for _ in range(workers)]

    @property
    def address(self) -> str:
        return self.cluster.address

    def _node_args(self, **kw) -> dict:
        scratch = tempfile.mkdtemp(prefix="frn-", dir="/tmp")  # short: Ray's socket paths live under it
        self.scratch.append(scratch)
        return dict(temp_dir=scratch, object_store_memory=OBJECT_STORE, include_dashboard=False, **kw)

    def add_worker_node(self):
        with no_address_file():
            return twice(lambda: self.cluster.add_node(**self._node_args(num_cpus=self.worker_cpus)))

    def shutdown(self) -> None:
        self.cluster.shutdown()
        for d in self.scratch:
            shutil.rmtree(d, ignore_errors=True)
