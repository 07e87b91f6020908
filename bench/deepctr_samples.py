"""Re-create ``../shared/data/deepctr_samples/`` from DeepCTR's public example files.

DeepCTR (github shenweichen/DeepCTR, Apache-2.0) ships two tiny CTR samples in ``examples/``:
``criteo_sample.txt`` (200 rows, a CSV with a header, counts written as floats such as ``260.0``) and
``avazu_sample.txt`` (100 rows, the Kaggle Avazu CSV as it is). The built-in ``criteo`` spec reads the
Kaggle layout (TAB-separated, no header, integer counts), so the Criteo file is converted; the Avazu
file is copied unchanged. Row order is kept (it is the log's time order). ``SOURCE.md`` is written
beside the files saying where they came from and how.

The data stays out of the repository (``../shared/data/README.md``); get the two files with
``git clone https://github.com/shenweichen/DeepCTR`` (or their raw URLs) and run::

    python -m bench.deepctr_samples --src DeepCTR/examples --out ../shared/data/deepctr_samples
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import sys
from pathlib import Path

CRITEO_IN = "criteo_sample.txt"
AVAZU_IN = "avazu_sample.txt"
CRITEO_OUT = "criteo_sample.tsv"
AVAZU_OUT = "avazu_sample.txt"
N_COUNTS = 13
N_CATEGORICALS = 26


def _count(text: str, row: int, col: int) -> str:
    """A Criteo count as an integer string ('' stays missing): DeepCTR writes ``260.0``."""
    if text == "":
        return ""
    value = float(text)
    if value != int(value):
        raise ValueError(f"{CRITEO_IN} row {row} column I{col}: {text!r} is not a whole number")
    return str(int(value))


def criteo_to_kaggle(lines: list[str]) -> list[str]:
    """DeepCTR's ``criteo_sample.txt`` lines -> Kaggle ``train.txt`` lines (label, I1-I13, C1-C26, TAB)."""
    rows = list(csv.reader(lines))
    header = rows[0]
    want = ["label", *(f"I{i}" for i in range(1, N_COUNTS + 1)), *(f"C{i}" for i in range(1, N_CATEGORICALS + 1))]
    if header != want:
        raise ValueError(f"{CRITEO_IN}: header {header[:5]}... is not DeepCTR's (label, I1-I13, C1-C26)")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(want):
            raise ValueError(f"{CRITEO_IN} row {n}: {len(row)} fields, expected {len(want)}")
        counts = [_count(v, n, i) for i, v in enumerate(row[1 : 1 + N_COUNTS], start=1)]
        out.append("\t".join([str(int(float(row[0]))), *counts, *row[1 + N_COUNTS :]]))
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make(src: Path, out: Path, origin: str = "github shenweichen/DeepCTR, examples/") -> list[Path]:
    """Write the two samples and SOURCE.md under ``out``; returns the paths written."""
    for name in (CRITEO_IN, AVAZU_IN):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name} not found: point --src at a DeepCTR checkout's examples/ folder")
    out.mkdir(parents=True, exist_ok=True)
    criteo_lines = (src / CRITEO_IN).read_text().splitlines()
    kaggle = criteo_to_kaggle(criteo_lines)
    (out / CRITEO_OUT).write_text("\n".join(kaggle) + "\n")
    shutil.copyfile(src / AVAZU_IN, out / AVAZU_OUT)
    n_avazu = len((out / AVAZU_OUT).read_text().splitlines()) - 1
    source = f"""# DeepCTR's public CTR samples

Made by `python -m bench.deepctr_samples --src <DeepCTR>/examples --out <this folder>` (freshrec,
`bench/deepctr_samples.py`) from {origin}
(Apache-2.0). Tiny: for smoke tests and the `bench quality --dataset criteo|avazu` presets, not for
conclusions (a point scores 20-40 rows).

- `{CRITEO_OUT}`: {len(kaggle)} rows. DeepCTR's `{CRITEO_IN}` (CSV, header
  `label,I1..I13,C1..C26`, counts written as floats like `260.0`) converted to the Kaggle `train.txt`
  layout the built-in `criteo` spec reads: no header, TAB-separated, label, 13 integer counts (empty
  when missing, `260.0` -> `260`), 26 categoricals (8 hex digits, empty when missing), row order kept.
  sha256 {_sha(out / CRITEO_OUT)}; source sha256 {_sha(src / CRITEO_IN)}.
- `{AVAZU_OUT}`: {n_avazu} rows, DeepCTR's `{AVAZU_IN}` copied unchanged (the Kaggle Avazu CSV with
  its header; one hour, 14102100). sha256 {_sha(out / AVAZU_OUT)}.
"""
    (out / "SOURCE.md").write_text(source)
    return [out / CRITEO_OUT, out / AVAZU_OUT, out / "SOURCE.md"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, required=True, help="DeepCTR's examples/ folder")
    p.add_argument("--out", type=Path, required=True, help="e.g. ../shared/data/deepctr_samples")
    p.add_argument("--origin", default="github shenweichen/DeepCTR, examples/", help="where --src came from")
    args = p.parse_args(argv)
    try:
        for path in make(args.src, args.out, args.origin):
            print(path)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
