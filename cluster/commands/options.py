"""The run options the commands share: ``--config``, ``--set`` and a few common flags.

Precedence (``train``, ``stream``, ``demo``, ``serve``, ``config show`` alike): defaults < the run YAML
(``--config``) < ``--set KEY=VALUE`` < the dedicated flags. Everything is validated here, before Ray or
torch start. Each flag names its key in the config tree (``FLAG_KEYS``; ``serve``'s in
cluster/commands/serve.py ``SERVE_FLAG_KEYS``); the settings themselves are defined in cluster/config.py's
``RunConfig`` sections.
"""

from __future__ import annotations

import argparse

from cluster.errors import UserError

# flag dest -> key in the config tree
FLAG_KEYS = {
    "spec": "spec",
    "workers": "workers",
    "ps_shards": "ps.num_shards",
    "mode": "ps.mode",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "strategy": "train.strategy",
    "window": "train.window",
    "period": "train.period",
    "fusion_lambda": "train.fusion_lambda",
    "address": "ray.address",
}


def add_config_options(g, example: str = "--set train.sparse_lr=0.05 --set ps.ttl_versions=1000") -> None:
    """``--config YAML`` and ``--set KEY=VALUE`` on the argument group (or parser) ``g``."""
    g.add_argument(
        "--config", default=None, metavar="YAML", help="run YAML: spec, workers, model, train, ps, serve, ray"
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help=f"override one setting, e.g. {example} (repeatable)",
    )


def add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "run configuration (defaults < --config < --set < these flags; see `freshrec config show`)"
    )
    add_config_options(g)
    g.add_argument("--spec", default=None, help="feature spec: a YAML file or a built-in name (taobao, movielens100k)")
    g.add_argument("--workers", type=int, default=None, help="Ray Train workers (gloo DDP on CPU); default 1")
    g.add_argument("--ps-shards", type=int, default=None, help="parameter-server shards; default 2")
    g.add_argument("--mode", choices=["sync", "async"], default=None, help="PS consistency (sync: deterministic)")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument(
        "--strategy",
        choices=["online", "periodic", "fusion"],
        default=None,
        help="online: each data file once; periodic: the last --window files every --period files; "
        "fusion: online, then dense theta = lambda*new + (1-lambda)*prev",
    )
    g.add_argument("--window", type=int, default=None, help="periodic: data files per update")
    g.add_argument("--period", type=int, default=None, help="periodic: update every N data files")
    g.add_argument("--fusion-lambda", type=float, default=None, help="fusion: weight of the new dense params")
    g.add_argument("--address", default=None, help="join an existing Ray cluster (default: start a local Ray)")


def run_config_from_args(args: argparse.Namespace):
    """The effective :class:`cluster.config.RunConfig` and its loaded feature spec; UserError on any bad value."""
    from cluster.config import ConfigError
    from trainer.data import load_spec

    cfg = config_from_args(args, {key: getattr(args, dest, None) for dest, key in FLAG_KEYS.items()})
    try:
        spec = load_spec(cfg.spec)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    return cfg, spec


def config_from_args(args: argparse.Namespace, flags: dict):
    """The effective :class:`cluster.config.RunConfig`: defaults < ``--config`` < ``--set`` < ``flags`` (dotted
    key -> the flag's value; None: the flag was not given). UserError on any bad value, naming the key."""
    from cluster.config import ConfigError, load_run_config

    try:
        return load_run_config(
            getattr(args, "config", None),
            list(getattr(args, "overrides", None) or []),
            {k: v for k, v in flags.items() if v is not None},
        )
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
