"""Shared test fixtures: the real data, with a clear skip when it is absent (the paths and helpers live in
tests/support/data.py); the order of the integration modules (grouped by the shared Ray and Serve they use) and of
the unit modules (the most CPU first); the CPU measurement when FRESHREC_TEST_CPU asks for it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.support import cpu_profile
from tests.support.data import ML100K_DIR, TAOBAO_CSV, require


def pytest_configure(config):
    """``FRESHREC_TEST_CPU=DIR``: each pytest process writes its CPU seconds per module to ``DIR``
    (``tests/support/cpu_profile.py``); without it nothing is registered."""
    cpu_profile.register(config)


@pytest.fixture(scope="module", autouse=True)
def _forget_writer_leases():
    """After each module: forget (no I/O) the writer leases its version stores still hold. The stores and the
    servers behind them (moto, started per module) are done with; left in ``versions.fencing``'s registry, a
    lease on a stopped moto server was released by the next S3 module's teardown or by the interpreter's exit
    hook, and s3fs retried each call against the dead server (a 24 s teardown in the last quiet run, 135 s
    at exit in an earlier one)."""
    yield
    fencing = sys.modules.get("versions.fencing")
    for store in list(fencing._HOLDING) if fencing is not None else []:
        fencing._HOLDING.discard(store)  # no heartbeat renews it, no exit hook releases it


@pytest.fixture(scope="session")
def taobao_csv() -> Path:
    return require(TAOBAO_CSV)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    return require(ML100K_DIR / "ml-100k.inter").parent


def _module_rank(items) -> int:
    """0: an integration module that uses neither the shared Ray nor Serve (its own processes or cluster);
    1: the shared Ray only; 2: the shared Ray and Serve; 3: everything else (the unit tests)."""
    if not all("integration" in item.path.parts for item in items):
        return 3
    names = {name for item in items for name in getattr(item, "fixturenames", ())}
    return 2 if "serve_port" in names else 1 if "ray_local" in names else 0


UNIT_CPU_SECONDS = Path(__file__).parent / "unit" / "cpu_seconds.json"


def _unit_cpu_seconds() -> dict[str, float]:
    """{test module path relative to the repository: its CPU seconds in a measured run}: the order in which the
    two xdist workers are handed the unit modules (written by ``python -m tests.support.cpu_profile --write-costs``;
    a module not in it counts 0 and is handed out last; a stale figure only moves a module in the queue)."""
    try:
        return json.loads(UNIT_CPU_SECONDS.read_text())
    except (OSError, ValueError):
        return {}


def pytest_collection_modifyitems(session, config, items):
    """Group the integration modules by what they share (tests/integration/conftest.py): the ones with their own
    Rays first, then the ones on the shared Ray, then the ones on the shared Ray and Serve, so that the shared
    Ray and the Serve proxy each start once per session instead of once per run of modules (in name order they
    were started four and two times). Within a group, and within a module, the collected order is kept.

    The unit modules come after them, the most CPU first (``tests/unit/cpu_seconds.json``), then name order:
    with ``--dist loadfile --no-loadscope-reorder`` (``make test-fast``) xdist hands the modules out in this
    order to whichever worker is free, so the last ones are small and the two workers end close together
    (xdist's own reorder, by number of tests, handed out a 10-CPU-second module of five tests among the last)."""
    modules: dict = {}
    for item in items:
        modules.setdefault(item.path, []).append(item)
    cost = _unit_cpu_seconds()
    root = str(config.rootpath)

    def key(module) -> tuple[int, float]:
        rank = _module_rank(module)
        name = os.path.relpath(module[0].path, root)
        return rank, -cost.get(name, 0.0) if rank == 3 else 0.0

    order = sorted(modules.values(), key=key)  # stable: name order within a group and among equal costs
    items[:] = [item for module in order for item in module]
