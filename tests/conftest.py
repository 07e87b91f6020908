"""Shared test fixtures: the real data, with a clear skip when it is absent (the paths and helpers live in
tests/support/data.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.data import ML100K_DIR, TAOBAO_CSV, require


@pytest.fixture(scope="session")
def taobao_csv() -> Path:
    return require(TAOBAO_CSV)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    return require(ML100K_DIR / "ml-100k.inter").parent
