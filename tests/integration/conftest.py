"""Integration tests share one real local Ray (num_cpus=2, small object store) and at most one Ray Serve
instance (controller + gRPC proxy) on it, across consecutive modules that use them.

* ``ray_local`` (module scope, as before): the shared Ray, started on first use.
* ``serve_port`` (module scope): the gRPC port of the shared Serve instance. A module passes it to
  ``start_serving`` / ``start_search_serving``: the first call starts Serve's proxy on it, later ones
  find it running and only deploy their application; a module deletes its applications at its end
  (``serve.delete``), never the proxy.
* Both are stopped at the start of a module that does not use them, so that the ``ray start --head``
  cluster of test_ops_cluster and the embedded Rays of test_recovery_process run alone, training
  modules run without an idle Serve, and at the end of the session. Any module order works: what a
  module needs is started when it is missing.
"""

from __future__ import annotations

import pytest

RAY_OPTIONS = dict(
    num_cpus=2,
    object_store_memory=300 * 1024 * 1024,
    include_dashboard=False,
    namespace="freshrec-test",
    log_to_driver=False,
)


class SharedRay:
    def __init__(self) -> None:
        self.gcs: str | None = None  # the address of the Ray this object started
        self.grpc_port: int | None = None

    def ray(self):
        import ray

        if ray.is_initialized() and ray.get_runtime_context().gcs_address != self.gcs:
            ray.shutdown()  # someone else's Ray (a test that called ray.init): start ours, as configured
        if not ray.is_initialized():
            ray.init(**RAY_OPTIONS)
            self.gcs, self.grpc_port = ray.get_runtime_context().gcs_address, None
        return ray

    def serve_port(self) -> int:
        self.ray()
        if self.grpc_port is None:
            from serving.app import free_port

            self.grpc_port = free_port()
        return self.grpc_port

    def stop_serve(self) -> None:
        import ray

        if self.grpc_port is not None and ray.is_initialized():
            from ray import serve

            serve.shutdown()
        self.grpc_port = None

    def stop(self) -> None:
        import ray

        self.stop_serve()
        if ray.is_initialized():
            ray.shutdown()
        self.gcs = None


@pytest.fixture(scope="session")
def shared_ray():
    shared = SharedRay()
    yield shared
    shared.stop()


def _uses(items) -> set[str]:
    return {name for item in items for name in getattr(item, "fixturenames", ())}


def _keep_only(shared: SharedRay, names: set[str]) -> None:
    if "ray_local" not in names:
        shared.stop()
    elif "serve_port" not in names:
        shared.stop_serve()


@pytest.fixture(scope="module", autouse=True)
def _only_what_the_modules_use(request, shared_ray):
    """Before a module: stop what it does not use; after it: what the next module does not use (nothing
    stays up for the unit tests or anything else that follows). The tests' fixture closures say."""
    items = request.session.items
    mine = [i for i, item in enumerate(items) if getattr(item, "module", None) is request.module]
    _keep_only(shared_ray, _uses(items[i] for i in mine))
    yield
    after = mine[-1] + 1 if mine else len(items)
    following = (
        [item for item in items[after:] if getattr(item, "module", None) is getattr(items[after], "module", None)]
        if after < len(items)
        else []
    )
    _keep_only(shared_ray, _uses(following))


@pytest.fixture
def one_thread():
    """Torch on one thread, as in each Ray Train worker (products on two threads may round differently)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_local(shared_ray):
    return shared_ray.ray()


@pytest.fixture(scope="module")
def serve_port(ray_local, shared_ray) -> int:
    return shared_ray.serve_port()


@pytest.fixture(scope="session")
def data_files(tmp_path_factory):
    """The Taobao data files of the recovery modules (read only: tests copy them where they need them)."""
    from tests.support.data import taobao_data_files

    files = taobao_data_files(tmp_path_factory.mktemp("recovery"))
    assert len(files) >= 5
    return files


@pytest.fixture(scope="session")
def uninterrupted(data_files, tmp_path_factory):
    """(digest, store URL) of the local reference over ``data_files`` (one process, one thread), computed once."""
    import torch

    from tests.support.reference import local_digest

    root = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return local_digest(data_files, root), str(root / "local-versions")
    finally:
        torch.set_num_threads(threads)
