"""``freshrec data``: validate, split and fetch behaviour logs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cluster.errors import UserError
from trainer.data.fetch import DATASETS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override the spec: every file has a header line (--header) or none (--no-header)",
    )
    p.add_argument(
        "--side-table",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="read the spec's side table NAME from PATH (a file or URL) instead of its 'path'",
    )
    p.add_argument(
        "--max-dead-share",
        type=float,
        default=None,
        help="stop with an error when more than this share of a file's rows is dead-lettered "
        "(default: the spec's max_dead_share, 0.5)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="validate, split into time-ordered data files, fetch public data sets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    v = dsub.add_parser(
        "validate",
        help="validate input files against a feature spec; bad rows go to the dead-letter file",
        description="Read INPUT (files or directories of data files), validate every row against the spec, "
        "write each rejected row with its source, row number and reason to --dead-letter, "
        "and print the counts. rows_in == rows_good + rows_dead + rows_duplicate. "
        "Row order is never a reason to reject a row. Exits 2 when a file is refused or "
        "more than --max-dead-share of its rows is dead-lettered (usually: the wrong spec).",
    )
    v.add_argument("inputs", nargs="+", metavar="INPUT", help="csv/tsv/jsonl/parquet files, directories or fsspec URLs")
    v.add_argument("--spec", required=True, help="feature spec: a YAML file or a built-in name (taobao, movielens100k)")
    v.add_argument("--dead-letter", required=True, type=Path, help="JSON Lines file that rejected rows are appended to")
    v.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(v)
    v.set_defaults(func=_validate)

    s = dsub.add_parser(
        "split",
        help="split validated events into time-ordered data files (parquet)",
        description="Validate INPUT, sort its good rows by time (in bounded memory: larger inputs "
        "are sorted in spilled runs and merged) and write them as one parquet data file "
        "per time window (part-YYYYmmddTHHMMSSZ.parquet) or per --rows N rows, so "
        "name order is time order. A spec with 'time: row_order' is cut with --rows.",
    )
    s.add_argument("inputs", nargs="+", metavar="INPUT")
    s.add_argument("--spec", required=True, help="feature spec: a YAML file or a built-in name")
    s.add_argument("--every", default=None, help="window length: 30s, 5m, 1h, 1d (default 5m unless --rows)")
    s.add_argument("--rows", type=int, default=None, help="cut into data files of this many rows instead of windows")
    s.add_argument(
        "--memory-rows",
        type=int,
        default=2_000_000,
        help="rows held in memory while sorting; more are sorted in runs on disk (default 2,000,000)",
    )
    s.add_argument(
        "--out", required=True, type=Path, help="directory for the data files (must not hold files of the same windows)"
    )
    s.add_argument(
        "--dead-letter",
        type=Path,
        default=None,
        help="dead-letter file (default: OUT-dead-letter.jsonl beside OUT, never among the data files)",
    )
    s.add_argument("--json", action="store_true", help="print one JSON object with the counts and data files")
    s.add_argument("--no-progress", action="store_true")
    _common(s)
    s.set_defaults(func=_split)

    f = dsub.add_parser(
        "fetch",
        help="obtain a public data set from PyPI (movielens-100k)",
        description="movielens-100k: downloads the recbole==1.2.1 wheel with pip (no install) and "
        "extracts recbole/dataset_example/ml-100k/. GroupLens licence: research use, "
        "no redistribution.",
    )
    f.add_argument("dataset", choices=DATASETS)
    f.add_argument("--out", required=True, type=Path)
    f.set_defaults(func=_fetch)


def _load(spec_arg: str, header: bool | None = None):
    from common.config import ConfigError
    from trainer.data import load_spec

    try:
        spec = load_spec(spec_arg)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    return spec if header is None else spec.with_header(header)


def _side_tables(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--side-table {item!r}: expected NAME=PATH")
        out[name] = path
    return out


def _validator(args: argparse.Namespace, dead_letter):
    from trainer.data import Validator

    spec = _load(args.spec, args.header)
    sides = _side_tables(args.side_table)
    unknown = set(sides) - {t.name for t in spec.side_tables}
    if unknown:
        raise UserError(
            f"--side-table: spec {spec.name} has no side table {sorted(unknown)}; "
            f"it has {[t.name for t in spec.side_tables]}"
        )
    share = args.max_dead_share if args.max_dead_share is not None else spec.max_dead_share
    if not 0 < share <= 1:
        raise UserError(f"--max-dead-share must be in (0, 1], got {share}")
    return Validator(spec, dead_letter, side_tables=sides), share


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
    print(
        f"rows in {report['rows_in']:,}: good {report['rows_good']:,}, dead {report['rows_dead']:,}, "
        f"duplicate {report['rows_duplicate']:,} ({report['files']} files, {report['files_unreadable']} unreadable)"
    )
    for reason, count in report["by_reason"].items():
        print(f"  {reason}: {count:,}")
    for line in report.get("refused", []):
        print(f"refused: {line}")
    for line in report.get("warnings", []):
        print(f"warning: {line}")


def _file_failure(report, share: float) -> str | None:
    """The message of a refused file, or one with too many dead rows; None if it is fine."""
    from trainer.data import FileQualityError, check_file_report

    try:
        check_file_report(report, share)
    except FileQualityError as exc:
        return str(exc)
    return None


def _validate(args: argparse.Namespace) -> int:
    from common.config import ConfigError
    from trainer.data import DeadLetterWriter, iter_batches

    failure = None
    with DeadLetterWriter(args.dead_letter) as dl:
        validator, share = _validator(args, dl)
        files = _inputs(args.inputs)
        for f in files:  # every file is validated and counted; the first bad one fails the run at the end
            try:
                for _ in iter_batches([f], validator, progress=not args.no_progress and sys.stderr.isatty()):
                    pass
            except ConfigError as exc:  # a side table that cannot be found or read
                raise UserError(str(exc)) from exc
            failure = failure or _file_failure(validator.last_file, share)
    report = validator.report.as_dict()
    _print_report(
        report,
        args.json,
        {"dead_letter": str(args.dead_letter), "per_file": [r.as_dict() for r in validator.report.per_file]},
    )
    if failure:
        raise UserError(failure)
    return 0


def _split(args: argparse.Namespace) -> int:
    from common.config import ConfigError
    from trainer.data import DeadLetterWriter, FileQualityError
    from trainer.data.split import parse_duration, split_into_files

    if args.every is not None and args.rows is not None:
        raise UserError("give --every or --rows, not both")
    try:
        every = parse_duration(args.every or "5m") if args.rows is None else None
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    out_abs = args.out.resolve()
    dead = args.dead_letter or out_abs.with_name(out_abs.name + "-dead-letter.jsonl")
    with DeadLetterWriter(dead) as dl:
        validator, share = _validator(args, dl)
        files = _inputs(args.inputs)
        try:
            result = split_into_files(
                files,
                validator,
                every,
                args.out,
                progress=not args.no_progress and sys.stderr.isatty(),
                rows_per_file=args.rows,
                memory_rows=args.memory_rows,
                max_dead_share=share,
            )
        except (FileExistsError, ValueError, ConfigError) as exc:
            raise UserError(str(exc)) from exc
        except FileQualityError as exc:
            _print_report(validator.report.as_dict(), args.json)
            raise UserError(f"{exc} (data files written before it stay in {args.out})") from exc
    report = validator.report.as_dict()
    extra = {
        "files": len(result.files),
        "out": str(args.out),
        "dead_letter": str(dead),
        "spilled_runs": result.spilled_runs,
    }
    _print_report(report, args.json, extra)
    if not args.json:
        how = f"{args.rows:,}-row files" if args.rows else f"{args.every or '5m'} windows"
        print(f"wrote {len(result.files)} data files to {args.out} ({how})")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from trainer.data.fetch import FetchError, fetch_movielens_100k

    try:
        files = fetch_movielens_100k(args.out)
    except FetchError as exc:
        raise UserError(str(exc)) from exc
    for f in files:
        print(f"{f}  {f.stat().st_size:,} bytes")
    print(
        "MovieLens-100K (GroupLens licence: research use, no redistribution). Validate with --spec movielens100k "
        "(or --spec movielens100k_genres: ml-100k.item beside ml-100k.inter adds each movie's genres)."
    )
    return 0
