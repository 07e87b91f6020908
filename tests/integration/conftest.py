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


def taobao_data_files(root, rows: int = 5000, window_s: int = 60) -> list:
    """The first ``rows`` rows of the real Taobao log (a synthetic log of the same format when the shared
    data is absent) split into ``window_s``-second data files under ``root/data``."""
    from tests.conftest import TAOBAO_CSV
    from tests.integration.test_ps_training import _synthetic_log
    from trainer.data import Validator, load_spec
    from trainer.data.split import split_into_files

    head = root / "head.csv"
    if TAOBAO_CSV.exists():
        with open(TAOBAO_CSV) as src:
            head.write_text("".join(next(src) for _ in range(rows)))
    else:
        _synthetic_log(head, rows=rows)
    return list(split_into_files([head], Validator(load_spec("taobao")), window_s, root / "data", progress=False).files)
