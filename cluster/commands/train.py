"""``freshrec train`` (cold start) and ``freshrec stream`` (incremental); ``freshrec report`` is in report.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.commands.options import add_run_options, run_config_from_args
from cluster.errors import UserError


def _location(text: str) -> str | Path:
    """A data location: a local directory (a Path) or an fsspec URL such as s3://bucket/prefix (kept as given)."""
    from trainer.data import storage

    return text if storage.is_url(text) else Path(text)


def _training_options(p: argparse.ArgumentParser) -> None:
    from cluster.commands.snapshots import _option

    p.add_argument(
        "--run-dir",
        type=Path,
        default=Path("runs/latest"),
        help="metrics, ledger, dead letters, model versions (RUN_DIR/versions); a run directory that holds "
        "versions resumes from the newest",
    )
    p.add_argument(
        "--store", default=None, metavar="URL", help="version store (default RUN_DIR/versions; s3://... works)"
    )
    p.add_argument(
        "--storage-option",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option of the store, history and incoming URLs (repeatable; the value is JSON or "
        "text), e.g. endpoint_url=http://minio:9000 key=... secret=...; merged over the config's storage_options",
    )
    add_run_options(p)


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="cold start: train on a directory of data files (PS mode, Ray Train)",
        description="Train on every data file of --data in name (time) order, scoring each file before "
        "training on it (progressive validation). Prints one line per data file. --data is the run's history: "
        "a small one (under train.history_steps = 48 optimizer steps) then gets up to 2 more shuffled passes, "
        "training only (train.history_epochs: auto, the default; --set train.history_epochs=1 for one pass).",
    )
    t.add_argument(
        "--data", type=_location, required=True, help="directory (or URL) of data files (freshrec data split)"
    )
    _training_options(t)
    t.set_defaults(func=_train)

    s = sub.add_parser(
        "stream",
        help="incremental: follow a directory of incoming data files, each consumed once, in order",
        description="Optionally cold-start on --history (a small history, under train.history_steps = 48 "
        "optimizer steps, gets up to 2 more shuffled passes, training only: train.history_epochs: auto), then "
        "follow --incoming: a new data file is picked up within a second of landing, trained on once, and "
        "recorded in the run's ledger. "
        "Runs until stopped, or until the directory is drained with --drain.",
    )
    s.add_argument("--incoming", type=_location, required=True, help="directory or URL (s3://bucket/prefix)")
    s.add_argument("--history", type=_location, default=None, help="directory or URL of the history's data files")
    s.add_argument("--drain", action="store_true", help="stop once every data file present has been consumed")
    s.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without a new file")
    _training_options(s)
    s.set_defaults(func=_stream)


def _data_files(d: str | Path, what: str, storage_options: dict | None = None) -> list:
    from trainer.data import expand_inputs, storage
    from trainer.data.pipeline import is_data_file_name

    if storage.is_url(str(d)):  # an object-store prefix with no objects yet is an empty directory
        try:
            with storage.storage_options(storage_options):
                if storage.is_dir(d):
                    return [f.path for f in storage.list_files(d) if is_data_file_name(f.name)]
                return [str(d)] if storage.exists(d) else []
        except Exception as exc:
            raise UserError(
                f"{what} {d} cannot be listed ({type(exc).__name__}: {exc}): check the store's address and "
                "credentials (--storage-option endpoint_url=... --storage-option key=... --storage-option "
                "secret=..., the config's storage_options, or the AWS_* environment)"
            ) from None
    if not Path(d).is_dir():
        raise UserError(
            f"{what} {d} is not a directory of data files (make one with: freshrec data split ... --out {d})"
        )
    return expand_inputs([d])


def storage_options_from_args(args: argparse.Namespace, cfg) -> dict | None:
    """The config's ``storage_options`` with each ``--storage-option KEY=VALUE`` over it (None: none)."""
    options = {**(cfg.storage_options or {}), **dict(getattr(args, "storage_option", None) or [])}
    return options or None


def check_inputs(history, incoming, drain: bool, storage_options: dict | None = None) -> None:
    """Refuse, before Ray starts, directories that do not exist, URLs that cannot be listed (with
    ``storage_options``) or a run with nothing to train on."""
    found = 0
    for d, what in ((history, "--history"), (incoming, "--incoming")):
        if d is not None:
            found += len(_data_files(d, what, storage_options))
    if found == 0 and (incoming is None or drain):
        where = " and ".join(str(d) for d in (history, incoming) if d is not None)
        raise UserError(
            f"no data files in {where}: nothing to train on (make them with: freshrec data split ... --out DIR)"
        )


def cli_job(args, cfg, spec, history, incoming, drain: bool, idle_timeout=None, storage_options: dict | None = None):
    """The :class:`trainer.config.TrainJob` that ``train`` / ``stream`` run for these arguments (``cfg``, ``spec``:
    :func:`run_config_from_args`). The chaos harness's in-process reference builds its job here too."""
    from trainer.config import TrainJob
    from trainer.versioning import version_extra

    return TrainJob(
        spec,
        args.run_dir,
        model=cfg.model,
        train=cfg.train,
        ps=cfg.ps,
        history=history,
        incoming=incoming,
        drain=drain,
        num_workers=cfg.workers,
        idle_timeout_s=idle_timeout,
        store_url=args.store or str((args.run_dir / "versions").absolute()),
        storage_options=storage_options,
        snapshots=cfg.snapshots,
        publish=cfg.publish,
        version_extra=version_extra(cfg.spec, cfg.to_dict(serve=False)),
    )


def run_and_summarise(args, history, incoming, drain: bool, idle_timeout=None) -> int:
    from trainer.plots import table_header, table_row

    if idle_timeout is not None and idle_timeout <= 0:
        raise UserError(f"--idle-timeout must be > 0 seconds, got {idle_timeout}")
    cfg, spec = run_config_from_args(args)
    options = storage_options_from_args(args, cfg)
    check_inputs(history, incoming, drain, options)

    from cluster.ray_runtime import ensure_ray
    from trainer.run import describe_ps, run_ps_training

    ensure_ray(cfg.ray)
    print(
        f"parameter server: {describe_ps(cfg.ps, cfg.workers)}; Ray Train: {cfg.workers} worker(s); "
        f"versions in {args.store or args.run_dir / 'versions'}"
    )
    print(table_header(), flush=True)
    from trainer.run import DataFileError

    store_url = args.store or str((args.run_dir / "versions").absolute())
    with graceful_stop(args.run_dir) as stopping, VersionTicker(store_url, storage_options=options):
        try:
            result, _ = run_ps_training(
                cli_job(args, cfg, spec, history, incoming, drain, idle_timeout, options),
                on_file=lambda i, m: print(table_row(i, m), flush=True),
                on_event=lambda text: print(text, flush=True),
            )
        except DataFileError as exc:
            raise UserError(
                f"{exc} (the versions committed so far are intact; fix the spec or the file and run "
                f"the same command again)"
            ) from None
    print_summary(result, options)
    if stopping.requested:
        print(
            "stopped on request: the last version above holds everything trained so far; run the same command "
            "again to resume"
        )
        return 130
    if not result.metrics:
        print(f"no data files were consumed from {history or ''} {incoming or ''}")
        return 1
    return 0


def print_summary(result, storage_options: dict | None = None) -> None:
    from trainer import bundle
    from versions import VersionStore

    if result.metrics:
        last = result.metrics[-1]
        print(
            f"{result.files} data files, {result.steps} steps in {result.seconds:.1f} s; cumulative progressive "
            f"AUC {last['cumulative_auc']:.4f}; run directory {result.run_dir}"
        )
    if result.store_url:
        manifests = VersionStore(result.store_url, storage_options).list()
        if manifests:
            m = manifests[-1]
            print(
                f"versions: {len(manifests)} committed in {result.store_url}; latest v{m.version} ({m.kind}, step "
                f"{m.step}, {bundle.ledger_totals(m)[0]} data files, digest {m.model_digest[:12]})"
                + (f"; restarted {result.restarts} time(s) from the last version" if result.restarts else "")
            )


class VersionTicker:
    """Prints a line as each new model version of a store is committed (a thread polling the store).

    A display aid: no store error ends the CLI or the thread. Its first reading (the newest version before
    the run) is retried on transient store errors (``attempts``, jittered exponential backoff from
    ``backoff_s``); a store still unavailable after that leaves the first reading to the thread, which
    keeps polling (found by bench chaos: one connection reset at that first ``latest()`` ended
    ``freshrec stream``, and every restart, a new process with the same fault schedule, ended the same
    way). A version whose manifest cannot be read is retried at the next poll on a transient error, and
    reported as unreadable (and passed) on any other."""

    def __init__(
        self,
        store_url: str,
        poll_s: float = 0.3,
        attempts: int = 5,
        backoff_s: float = 0.2,
        storage_options: dict | None = None,
    ) -> None:
        import threading

        from versions import VersionStore

        self.store = VersionStore(store_url, storage_options)
        self.poll_s = poll_s
        self.seen: int | None = self._first_reading(max(1, attempts), backoff_s)  # None: not read yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="freshrec-version-ticker")

    def _first_reading(self, attempts: int, backoff_s: float) -> int | None:
        import random
        import sys
        import time

        from versions import is_transient

        for attempt in range(attempts):
            try:
                return self.store.latest() or 0
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if attempt == attempts - 1:
                    print(
                        f"      (the version store is not answering ({exc}); committed versions are listed once it "
                        "does: training goes on)",
                        file=sys.stderr,
                        flush=True,
                    )
                    return None
                time.sleep(backoff_s * 2**attempt * random.uniform(0.5, 1.5))
        return None

    def __enter__(self) -> "VersionTicker":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._tick()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._tick()

    def _tick(self) -> None:
        from versions import NoSuchVersionError, is_transient

        try:
            if self.seen is None:  # the store did not answer at start: the newest version now is the baseline
                self.seen = self.store.latest() or 0
                return
            committed = [v for v in self.store.versions() if v > self.seen]
        except Exception:
            return
        for v in committed:
            try:
                m = self.store.manifest(v)
            except NoSuchVersionError:  # removed (gc) since it was listed
                self.seen = v
                continue
            except Exception as exc:
                if is_transient(exc):
                    return  # the next poll reads it again
                print(f"      committed version {v}: manifest unreadable ({type(exc).__name__}: {exc})", flush=True)
                self.seen = v
                continue
            last = m.data_files[-1] if m.data_files else "-"
            how = (
                f"compacted from v{m.extra['compacted_from']}"
                if "compacted_from" in m.extra
                else f"pause {m.extra.get('pause_ms', 0):.1f} ms"
            )
            print(
                f"      committed version {v}: {m.kind}, step {m.step}, after {last}, {m.rows:,} rows, "
                f"digest {m.model_digest[:12]} ({how})",
                flush=True,
            )
            self.seen = v


class graceful_stop:
    """Ctrl-C / SIGTERM: the first asks the workers to commit a final version and stop at the next data-file
    boundary; a second interrupts at once (the last committed version is still intact)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.requested, self._old = run_dir, False, {}

    def _handle(self, signum, frame) -> None:
        import sys

        from trainer.runfiles import request_stop

        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        request_stop(self.run_dir)
        print(
            "\nstopping: committing a final version at the next data-file boundary (Ctrl-C again to abort at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> "graceful_stop":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


def _train(args: argparse.Namespace) -> int:
    return run_and_summarise(args, args.data, None, drain=True)


def _stream(args: argparse.Namespace) -> int:
    return run_and_summarise(args, args.history, args.incoming, drain=args.drain, idle_timeout=args.idle_timeout)
