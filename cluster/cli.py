"""The ``freshrec`` command line.

Every command lives in a small module under ``cluster/commands/`` that exposes
``register(subparsers)``; each registered parser sets ``func(args) -> int``.
Heavy imports (torch, ray) happen inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Order is the order shown in --help.
COMMAND_MODULES = (
    "cluster.commands.demo",
    "cluster.commands.data",
    "cluster.commands.train",
    "cluster.commands.evaluate",
    "cluster.commands.config",
    "cluster.commands.snapshots",
    "cluster.commands.report",
    "cluster.commands.jobs",
    "cluster.commands.k8s",
    "cluster.commands.serve",
    "cluster.commands.search",
)
# Commands that other packages plug in (pyproject.toml [project.entry-points."freshrec.commands"]):
# ``bench`` registers ``freshrec bench`` this way, so that cluster never imports bench (bench uses cluster).
PLUGIN_GROUP = "freshrec.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freshrec",
        description="freshrec: incremental training on a Ray parameter server, with fresh, consistent serving.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level and show Ray worker logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that command has not landed yet
                continue
            raise
        module.register(sub)
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.verbose:
        from cluster.ray_runtime import set_verbose

        set_verbose(True)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors carry their own message
        from cluster.errors import UserError

        if isinstance(exc, UserError):
            print(f"freshrec: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
