"""CPU seconds of a pytest run, per process and per test module: what bounds ``make test-fast`` on a loaded machine.

Wall time on a shared machine measures the other load; CPU seconds (user + system) of each pytest process do not,
much. ``FRESHREC_TEST_CPU=DIR`` (set by the caller; nothing is registered, nothing is measured without it) makes
``tests/conftest.py`` register this plugin in every pytest process (the xdist controller and each worker); each
writes ``DIR/<worker id or main>.json`` at the end of its session:

- ``startup_s``: the process's CPU until pytest configures it (the interpreter, pytest, its plugins, the root
  conftest and what it imports);
- ``collect_s``: collecting (importing every test module and what each imports: each xdist worker collects the
  whole suite, so an import at a test module's top level is paid once per worker);
- ``modules``: per test module, the CPU of running its tests (setup, call and teardown, module fixtures
  included), this process's own and that of the child processes it waited for (``children_s``: subprocess checks);
- ``tests``: the same per test, and its wall seconds (a test whose wall time is far above its CPU waits: a sleep,
  a timeout, a poll); ``heavy_imported_at_collection``: which of ``HEAVY`` collection imported;
  ``total_s``: the whole process at the end, children included.

``python -m tests.support.cpu_profile [--write-costs tests/unit/cpu_seconds.json] DIR [DIR ...]`` prints a summary
of one or more runs (the median over the runs and its range per line): start-up and collection per worker, the modules by CPU, each worker's total, and
the estimated wall time on two idle cores (the busier worker's CPU: ``--dist loadfile`` gives a whole module to one
worker, so the slowest module and the imbalance bound it). ``--write-costs`` also writes each module's median CPU
seconds, the order in which ``tests/conftest.py`` hands the unit modules to the workers (the most first).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import pytest

ENV = "FRESHREC_TEST_CPU"
# the dependencies whose import costs a worker seconds: which of them collection imported (``heavy_imported_at_collection``)
HEAVY = (
    "torch",
    "fbgemm_gpu",
    "torchrec",
    "ray",
    "ray.train",
    "ray.serve",
    "pyarrow.dataset",
    "moto",
    "hypothesis",
    "matplotlib",
    "grpc",
    "pandas",
    "s3fs",
    "boto3",
    "scipy",
    "sklearn",
    "fastapi",
    "uvicorn",
)


def _cpu() -> tuple[float, float]:
    """(this process, its waited-for children): user + system CPU seconds since the process started."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


class CpuProfile:
    """The pytest plugin: the hooks only read ``getrusage`` and add to dicts; the JSON is written at the end."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.startup = _cpu()
        self.collected: tuple[float, float] | None = None
        self.modules: dict[str, list[float]] = {}
        self.tests: dict[str, list[float]] = {}
        self.heavy: list[str] = []

    def pytest_collection_finish(self, session) -> None:
        self.collected = _cpu()
        self.heavy = sorted(name for name in HEAVY if name in sys.modules)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        before, wall = _cpu(), time.perf_counter()
        yield
        after, wall = _cpu(), time.perf_counter() - wall
        own, kids = after[0] - before[0], after[1] - before[1]
        module = self.modules.setdefault(item.nodeid.split("::", 1)[0], [0.0, 0.0])
        module[0] += own
        module[1] += kids
        self.tests[item.nodeid] = [round(own, 4), round(kids, 4), round(wall, 4)]

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        end = _cpu()
        collected = self.collected or self.startup  # the xdist controller collects nothing
        data = {
            "worker": self.worker,
            "startup_s": round(self.startup[0] + self.startup[1], 4),
            "collect_s": round(collected[0] - self.startup[0] + collected[1] - self.startup[1], 4),
            "total_s": round(end[0] + end[1], 4),
            "total_self_s": round(end[0], 4),  # the xdist controller's children are its workers: count them once
            "modules": {
                name: {"self_s": round(v[0], 4), "children_s": round(v[1], 4)} for name, v in self.modules.items()
            },
            "tests": self.tests,
            "heavy_imported_at_collection": self.heavy,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"{self.worker}.json").write_text(json.dumps(data, indent=1, sort_keys=True))


def register(config) -> None:
    """Register the plugin when ``FRESHREC_TEST_CPU`` names a directory (called by ``tests/conftest.py``)."""
    out = os.environ.get(ENV)
    if out and not config.pluginmanager.has_plugin("freshrec_cpu_profile"):
        config.pluginmanager.register(CpuProfile(Path(out)), "freshrec_cpu_profile")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:7.2f}"
    return f"{_median(values):7.2f} [{min(values):.2f}-{max(values):.2f}]"


def summarise(run_dirs: list[Path], top: int = 30) -> str:
    """A text summary of one or more runs' JSON files (each run a directory written by the plugin)."""
    runs = [
        {json.loads(p.read_text())["worker"]: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))}
        for d in run_dirs
    ]
    lines = [f"{len(runs)} run(s): median [range] of CPU seconds (user+sys, children included)"]
    workers = sorted({w for run in runs for w in run})
    for w in workers:
        per = [run[w] for run in runs if w in run]
        if w == "main" and len(workers) > 1:  # the xdist controller: it collects nothing; its children are the workers
            lines.append(
                f"  {w:>5}: start-up {_fmt([p['startup_s'] for p in per])}  own total {_fmt([p['total_self_s'] for p in per])}"
            )
            continue
        lines.append(
            f"  {w:>5}: start-up {_fmt([p['startup_s'] for p in per])}  collection {_fmt([p['collect_s'] for p in per])}"
            f"  tests {_fmt([sum(m['self_s'] + m['children_s'] for m in p['modules'].values()) for p in per])}"
            f"  total {_fmt([p['total_s'] for p in per])}"
        )
    busiest = [max((run[w]["total_s"] for w in run if w != "main"), default=0.0) for run in runs]
    all_cpu = [sum(run[w]["total_self_s" if w == "main" and len(run) > 1 else "total_s"] for w in run) for run in runs]
    lines.append(
        f"  all processes: {_fmt(all_cpu)}  the busier worker (the wall time on idle cores, about): {_fmt(busiest)}"
    )
    modules: dict[str, list[float]] = {}
    for run in runs:
        for data in run.values():
            for name, m in data["modules"].items():
                modules.setdefault(name, []).append(m["self_s"] + m["children_s"])
    lines.append(f"modules by CPU (top {top} of {len(modules)}):")
    for name, values in sorted(modules.items(), key=lambda kv: -_median(kv[1]))[:top]:
        lines.append(f"  {_fmt(values)}  {name}")
    tests: dict[str, list[float]] = {}
    for run in runs:
        for data in run.values():
            for name, (own, kids, *_wall) in data["tests"].items():
                tests.setdefault(name, []).append(own + kids)
    lines.append(f"tests by CPU (top {top}):")
    for name, values in sorted(tests.items(), key=lambda kv: -_median(kv[1]))[:top]:
        lines.append(f"  {_fmt(values)}  {name}")
    return "\n".join(lines)


def module_costs(run_dirs: list[Path]) -> dict[str, float]:
    """{module: its median CPU seconds over the runs}, the most first (``tests/unit/cpu_seconds.json``)."""
    per: dict[str, list[float]] = {}
    for d in run_dirs:
        for p in d.glob("*.json"):
            for name, m in json.loads(p.read_text())["modules"].items():
                per.setdefault(name, []).append(m["self_s"] + m["children_s"])
    costs = {name: round(_median(values), 1) for name, values in per.items()}
    return dict(sorted(costs.items(), key=lambda kv: (-kv[1], kv[0])))


def main(args: list[str]) -> None:
    usage = (
        "usage: python -m tests.support.cpu_profile [--write-costs FILE] RUN_DIR [RUN_DIR ...] "
        "(directories written with FRESHREC_TEST_CPU=RUN_DIR)"
    )
    out = None
    if args[:1] == ["--write-costs"] and len(args) > 1:
        out, args = Path(args[1]), args[2:]
    if not args:
        sys.exit(usage)
    runs = [Path(a) for a in args]
    if out is not None:
        out.write_text(json.dumps(module_costs(runs), indent=0) + "\n")
        print(f"wrote {out}")
    print(summarise(runs))


if __name__ == "__main__":
    main(sys.argv[1:])
