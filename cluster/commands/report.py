"""``freshrec report``: PNG plots and a markdown summary of a training run (``trainer.runreport``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="plots and a markdown summary of a run: AUC, log-loss, throughput, freshness, "
        "versions published and held back",
        description="Read RUN_DIR/metrics.jsonl and the run's version store and write report.md plus "
        "quality.png (progressive AUC and log-loss over wall-clock time), throughput.png, "
        "freshness.png and versions.png. A plot without data is not drawn; report.md "
        "says why.",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        default=Path("runs/latest"),
        metavar="DIR",
        help="a freshrec train/stream run directory (default runs/latest)",
    )
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="where to write (default RUN_DIR/report)")
    p.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="the run's version store when it is not RUN_DIR/versions (s3://...)",
    )
    from cluster.commands.snapshots import _option

    p.add_argument(
        "--storage-option",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option of --store (repeatable), as for freshrec stream",
    )
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from trainer.runreport import collect, write_report

    if not args.run_dir.is_dir():
        raise UserError(
            f"--run-dir {args.run_dir} is not a run directory: pass the --run-dir of a freshrec train/stream run"
        )
    summary = collect(args.run_dir, args.store, dict(args.storage_option) or None)
    out = args.out or args.run_dir / "report"
    paths = write_report(summary, out)
    for path in paths:
        print(path)
    if not summary.records:
        print(f"note: {args.run_dir} has no trained data file: the report says so instead of drawing empty plots")
    return 0
