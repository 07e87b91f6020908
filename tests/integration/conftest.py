"""Integration tests share one real local Ray per module (num_cpus=2, small object store)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=False,
             namespace="freshrec-test", log_to_driver=False)
    yield ray
    ray.shutdown()
