"""``freshrec bench NAME``: benchmarks that report ratios against a same-run baseline.

Each benchmark is a module ``bench.<name>`` exposing ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args) -> dict``; the result dict is printed as a
table, or as one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json

BENCHES = (
    "reader",
    "ps",
    "shard",
    "train",
    "quality",
    "features",
    "serve",
    "snapshot",
    "ann",
    "search",
    "gate",
    "chaos",
    "serve-chaos",
    "restart",
    "soak",
    "cluster",
)


def _module(name: str) -> str:
    """``bench.<module>`` of a bench name (``serve-chaos`` -> ``bench.servechaos``)."""
    return f"bench.{name.replace('-', '')}"


def _available() -> list[str]:
    return [b for b in BENCHES if importlib.util.find_spec(_module(b)) is not None]


def print_table(result: dict, indent: str = "") -> None:
    width = max((len(str(k)) for k in result), default=0)
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            print_table(value, indent + "  ")
        elif isinstance(value, float):
            print(f"{indent}{str(key).ljust(width)}  {value:,.4g}")
        else:
            print(f"{indent}{str(key).ljust(width)}  {value}")


def register(sub: argparse._SubParsersAction) -> None:
    if not _available():
        return
    p = sub.add_parser("bench", help="run a benchmark (ratios against a same-run baseline)")
    bsub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name in _available():
        module = importlib.import_module(_module(name))
        bp = bsub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        bp.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        module.add_arguments(bp)
        bp.set_defaults(func=lambda args, m=module: _run(m, args))


def _run(module, args: argparse.Namespace) -> int:
    result = module.run(args)
    if args.json:
        print(json.dumps(result, sort_keys=False))
    else:
        print_table(result)
    return 0
