"""CPU-seconds summed over every process of a run: this process and all its descendants (with a local Ray:
the GCS, the raylet, the dashboard, the workers, the shard actors, the Ray Train workers), by psutil.

    tree = ProcessTreeCPU().start()      # a background thread polls the tree every ``interval_s``
    a = tree.snapshot()                  # CPU-seconds so far, every process of the tree
    ...                                  # the work
    used = tree.snapshot() - a           # CPU-seconds of the work, summed over the processes
    tree.stop()

A process is known by (pid, create_time). Each poll keeps the last user+system time seen of every process;
a process that ended keeps the last value seen, so a process that ends loses at most the CPU it used in
the last ``interval_s`` before its end (a poll every 0.1 s by default; ``snapshot`` polls at once). Ray
processes that are not descendants of this process (a cluster joined with ``--address``) are not seen:
the figure is for a local Ray started by the run.
"""

from __future__ import annotations

import os
import threading


class ProcessTreeCPU:
    def __init__(self, root_pid: int | None = None, interval_s: float = 0.1) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(root_pid or os.getpid())
        self.interval_s = interval_s
        self._seen: dict[tuple[int, float], float] = {}  # (pid, create_time) -> last user+system seen
        self._names: dict[tuple[int, float], str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ProcessTreeCPU:
        self.snapshot()
        self._thread = threading.Thread(target=self._run, name="cpu-tree", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ProcessTreeCPU:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.snapshot()

    def _poll(self) -> None:
        psutil = self._psutil
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            procs = [self.root]
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    key = (p.pid, p.create_time())
                    name = self._names.get(key) or _name_of(p)
            except psutil.Error:  # ended meanwhile: its last value seen stays
                continue
            used = t.user + t.system
            with self._lock:
                if used >= self._seen.get(key, 0.0):
                    self._seen[key] = used
                    self._names.setdefault(key, name)

    def snapshot(self) -> float:
        """Poll now; CPU-seconds of every process of the tree seen so far (since it started)."""
        self._poll()
        with self._lock:
            return float(sum(self._seen.values()))

    def by_name(self) -> dict[str, float]:
        """CPU-seconds so far per process name (``raylet``, ``gcs_server``, ``ray::TableShard``, ...)."""
        out: dict[str, float] = {}
        with self._lock:
            for key, used in self._seen.items():
                name = self._names.get(key, "?")
                out[name] = out.get(name, 0.0) + used
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _name_of(p) -> str:
    """The process's name; for a plain ``python`` process the script or module it runs (Ray's dashboard,
    log monitor, a worker before it names itself): ``python:dashboard.py``."""
    name = p.name()
    if name.startswith("python"):
        args = p.cmdline()[1:]
        if args[:1] == ["-m"] and len(args) > 1:
            return f"python:-m {args[1]}"
        if args[:1] == ["-c"]:
            return "python:-c"
        script = next((a for a in args if not a.startswith("-")), "")
        return f"python:{script.rsplit('/', 1)[-1]}" if script else name
    return name


def per_thousand(cpu_s: float, examples: int) -> float:
    """CPU-seconds per 1,000 examples (NaN without examples)."""
    return 1e3 * cpu_s / examples if examples else float("nan")
