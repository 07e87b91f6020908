"""Unit tests run without Ray: any ray.init here is a bug in the test or the code. Torch runs on one thread here."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    import ray

    def _refuse(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", _refuse)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Each unit test runs torch on one intra-op thread, whatever the test before it left (``ScoringService``
    sets ``torch_threads`` for the whole process): the unit tests run in one process per core (``make
    test-fast``: two pytest-xdist workers), so a second OpenMP thread only contends with the other worker
    and spins while it waits. On the loaded 2-core machine, test_local, test_ps_pipeline, test_publish_gate
    and test_search took 86 CPU seconds with torch's default two threads and 11.5 with one (one process,
    niced, two alternating rounds each). Results do not depend on it: every figure a unit test checks is
    computed in the same process against a reference run with the same setting."""
    torch = sys.modules.get("torch")  # imported at collection by the modules that use it
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
