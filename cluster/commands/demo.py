"""``freshrec demo``: the whole loop on real data, on a local Ray that it starts itself."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from cluster.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the pipeline end to end on real data (local Ray)",
        description="Validate a real behaviour log, split it into 5-minute data files, and train on them. "
        "Uses the Taobao log in ../shared/data when present, else fetches MovieLens-100K from PyPI.",
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="working directory (recreated)")
    p.add_argument("--input", type=Path, default=None, help="a log file to use instead (needs --spec)")
    p.add_argument("--spec", default=None, help="feature spec for --input")
    p.set_defaults(func=_demo)


def _pick_data(args: argparse.Namespace, out: Path) -> tuple[list[Path], str, str]:
    if args.input is not None:
        if not args.spec:
            raise UserError("--input needs --spec (a YAML file or a built-in name)")
        return [args.input], args.spec, "5m"
    from trainer.data.fetch import SHARED_TAOBAO

    if SHARED_TAOBAO.exists():
        return [SHARED_TAOBAO], "taobao", "5m"
    from trainer.data.fetch import fetch_movielens_100k

    print("shared Taobao log not found; fetching MovieLens-100K from PyPI (recbole==1.2.1 wheel)")
    files = fetch_movielens_100k(out / "ml-100k")
    return [files[0]], "movielens100k", "7d"


def _demo(args: argparse.Namespace) -> int:
    from trainer.data import DeadLetterWriter, Validator, load_spec
    from trainer.data.split import parse_duration, split_into_files

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    inputs, spec_name, every = _pick_data(args, out)
    spec = load_spec(spec_name)
    print(f"[1/3] validate + split {', '.join(str(i) for i in inputs)} (spec {spec.name}) into {every} data files")
    with DeadLetterWriter(out / "dead-letter.jsonl") as dl:
        validator = Validator(spec, dl)
        result = split_into_files(inputs, validator, parse_duration(every), out / "data", progress=sys.stderr.isatty())
    r = validator.report
    print(
        f"      rows in {r.rows_in:,}: good {r.rows_good:,}, dead {r.rows_dead:,}, duplicate {r.rows_duplicate:,} "
        f"(balanced: {r.balanced}); {len(result.files)} data files in {out / 'data'}"
    )
    for reason, count in sorted(r.by_reason.items()):
        print(f"      dead-letter {reason}: {count:,}")
    held_back = _held_back(result.files)  # land after serving has started: the newer version answers
    run = _train_stage(args, out, spec, result.files[: len(result.files) - len(held_back)], spec_name)
    _serve_stage(out, spec, spec_name, run, held_back)
    return 0


def _train_stage(args, out, spec, files, spec_name: str) -> dict:
    from cluster.commands.snapshots import print_versions
    from cluster.commands.train import VersionTicker
    from cluster.config import RunConfig
    from cluster.ray_runtime import ensure_ray
    from trainer.plots import plot_run, table_header, table_row
    from trainer.run import TrainJob, run_ps_training
    from trainer.versioning import version_extra
    from versions import VersionStore

    cfg = RunConfig(spec=spec_name, workers=2)
    store_url = str((out / "run" / "versions").absolute())

    history, incoming = out / "history", out / "incoming"
    history.mkdir()
    incoming.mkdir()
    cut = max(1, len(files) // 3)
    for i, f in enumerate(files):  # the first third is history, the rest lands as new data files
        f.rename((history if i < cut else incoming) / f.name)
    from trainer.run import describe_ps

    print(
        f"[2/3] local Ray; parameter server ({describe_ps(cfg.ps, cfg.workers)}, FBGEMM row-wise Adagrad); Ray Train "
        f"with {cfg.workers} workers (gloo DDP); cold start on {cut} history data files, then stream "
        f"{len(files) - cut} incoming data files"
    )
    ensure_ray(cfg.ray)
    print(
        "progressive validation: each data file is scored before the model trains on it; after each one a "
        "consistent model version (every shard's rows + the dense model + the ledger) is committed to "
        f"{store_url}"
    )
    print(table_header(), flush=True)
    job = TrainJob(  # the demo's one run: trained here, resumed by the serving stage on the held-back files
        spec,
        out / "run",
        model=cfg.model,
        train=cfg.train,
        ps=cfg.ps,
        history=history,
        incoming=incoming,
        drain=True,
        num_workers=cfg.workers,
        store_url=store_url,
        snapshots=cfg.snapshots,
        publish=cfg.publish,
        version_extra=version_extra(spec_name, cfg.to_dict(serve=False)),
    )
    with VersionTicker(store_url):
        result, _ = run_ps_training(
            job,
            on_file=lambda i, m: print(table_row(i, m), flush=True),
        )
    last = result.metrics[-1]
    plots = plot_run(result.metrics, out / "run")
    print(
        f"trained on {len(result.metrics)} data files ({result.steps} sync steps) in {result.seconds:.1f} s; "
        f"cumulative progressive AUC {last['cumulative_auc']:.4f}"
    )
    print(
        f"run directory {out / 'run'}: metrics.jsonl, ledger.json, dense.pt, versions/, "
        f"{', '.join(p.name for p in plots)}"
    )
    print(f"model versions (freshrec snapshots list --run-dir {out / 'run'}):")
    print_versions(VersionStore(store_url))
    print(
        f"a restart on the same run directory resumes from the newest version: freshrec stream --spec {spec_name} "
        f"--history {history} --incoming {incoming} --run-dir {out / 'run'}"
    )
    return {"store_url": store_url, "history": history, "incoming": incoming, "job": job}


def _held_back(files, min_rows: int | None = None, most: int = 8) -> list:
    """The last data files, enough of them to hold ``publish.min_examples`` rows: the publish gate judges a
    smaller window together with the next one, so fewer rows would leave the newer version unpublished."""
    import pyarrow.parquet as pq

    from versions import PublishConfig

    need = PublishConfig().min_examples if min_rows is None else min_rows
    held, rows = [], 0
    for f in reversed(files[1:]):  # at least one file trains before serving starts
        held.insert(0, f)
        rows += pq.ParquetFile(f).metadata.num_rows if str(f).endswith(".parquet") else need
        if rows >= need or len(held) >= most:
            break
    return held


def _serve_stage(out, spec, spec_name: str, run: dict, held_back: list) -> None:
    """Serve the newest version over gRPC, score with it, land the held-back data files, train on them (the
    run resumes from its versions) and show the newer version answering."""
    from serving.app import serve_and_wait, stop_serving
    from serving.client import ScoringClient, score_and_show
    from serving.config import ServeConfig
    from trainer.data import Validator, read_data_file
    from trainer.plots import table_row
    from trainer.run import run_ps_training
    from versions import VersionStore

    store_url = run["store_url"]
    print(f"[3/3] serving: Ray Serve gRPC (freshrec.v1.Scorer, reflection on) following {store_url}")
    target, version = serve_and_wait(ServeConfig(store_url=store_url, catalogue=(str(run["history"]),)))
    batch = read_data_file(held_back[0], Validator(spec))
    user_col = next(f.column for f in spec.sparse if f.name == "user")
    item_col = next(f.column for f in spec.sparse if f.name == "item")
    user = int(batch.table.column(user_col)[0].as_py())
    items = list(dict.fromkeys(int(x) for x in batch.table.column(item_col).to_pylist()[:8]))[:5]
    print(f"      serving freshrec.v1 on {target} (version {version})")
    print(f"      Score user {user}, {len(items)} candidates -> {score_and_show(target, user, items)}")
    try:
        for f in held_back:
            tmp = run["incoming"] / f".{f.name}.tmp"  # the documented protocol: write, then rename
            f.rename(tmp)
            tmp.rename(run["incoming"] / f.name)
        names = held_back[0].name if len(held_back) == 1 else f"{held_back[0].name} .. {held_back[-1].name}"
        print(
            f"      landed {len(held_back)} data file(s) ({names}); the stream resumes from version {version} "
            "and trains on them"
        )
        run_ps_training(
            run["job"],
            on_file=lambda i, m: print(table_row(i, m), flush=True),
        )
        store = VersionStore(store_url)
        latest, published = store.latest(), store.published()
        if published is not None and published > version:  # the replica follows PUBLISHED on its own
            with ScoringClient(target) as client:
                newer = client.wait_ready(60, min_version=published).model_version
            print(f"      the replica swapped to version {newer} on its own; the same request now answers:")
            print(f"      Score user {user}, {len(items)} candidates -> {score_and_show(target, user, items)}")
        decision = store.gate_decision(latest) or {}
        if decision.get("decision") == "hold":  # the publish gate kept the newest from serving: say so
            print(
                f"      the publish gate held version {latest} back ({decision.get('reason')}); the replica keeps "
                f"serving version {published} (freshrec snapshots status --run-dir {out / 'run'})"
            )
        print(
            f"      (try it yourself while a `freshrec serve --run-dir {out / 'run'}` runs: grpcurl -plaintext "
            f"HOST:PORT list, or freshrec score --target HOST:PORT --user {user} --items "
            f"{','.join(map(str, items))})"
        )
    finally:
        stop_serving()
