"""``freshrec snapshots``: list, show, verify and garbage-collect committed model versions."""

from __future__ import annotations

import argparse
import json
import sys

from cluster.commands.argtypes import positive_int as _positive
from cluster.errors import UserError


def _version(text: str) -> int | str:
    if text == "latest":
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"VERSION must be a positive integer or 'latest', got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"VERSION must be >= 1, got {v}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return v


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _store_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", metavar="URL", help="the version store: a path, file://, s3://bucket/prefix, memory://")
    where.add_argument("--run-dir", metavar="DIR", help="a training run directory: the store at DIR/versions")
    p.add_argument("--storage-option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="fsspec storage option (repeatable), e.g. endpoint_url=http://127.0.0.1:9000")
    p.add_argument("--json", action="store_true", help="print JSON")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshots", help="list, show, verify and gc committed model versions",
                       description="Committed model versions (full and delta) in a version store; see docs/versions.md.")
    ssub = p.add_subparsers(dest="snapshots_command", metavar="ACTION", required=True)

    ls = ssub.add_parser("list", help="committed versions: kind, step, data files, rows, bytes, digest")
    _store_args(ls)
    ls.set_defaults(func=_list)

    show = ssub.add_parser("show", help="one version's manifest")
    show.add_argument("version", type=_version, metavar="VERSION", help="a version number or 'latest'")
    _store_args(show)
    show.set_defaults(func=_show)

    verify = ssub.add_parser("verify", help="check every part's checksum (the whole chain) and recompute the model digest",
                             description="Exit 0 when every part of VERSION and of the versions it builds on is intact "
                                         "and the recomputed model digest equals the manifest's; exit 1 naming the "
                                         "bad part otherwise.")
    verify.add_argument("version", type=_version, metavar="VERSION", help="a version number or 'latest'")
    verify.add_argument("--no-digest", action="store_true", help="checksums only (no materialisation)")
    _store_args(verify)
    verify.set_defaults(func=_verify)

    gc = ssub.add_parser("gc", help="delete old versions, keeping the newest N and every version their chains need")
    gc.add_argument("--keep", type=_positive, default=5, metavar="N", help="committed versions to keep (default 5)")
    gc.add_argument("--grace-s", type=_seconds, default=3600.0, metavar="S",
                    help="uncommitted directories older than this are removed (default 3600)")
    _store_args(gc)
    gc.set_defaults(func=_gc)


def _open(args: argparse.Namespace):
    from pathlib import Path

    from versions import VersionStore

    url = args.store if args.store else str(Path(args.run_dir) / "versions")
    return VersionStore(url, dict(args.storage_option))


def _resolve(store, version) -> int:
    from versions import NoSuchVersionError

    if version == "latest":
        latest = store.latest()
        if latest is None:
            raise NoSuchVersionError(None, ())
        return latest
    return version


def _run(fn, args: argparse.Namespace) -> int:
    from versions import NoSuchVersionError, StoreUnavailableError

    try:
        return fn(args, _open(args))
    except (NoSuchVersionError, StoreUnavailableError) as exc:
        raise UserError(str(exc)) from exc


def _list(args: argparse.Namespace) -> int:
    return _run(_do_list, args)


def _do_list(args, store) -> int:
    rows = [m.summary() for m in store.list()]
    if args.json:
        print(json.dumps(rows))
        return 0
    return print_versions(store, rows)


def print_versions(store, rows: list[dict] | None = None) -> int:
    """The table of ``freshrec snapshots list``."""
    rows = [m.summary() for m in store.list()] if rows is None else rows
    if not rows:
        print(f"no committed versions in {store.url}")
        return 0
    print(f"{'version':>7} {'parent':>6} {'kind':5} {'step':>8} {'committed_at (UTC)':20} {'rows':>11} {'bytes':>13} "
          f"{'digest':12} data files")
    for r in rows:
        files = r["data_files"]
        shown = f"{len(files)} (last {files[-1]})" if files else "0"
        print(f"{r['version']:>7} {r['parent'] if r['parent'] is not None else '-':>6} {r['kind']:5} {r['step']:>8} "
              f"{r['committed_at'][:19].replace('T', ' '):20} {r['rows']:>11,} {r['bytes']:>13,} {r['model_digest'][:12]:12} {shown}")
    return 0


def _show(args: argparse.Namespace) -> int:
    return _run(_do_show, args)


def _do_show(args, store) -> int:
    m = store.manifest(_resolve(store, args.version))
    if args.json:
        print(json.dumps(m.to_dict()))
    else:
        print(m.to_json())
    return 0


def _verify(args: argparse.Namespace) -> int:
    return _run(_do_verify, args)


def _do_verify(args, store) -> int:
    from versions import CorruptVersionError

    v = _resolve(store, args.version)
    m = store.manifest(v)
    problems = store.verify_chain(v)
    digest = None
    if not problems and not args.no_digest:
        try:
            digest = store.digest(v)
        except CorruptVersionError as exc:
            problems.append(str(exc))
        else:
            if m.model_digest and digest != m.model_digest:
                problems.append(f"version {v}: model digest mismatch: recomputed {digest}, the manifest says "
                                f"{m.model_digest}")
    result = {"version": v, "ok": not problems, "problems": problems, "chain": [c.version for c in store.chain(v)]
              if not any("(parent" in p for p in problems) else None,
              "model_digest": m.model_digest, "recomputed_digest": digest}
    if args.json:
        print(json.dumps(result))
    elif problems:
        for p in problems:
            print(f"BAD  {p}", file=sys.stderr)
    else:
        note = "" if args.no_digest else (" and the recomputed model digest matches" if m.model_digest
                                          else " (the manifest records no model digest)")
        print(f"OK   version {v}: every part of chain {result['chain']} is intact{note}")
    return 0 if not problems else 1


def _gc(args: argparse.Namespace) -> int:
    return _run(_do_gc, args)


def _do_gc(args, store) -> int:
    result = store.gc(keep=args.keep, grace_s=args.grace_s)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"removed versions {result['removed'] or 'none'}; kept {result['kept']}; "
              f"removed uncommitted {result['removed_uncommitted'] or 'none'}")
    return 0
