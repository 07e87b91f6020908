"""Shared test helpers: where the real data lives, and a clear skip when it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TAOBAO_CSV = SHARED_DATA / "taobao_userbehavior" / "UserBehavior_timeordered_96k.csv"
ML100K_DIR = SHARED_DATA / "ml-100k"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path}: see ../shared/data/README.md (it is never committed here)")
    return path


@pytest.fixture(scope="session")
def taobao_csv() -> Path:
    return require(TAOBAO_CSV)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    return require(ML100K_DIR / "ml-100k.inter").parent
