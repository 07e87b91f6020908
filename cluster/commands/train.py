"""``freshrec train`` (cold start), ``freshrec stream`` (incremental), ``freshrec report`` (plots)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.commands.options import add_run_options, run_config_from_args
from cluster.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="cold start: train on a directory of data files (PS mode, Ray Train)",
                       description="Train on every data file of --data in name (time) order, scoring each file before "
                                   "training on it (progressive validation). Prints one line per data file.")
    t.add_argument("--data", type=Path, required=True, help="directory of data files (freshrec data split)")
    t.add_argument("--run-dir", type=Path, default=Path("runs/latest"), help="metrics, ledger, dead letters, dense state")
    add_run_options(t)
    t.set_defaults(func=_train)

    s = sub.add_parser("stream", help="incremental: follow a directory of incoming data files, each consumed once, in order",
                       description="Optionally cold-start on --history, then follow --incoming: a new data file is picked "
                                   "up within a second of landing, trained on once, and recorded in the run's ledger. "
                                   "Runs until stopped, or until the directory is drained with --drain.")
    s.add_argument("--incoming", type=Path, required=True)
    s.add_argument("--history", type=Path, default=None)
    s.add_argument("--drain", action="store_true", help="stop once every data file present has been consumed")
    s.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without a new file")
    s.add_argument("--run-dir", type=Path, default=Path("runs/latest"), help="metrics, ledger, dead letters, dense state")
    add_run_options(s)
    s.set_defaults(func=_stream)

    r = sub.add_parser("report", help="write PNG plots (AUC over time, throughput) of a run",
                       description="Reads RUN_DIR/metrics.jsonl and writes auc.png and throughput.png.")
    r.add_argument("--run-dir", type=Path, default=Path("runs/latest"))
    r.add_argument("--out", type=Path, default=None, help="output directory (default: the run directory)")
    r.set_defaults(func=_report)


def _data_files(d: Path, what: str) -> list[Path]:
    from trainer.data import expand_inputs

    if not d.is_dir():
        raise UserError(f"{what} {d} is not a directory of data files (make one with: freshrec data split ... --out {d})")
    return expand_inputs([d])


def check_inputs(history: Path | None, incoming: Path | None, drain: bool) -> None:
    """Refuse, before Ray starts, directories that do not exist or a run with nothing to train on."""
    found = 0
    for d, what in ((history, "--history"), (incoming, "--incoming")):
        if d is not None:
            found += len(_data_files(d, what))
    if found == 0 and (incoming is None or drain):
        where = " and ".join(str(d) for d in (history, incoming) if d is not None)
        raise UserError(f"no data files in {where}: nothing to train on (make them with: freshrec data split ... --out DIR)")


def run_and_summarise(args, history: Path | None, incoming: Path | None, drain: bool, idle_timeout=None) -> int:
    from trainer.report import table_header, table_row

    if idle_timeout is not None and idle_timeout <= 0:
        raise UserError(f"--idle-timeout must be > 0 seconds, got {idle_timeout}")
    cfg, spec = run_config_from_args(args)
    check_inputs(history, incoming, drain)

    from cluster.ray_runtime import ensure_ray
    from trainer.run import run_ps_training

    ensure_ray(cfg.ray)
    print(f"parameter server: {cfg.ps.num_shards} shard actors ({cfg.ps.mode}); Ray Train: {cfg.workers} worker(s)")
    print(table_header(), flush=True)
    result, _ = run_ps_training(spec, cfg.model, cfg.train, args.run_dir, ps=cfg.ps, history=history,
                                incoming=incoming, drain=drain, num_workers=cfg.workers, idle_timeout_s=idle_timeout,
                                on_file=lambda i, m: print(table_row(i, m), flush=True))
    if not result.metrics:
        print(f"no data files were consumed from {history or ''} {incoming or ''}")
        return 1
    last = result.metrics[-1]
    print(f"{result.files} data files, {result.steps} steps in {result.seconds:.1f} s; cumulative progressive AUC "
          f"{last['cumulative_auc']:.4f}; run directory {result.run_dir}")
    return 0


def _train(args: argparse.Namespace) -> int:
    return run_and_summarise(args, args.data, None, drain=True)


def _stream(args: argparse.Namespace) -> int:
    return run_and_summarise(args, args.history, args.incoming, drain=args.drain, idle_timeout=args.idle_timeout)


def _report(args: argparse.Namespace) -> int:
    from trainer.report import load_metrics, plot_run

    try:
        metrics = load_metrics(args.run_dir)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    for path in plot_run(metrics, args.out or args.run_dir):
        print(path)
    return 0
