"""``freshrec config show``: the effective run configuration."""

from __future__ import annotations

import argparse
import json

from cluster.commands.options import add_run_options, run_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="show the effective run configuration",
        description="Print the configuration a run would use: defaults, then --config, then --set, "
        "then the flags. Every value is validated.",
    )
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    s = csub.add_parser("show", help="print the effective config as YAML (or JSON)")
    s.add_argument("--json", action="store_true")
    add_run_options(s)
    s.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    import yaml

    cfg, _ = run_config_from_args(args)
    data = cfg.to_dict()
    print(
        json.dumps(data, indent=2) if args.json else yaml.safe_dump(data, sort_keys=False),
        end="" if not args.json else "\n",
    )
    return 0
