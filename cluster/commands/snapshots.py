"""``freshrec snapshots``: list, show, verify and garbage-collect committed model versions; see what
serving follows (``status``), roll serving back to a version (``rollback``) and release it (``unpin``).

Rollback works through the store, not through Ray: ``rollback V`` writes ``ROOT/PINNED`` (atomic),
every replica following the store reads it at its next poll (0.2 s by default) and loads V in the
background; ``unpin`` removes it and replicas follow ``PUBLISHED`` again. So it reaches replicas
started by ``freshrec serve``, by ``freshrec submit -- serve`` on a Ray cluster and by a KubeRay
RayService alike, with nothing but access to the store.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

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


def _version_number(text: str) -> int:
    v = _version(text)
    if v == "latest":
        raise argparse.ArgumentTypeError("VERSION must be a version number (see `freshrec snapshots list`)")
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
    where.add_argument(
        "--store", metavar="URL", help="the version store: a path, file://, s3://bucket/prefix, memory://"
    )
    where.add_argument("--run-dir", metavar="DIR", help="a training run directory: the store at DIR/versions")
    p.add_argument(
        "--storage-option",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option (repeatable), e.g. endpoint_url=http://127.0.0.1:9000",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "snapshots",
        help="list, show, verify and gc committed model versions; roll serving back",
        description="Committed model versions (full and delta) in a version store; see docs/versions.md.",
    )
    ssub = p.add_subparsers(dest="snapshots_command", metavar="ACTION", required=True)

    ls = ssub.add_parser("list", help="committed versions: kind, step, data files, rows, bytes, digest")
    _store_args(ls)
    ls.set_defaults(func=_list)

    show = ssub.add_parser("show", help="one version's manifest")
    show.add_argument("version", type=_version, metavar="VERSION", help="a version number or 'latest'")
    _store_args(show)
    show.set_defaults(func=_show)

    verify = ssub.add_parser(
        "verify",
        help="check every part's checksum (the whole chain) and recompute the model digest",
        description="Exit 0 when every part of VERSION and of the versions it builds on is intact "
        "and the recomputed model digest equals the manifest's; exit 1 naming the "
        "bad part otherwise.",
    )
    verify.add_argument("version", type=_version, metavar="VERSION", help="a version number or 'latest'")
    verify.add_argument("--no-digest", action="store_true", help="checksums only (no materialisation)")
    _store_args(verify)
    verify.set_defaults(func=_verify)

    gc = ssub.add_parser(
        "gc",
        help="delete old versions, keeping the newest N and every version their chains need",
        description="Keeps the newest N committed versions, LATEST, PUBLISHED, PINNED, every "
        "version a serving lease names and the chains they need; never removes a "
        "version the writer is still writing (its writer lease lists it). Safe while "
        "training and serving run; see docs/versions.md.",
    )
    gc.add_argument("--keep", type=_positive, default=5, metavar="N", help="committed versions to keep (default 5)")
    gc.add_argument(
        "--grace-s",
        type=_seconds,
        default=3600.0,
        metavar="S",
        help="uncommitted directories older than this are removed (default 3600)",
    )
    _store_args(gc)
    gc.set_defaults(func=_gc)

    status = ssub.add_parser(
        "status",
        help="what serving follows (PINNED, PUBLISHED, LATEST, the gate's last "
        "decisions), who serves what (serving leases) and who writes",
        description="PINNED, PUBLISHED, LATEST and the versions held back since the last "
        "published one; every serving lease (replica, table shard, search: the "
        "version it serves, expired ones marked) and the writer lease.",
    )
    _store_args(status)
    status.set_defaults(func=_status)

    rb = ssub.add_parser(
        "rollback",
        help="pin serving to an earlier version (every replica, within seconds)",
        description="Write the store's PINNED pointer: every replica following the store loads "
        "VERSION at its next poll and serves it until `freshrec snapshots unpin`. The "
        "version's chain is verified first (a corrupt one is refused, exit 1). A replica "
        "started with `freshrec serve --pin-version` keeps its own pin.",
    )
    rb.add_argument("version", type=_version_number, metavar="VERSION", help="a committed version number")
    rb.add_argument(
        "--wait-target",
        metavar="HOST:PORT",
        help="then wait until the gRPC server at HOST:PORT answers ModelInfo with VERSION",
    )
    rb.add_argument("--timeout", type=_seconds, default=30.0, metavar="S", help="for --wait-target (default 30)")
    _store_args(rb)
    rb.set_defaults(func=_rollback)

    un = ssub.add_parser(
        "unpin",
        help="serving follows the newest published version again",
        description="Remove the store's PINNED pointer: replicas go back to PUBLISHED (or LATEST "
        "for a store that was never published) at their next poll.",
    )
    un.add_argument(
        "--wait-target",
        metavar="HOST:PORT",
        help="then wait until the gRPC server at HOST:PORT serves the version it should follow",
    )
    un.add_argument("--timeout", type=_seconds, default=30.0, metavar="S", help="for --wait-target (default 30)")
    _store_args(un)
    un.set_defaults(func=_unpin)


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
    rows = with_serving(store, [m.summary() for m in store.list()])
    if args.json:
        print(json.dumps(rows))
        return 0
    return print_versions(store, rows)


def with_serving(store, rows: list[dict]) -> list[dict]:
    """Each row plus ``gate`` (publish / hold / None: never judged), ``gate_reason`` and ``pointers``
    (LATEST, PUBLISHED, PINNED naming it)."""
    state = store.serving_state() if rows else {}
    for r in rows:
        d = store.gate_decision(r["version"])
        r["gate"] = d.get("decision") if d else None
        r["gate_reason"] = d.get("reason") if d else None
        r["pointers"] = [name.upper() for name in ("latest", "published", "pinned") if state.get(name) == r["version"]]
    return rows


def print_versions(store, rows: list[dict] | None = None) -> int:
    """The table of ``freshrec snapshots list``."""
    rows = with_serving(store, [m.summary() for m in store.list()]) if rows is None else rows
    if not rows:
        print(f"no committed versions in {store.url}")
        return 0
    print(
        f"{'version':>7} {'parent':>6} {'kind':5} {'step':>8} {'committed_at (UTC)':20} {'rows':>11} {'bytes':>13} "
        f"{'digest':12} {'gate':8} data files"
    )
    for r in rows:
        files = r["data_files"]
        shown = f"{len(files)} (last {files[-1]})" if files else "0"
        gate = r.get("gate") or "-"
        marks = f"  <- {', '.join(r['pointers'])}" if r.get("pointers") else ""
        print(
            f"{r['version']:>7} {r['parent'] if r['parent'] is not None else '-':>6} {r['kind']:5} {r['step']:>8} "
            f"{r['committed_at'][:19].replace('T', ' '):20} {r['rows']:>11,} {r['bytes']:>13,} "
            f"{r['model_digest'][:12]:12} {gate:8} {shown}{marks}"
        )
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
                problems.append(
                    f"version {v}: model digest mismatch: recomputed {digest}, the manifest says {m.model_digest}"
                )
    result = {
        "version": v,
        "ok": not problems,
        "problems": problems,
        "chain": [c.version for c in store.chain(v)] if not any("(parent" in p for p in problems) else None,
        "model_digest": m.model_digest,
        "recomputed_digest": digest,
    }
    if args.json:
        print(json.dumps(result))
    elif problems:
        for p in problems:
            print(f"BAD  {p}", file=sys.stderr)
    else:
        note = (
            ""
            if args.no_digest
            else (
                " and the recomputed model digest matches"
                if m.model_digest
                else " (the manifest records no model digest)"
            )
        )
        print(f"OK   version {v}: every part of chain {result['chain']} is intact{note}")
    return 0 if not problems else 1


def _gc(args: argparse.Namespace) -> int:
    return _run(_do_gc, args)


def _do_gc(args, store) -> int:
    result = store.gc(keep=args.keep, grace_s=args.grace_s)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"removed versions {result['removed'] or 'none'}; kept {result['kept']}; "
            f"removed uncommitted {result['removed_uncommitted'] or 'none'}; "
            f"removed {len(result.get('removed_temp', []))} temporary files of failed writes"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    return _run(_do_status, args)


def _do_status(args, store) -> int:
    state = store.serving_state()
    held = []
    for v in reversed(store.versions()):
        if state["published"] is not None and v <= state["published"]:
            break
        d = store.gate_decision(v)
        if d and d.get("decision") == "hold":
            held.append({"version": v, "code": d.get("code"), "reason": d.get("reason")})
    state["held_since_published"] = held[::-1]
    now = time.time()
    state["leases"] = [
        {**dataclasses.asdict(lease), "expired": lease.expired(now), "expires_in_s": round(lease.expires_at - now, 1)}
        for lease in store.leases(include_expired=True)
    ]
    writer = store.writer_state()
    state["writer"] = (
        None
        if writer is None
        else {k: writer.get(k) for k in ("holder", "host", "pid", "epoch", "live", "expires_at", "last_version")}
        | {"writing": sorted(int(v) for v in writer.get("writing", {}))}
    )
    if args.json:
        print(json.dumps(state))
        return 0
    print(
        f"serving follows version {state['target']} ({state['why']})"
        if state["target"] is not None
        else "no committed version yet: replicas wait"
    )
    for name in ("pinned", "published", "latest"):
        print(f"  {name.upper():9} {state[name] if state[name] is not None else '-'}")
    for h in state["held_since_published"]:
        print(f"  held back: version {h['version']} ({h['code']}): {h['reason']}")
    if state["leases"]:
        print(f"serving leases ({sum(not x['expired'] for x in state['leases'])} live):")
        print(f"  {'holder':32} {'role':11} {'version':>7} {'host':20} lease")
        for x in state["leases"]:
            when = (
                f"EXPIRED {-x['expires_in_s']:.0f} s ago" if x["expired"] else f"expires in {x['expires_in_s']:.0f} s"
            )
            print(f"  {x['holder']:32} {x['role']:11} {x['version']:>7} {x['host']:20} {when}")
    else:
        print("serving leases: none (no replica, table shard or search replica records what it serves)")
    w = state["writer"]
    if w is None:
        print("writer: none has written with a lease")
    else:
        print(
            f"writer: {w['holder']} (host {w['host']}, pid {w['pid']}, epoch {w['epoch']}, "
            f"{'live' if w['live'] else 'lease lapsed or released'}; writing {w['writing'] or 'nothing'})"
        )
    return 0


def _rollback(args: argparse.Namespace) -> int:
    return _run(_do_rollback, args)


def _do_rollback(args, store) -> int:
    v = args.version
    store.manifest(v)  # NoSuchVersionError (exit 2) names the committed versions
    problems = store.verify_chain(v)
    if problems:
        for p in problems:
            print(f"BAD  {p}", file=sys.stderr)
        print(f"freshrec: error: version {v} does not verify: not pinned (serving is unchanged)", file=sys.stderr)
        return 1
    store.pin(v)
    print(
        f"pinned serving to version {v}: replicas following {store.url} load it at their next poll; "
        f"`freshrec snapshots unpin` releases it"
    )
    return _wait(args, v)


def _unpin(args: argparse.Namespace) -> int:
    return _run(_do_unpin, args)


def _do_unpin(args, store) -> int:
    was = store.pinned()
    store.unpin()
    state = store.serving_state()
    print(
        f"unpinned (was {was if was is not None else 'not pinned'}): serving follows version {state['target']} "
        f"({state['why']})"
    )
    return _wait(args, state["target"]) if state["target"] is not None else 0


def _wait(args, version: int) -> int:
    if not args.wait_target:
        return 0
    import time

    from serving.client import ScoringClient

    deadline = time.monotonic() + args.timeout
    t0 = time.monotonic()
    last = None
    with ScoringClient(args.wait_target) as client:
        while time.monotonic() < deadline:
            try:
                last = client.model_info().model_version
            except Exception as exc:
                last = f"{type(exc).__name__}"
            if last == version:
                print(f"{args.wait_target} serves version {version} ({time.monotonic() - t0:.2f} s)")
                return 0
            time.sleep(0.05)
    print(
        f"freshrec: error: {args.wait_target} did not serve version {version} within {args.timeout:g} s "
        f"(last answer: {last}); the pointer is written, replicas may still be loading it",
        file=sys.stderr,
    )
    return 1
