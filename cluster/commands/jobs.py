"""``freshrec submit`` and ``freshrec jobs``: freshrec commands as Ray jobs (Ray's Job Submission SDK).

    freshrec submit --address http://HEAD:8265 -- stream --incoming /data/incoming --spec taobao
    freshrec jobs list|status ID|logs ID [--follow]|stop ID --address http://HEAD:8265

The address is the Ray dashboard's (port 8265), where the job API lives; ``$RAY_API_SERVER_ADDRESS``
stands in for ``--address`` as it does for ``ray job``. The submitted command is checked here
first (a typo fails before anything is uploaded), then runs on the cluster as
``python -m cluster.cli COMMAND...`` in a runtime environment that carries this source tree
(``working_dir``, without virtual environments, run directories or data) and
``FRESHREC_RAY_ADDRESS=auto``, so the command joins the cluster it runs on instead of starting
its own Ray. The cluster's Python must have freshrec's pinned requirements (the k8s image has).
Paths in the command are paths on the cluster: use absolute paths or URLs (``s3://...``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from cluster.errors import UserError

ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"
REPO = Path(__file__).resolve().parents[2]
# never uploaded with the working_dir (gitignore-style patterns, as runtime_env "excludes" takes them)
# ("/x": only at the top of the tree; trainer/data/ is code)
EXCLUDES = [
    ".git",
    ".venv",
    "/venv",
    "/runs",
    "/demo-out",
    "/shards",
    "/history",
    "/incoming",
    "/data",
    "*.pt",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    "*.parquet",
    "*.egg-info",
    "/build",
    "/dist",
]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "submit",
        help="run a freshrec command (train, stream, serve, ...) as a Ray job on a cluster",
        description="Submit `freshrec COMMAND...` (everything after --) to a Ray cluster through the "
        "Job Submission API and print its id. The command is checked here first.",
        epilog="example: freshrec submit --address http://10.0.0.5:8265 -- stream --spec taobao "
        "--incoming /data/incoming --run-dir /data/runs/taobao",
    )
    _address_option(s)
    s.add_argument(
        "--working-dir",
        type=Path,
        default=None,
        help="source tree to ship with the job (default: this freshrec checkout)",
    )
    s.add_argument(
        "--no-working-dir",
        action="store_true",
        help="ship nothing: the cluster's image has freshrec installed (KubeRay)",
    )
    s.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment of the job (repeatable)"
    )
    s.add_argument(
        "--python",
        default="python",
        help="the interpreter on the cluster that has freshrec's requirements (default: python on the "
        "PATH of the node that runs the driver)",
    )
    s.add_argument("--submission-id", default=None, help="job id to use (default: Ray picks one)")
    s.add_argument("--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver")
    s.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit with its status")
    s.add_argument("--timeout", type=float, default=None, help="with --follow: give up waiting after this many seconds")
    s.add_argument(
        "freshrec_args",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ...",
        help="the freshrec command to run, after --",
    )
    s.set_defaults(func=_submit)

    j = sub.add_parser(
        "jobs",
        help="list, inspect, follow and stop freshrec's Ray jobs",
        description="The Ray jobs of a cluster (the dashboard's job API).",
    )
    jsub = j.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    p = jsub.add_parser("list", help="every job: id, status, entrypoint")
    _address_option(p)
    p.set_defaults(func=_list)
    for name, helptext, func in (
        ("status", "a job's status and message", _status),
        ("logs", "a job's driver logs", _logs),
        ("stop", "ask a job to stop (SIGTERM: a training run commits a final version)", _stop),
    ):
        p = jsub.add_parser(name, help=helptext)
        p.add_argument("job_id", metavar="ID")
        _address_option(p)
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="keep streaming until the job ends")
        if name == "stop":
            p.add_argument("--wait", action="store_true", help="wait until the job has stopped")
            p.add_argument("--timeout", type=float, default=60.0)
        p.set_defaults(func=func)


def _address_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address", default=None, help=f"the Ray dashboard's job API, http://HOST:8265 (default ${ADDRESS_ENV})"
    )


# ------------------------------------------------------------------ helpers
def job_address(args: argparse.Namespace) -> str:
    address = args.address or os.environ.get(ADDRESS_ENV)
    if not address:
        raise UserError(
            f"--address is required: the Ray dashboard of the cluster, e.g. http://10.0.0.5:8265 (or set {ADDRESS_ENV})"
        )
    if "://" not in address:
        address = f"http://{address}"
    if address.startswith("ray://"):
        raise UserError(
            f"--address {address}: jobs go through the dashboard's HTTP job API (http://HOST:8265), not Ray Client"
        )
    return address


def client(address: str):
    """A JobSubmissionClient, with connection and authentication failures said plainly."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:
        raise _user_error(exc, address) from None


def _user_error(exc: BaseException, address: str) -> UserError:
    from cluster.ray_runtime import AUTH_HELP, is_auth_error

    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if is_auth_error(exc):
        return UserError(f"the Ray job API at {address} refused this request: {AUTH_HELP} ({first})")
    if isinstance(exc, ConnectionError) or "connect" in first.lower():
        return UserError(
            f"cannot reach the Ray job API at {address} ({first}): it is the dashboard port (8265) of "
            "the head node, started with `ray start --head --include-dashboard=true`; on Kubernetes "
            "it stays inside the cluster: `kubectl port-forward svc/<raycluster>-head-svc 8265`"
        )
    if "404" in first or "does not exist" in first.lower() or "not found" in first.lower():
        return UserError(f"no such job at {address}: {first} (see `freshrec jobs list`)")
    return UserError(f"the Ray job API at {address} failed: {first}")


def _call(address: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as exc:
        raise _user_error(exc, address) from None


def check_command(argv: list[str]) -> list[str]:
    """The freshrec command after ``--``, parsed here so that a mistake fails before submission."""
    from cluster.cli import build_parser

    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UserError(
            "nothing to submit: give the freshrec command after --, e.g. "
            "freshrec submit --address http://HEAD:8265 -- train --data /data/shards --spec taobao"
        )
    if argv[0] in ("submit", "jobs"):
        raise UserError(f"`freshrec {argv[0]}` runs where you are, not as a job")
    parser = build_parser()
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code:  # usage errors; --help exits 0
            message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "invalid command"
            raise UserError(f"the command to submit is not valid: {message}") from None
    return argv


def runtime_env(args: argparse.Namespace) -> dict:
    env_vars = {"FRESHREC_RAY_ADDRESS": "auto", "PYTHONUNBUFFERED": "1"}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--env {item!r}: expected KEY=VALUE")
        env_vars[key] = value
    out: dict = {"env_vars": env_vars}
    if not args.no_working_dir:
        wd = (args.working_dir or REPO).resolve()
        if not (wd / "cluster" / "cli.py").is_file():
            raise UserError(
                f"--working-dir {wd} is not a freshrec source tree (no cluster/cli.py); "
                "pass one, or --no-working-dir when the cluster's image has freshrec installed"
            )
        out["working_dir"] = str(wd)
        out["excludes"] = list(EXCLUDES)
    return out


def entrypoint(argv: list[str], installed: bool, python: str = "python") -> str:
    import shlex

    prefix = "freshrec" if installed else f"{shlex.quote(python)} -m cluster.cli"
    return f"{prefix} {shlex.join(argv)}"


# ----------------------------------------------------------------- commands
def _submit(args: argparse.Namespace) -> int:
    argv = check_command(list(args.freshrec_args))
    address = job_address(args)
    renv = runtime_env(args)
    c = client(address)
    kwargs = {
        "entrypoint": entrypoint(argv, installed=args.no_working_dir, python=args.python),
        "runtime_env": renv,
        "submission_id": args.submission_id,
    }
    if args.entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = args.entrypoint_num_cpus
    job_id = _call(address, c.submit_job, **kwargs)
    print(job_id)
    print(
        f"submitted `{kwargs['entrypoint']}` to {address}; follow it with: freshrec jobs logs {job_id} --follow "
        f"--address {address}",
        file=sys.stderr,
    )
    if not args.follow:
        return 0
    return _follow(c, address, job_id, args.timeout)


def _follow(c, address: str, job_id: str, timeout_s: float | None) -> int:
    """Print the job's logs as they come, until it ends; 0 when it SUCCEEDED, 1 otherwise."""
    import asyncio

    async def tail() -> None:
        async for lines in c.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        _call(address, asyncio.run, asyncio.wait_for(tail(), timeout_s))
    except TimeoutError:
        raise UserError(
            f"job {job_id} still runs after {timeout_s} s (it goes on; `freshrec jobs stop {job_id}` stops it)"
        ) from None
    status = wait_for_status(c, address, job_id, 30.0)
    print(f"job {job_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def wait_for_status(c, address: str, job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(_call(address, c.get_job_status, job_id).value)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def _list(args: argparse.Namespace) -> int:
    address = job_address(args)
    c = client(address)
    jobs = sorted(_call(address, c.list_jobs), key=lambda j: j.start_time or 0)
    print(f"{'ID':28} {'STATUS':10} ENTRYPOINT")
    for j in jobs:
        print(f"{str(j.submission_id or j.job_id):28} {str(j.status.value):10} {j.entrypoint}")
    return 0


def _status(args: argparse.Namespace) -> int:
    address = job_address(args)
    c = client(address)
    info = _call(address, c.get_job_info, args.job_id)
    print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    return 0


def _logs(args: argparse.Namespace) -> int:
    address = job_address(args)
    c = client(address)
    if args.follow:
        return _follow(c, address, args.job_id, None)
    print(_call(address, c.get_job_logs, args.job_id), end="")
    return 0


def _stop(args: argparse.Namespace) -> int:
    address = job_address(args)
    c = client(address)
    _call(address, c.stop_job, args.job_id)
    if args.wait:
        status = wait_for_status(c, address, args.job_id, args.timeout)
        print(f"{args.job_id}: {status}")
        return 0 if status in TERMINAL else 1
    print(f"{args.job_id}: stop requested")
    return 0
