"""Process memory as the kernel and the C allocator see it, and the allocator's knobs (issue 21).

A long stream's processes must keep a flat RSS. tracemalloc sees only Python's own allocations; what grew
in the Ray Train worker (issue 21) is outside them. This module says where a process's resident pages are
and what glibc's allocator holds, and gives a long-running loop one call per version for housekeeping:

* :func:`regions` (any process this user may read: ``bench soak`` samples Ray's workers by PID): resident
  bytes by kind, from ``/proc/PID/status`` (``RssAnon`` / ``RssFile`` / ``RssShmem``: exact) and
  ``/proc/PID/smaps`` (the anonymous part split, by the mappings' shapes): ``heap`` (glibc's main arena,
  the ``[heap]`` mapping), ``arenas`` (glibc's other malloc arenas: anonymous mappings starting on a 64 MiB
  boundary, the alignment of an arena's heaps), ``anon_other`` (every other anonymous mapping: blocks
  malloc took by ``mmap``, pymalloc's arenas, thread stacks); ``shmem`` is shared memory (Ray's object
  store is a ``/dev/shm`` mapping); plus the thread and mapping counts.
* :func:`malloc_stats` (this process): glibc's ``mallinfo2`` (bytes in use, bytes free inside the arenas,
  bytes in mmapped blocks) and ``malloc_info`` (the number of arenas, each one's size and free bytes).
* :func:`malloc_trim`: glibc returns the free pages of every arena to the kernel.
* :class:`MemoryHousekeeping`: what a long-running loop calls after each version, switched by environment
  variables (a Ray process inherits them from the raylet of an embedded Ray, or gets them through a
  ``runtime_env``'s ``env_vars``): ``FRESHREC_MALLOC_TRIM=1`` (``malloc_trim(0)`` after each version),
  ``FRESHREC_MEMORY_PROBE=PATH`` (append a JSON line of this process's memory, :func:`probe`, every
  ``FRESHREC_MEMORY_PROBE_EVERY`` versions, default 25), ``FRESHREC_TRACEMALLOC=FRAMES`` (trace Python's
  allocations; each probe line then names the sites grown since the first probe at or after
  ``FRESHREC_TRACEMALLOC_FROM`` versions, default 0), ``FRESHREC_MALLOC_ARENA_MAX=N`` and
  ``FRESHREC_MALLOC_MMAP_THRESHOLD=BYTES`` (glibc's ``mallopt`` when the loop starts: :func:`mallopt`).

glibc reads ``MALLOC_ARENA_MAX`` (and ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``) from the
environment once, when the process starts: they must be in a process's environment when it is exec'ed
(:func:`allocator_env`), not set later by Python. Linux with glibc only: elsewhere the glibc calls answer
None and :func:`regions` raises OSError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import json
import os
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping

MIB = float(2**20)
ARENA_ALIGN = 64 * 2**20  # glibc's HEAP_MAX_SIZE on 64-bit: every heap of a non-main arena starts on it
TRIM_ENV = "FRESHREC_MALLOC_TRIM"
ARENA_MAX_ENV = "FRESHREC_MALLOC_ARENA_MAX"  # mallopt(M_ARENA_MAX) when the loop starts (glibc's own: at exec)
MMAP_THRESHOLD_ENV = "FRESHREC_MALLOC_MMAP_THRESHOLD"  # mallopt(M_MMAP_THRESHOLD): fixed, no dynamic raise
PROBE_ENV = "FRESHREC_MEMORY_PROBE"
PROBE_EVERY_ENV = "FRESHREC_MEMORY_PROBE_EVERY"
TRACE_ENV = "FRESHREC_TRACEMALLOC"
TRACE_FROM_ENV = "FRESHREC_TRACEMALLOC_FROM"
# glibc's own variables, read at process start (see allocator_env)
ALLOCATOR_VARS = ("MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
REGION_KEYS = ("rss", "anon", "file", "shmem", "heap", "arenas", "anon_other", "swap", "threads", "mappings")


# ----------------------------------------------------------------------------- /proc (any readable process)
def parse_status(text: str) -> dict[str, int]:
    """``/proc/PID/status`` -> ``{"rss", "anon", "file", "shmem", "swap"}`` in bytes, ``threads``."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem", "VmSwap": "swap"}
    out = dict.fromkeys((*fields.values(), "threads"), 0)
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in fields:
            out[fields[key]] = int(rest.split()[0]) * 1024  # "123 kB"
        elif key == "Threads":
            out["threads"] = int(rest.split()[0])
    return out


def parse_smaps(text: str) -> dict[str, int]:
    """``/proc/PID/smaps`` -> resident bytes of the anonymous mappings by shape (``heap``, ``arenas``,
    ``anon_other``: see the module docstring) and ``mappings`` (how many). Shared-memory and file mappings are
    left to :func:`parse_status`'s exact totals."""
    out = {"heap": 0, "arenas": 0, "anon_other": 0, "mappings": 0}
    kind = None
    for line in text.splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):  # a mapping's header line
            out["mappings"] += 1
            start = int(head[0].split("-", 1)[0], 16)
            path = head[5].strip() if len(head) > 5 else ""
            if path == "[heap]":
                kind = "heap"
            elif path == "" or path.startswith("[anon:"):  # anonymous (thread stacks are anonymous too)
                kind = "arenas" if start % ARENA_ALIGN == 0 and head[1].startswith("rw") else "anon_other"
            elif path == "[stack]":
                kind = "anon_other"
            else:  # files, [vdso], /dev/shm (shared memory: counted by the status line)
                kind = None
        elif kind is not None and line.startswith("Rss:"):
            out[kind] += int(line.split()[1]) * 1024
    return out


def regions(pid: int | str = "self") -> dict[str, int]:
    """Resident bytes of process ``pid`` by kind (:data:`REGION_KEYS`); OSError if it is gone or unreadable."""
    with open(f"/proc/{pid}/status") as fh:
        out = parse_status(fh.read())
    with open(f"/proc/{pid}/smaps") as fh:
        out.update(parse_smaps(fh.read()))
    return out


def regions_mib(r: Mapping[str, int]) -> dict[str, float]:
    """:func:`regions`' bytes in MiB (2 decimals); counts as they are."""
    return {k: (v if k in ("threads", "mappings") else round(v / MIB, 2)) for k, v in r.items()}


# ------------------------------------------------------------------------------------- glibc (this process)
class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


_libc = None


def _glibc():
    """This process's glibc (None if the C library is not glibc or lacks mallinfo2, glibc < 2.33)."""
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.mallinfo2.restype = _MallInfo2
            lib.malloc_trim.argtypes = [ctypes.c_size_t]
            lib.malloc_trim.restype = ctypes.c_int
            lib.fopen.restype = ctypes.c_void_p
            lib.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            lib.fclose.argtypes = [ctypes.c_void_p]
            lib.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
            lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.mallopt.restype = ctypes.c_int
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def parse_malloc_info(xml: str) -> dict:
    """glibc's ``malloc_info`` XML -> ``{"arenas": n, "per_arena": [{"nr", "free", "system", "max"}],
    "free", "system", "mmap"}`` (bytes; ``free``: free chunks inside the arenas, fast bins included;
    ``system``: bytes the arenas hold from the kernel; ``mmap``: blocks taken by mmap)."""
    root = ET.fromstring(xml)

    def sizes(node) -> dict:
        out = {"free": 0, "system": 0, "max": 0, "mmap": 0}
        for t in node.findall("total"):
            if t.get("type") in ("fast", "rest"):
                out["free"] += int(t.get("size", 0))
            elif t.get("type") == "mmap":
                out["mmap"] += int(t.get("size", 0))
        for s in node.findall("system"):
            out["system" if s.get("type") == "current" else "max"] = int(s.get("size", 0))
        return out

    per = [{"nr": int(h.get("nr", i)), **sizes(h)} for i, h in enumerate(root.findall("heap"))]
    for p in per:
        p.pop("mmap")
    total = sizes(root)
    return {
        "arenas": len(per),
        "per_arena": per,
        "free": total["free"],
        "system": total["system"],
        "mmap": total["mmap"],
    }


def malloc_stats() -> dict | None:
    """This process's glibc allocator (bytes): ``in_use`` (``uordblks``), ``free`` (``fordblks``: free inside
    the arenas, fragmentation or not yet trimmed), ``arena_bytes`` (``arena``: what the arenas hold),
    ``mmapped`` (``hblkhd``: blocks taken by mmap), ``arenas`` (their number, from ``malloc_info``) and
    ``per_arena``; None without glibc."""
    lib = _glibc()
    if lib is None:
        return None
    mi = lib.mallinfo2()
    out = {
        "in_use": int(mi.uordblks),
        "free": int(mi.fordblks),
        "arena_bytes": int(mi.arena),
        "mmapped": int(mi.hblkhd),
        "mmapped_blocks": int(mi.hblks),
    }
    try:
        with tempfile.NamedTemporaryFile("r", suffix=".xml") as tmp:
            fp = lib.fopen(tmp.name.encode(), b"w")
            if fp:
                lib.malloc_info(0, fp)
                lib.fclose(fp)
                info = parse_malloc_info(tmp.read())
                out.update(arenas=info["arenas"], per_arena=info["per_arena"])
    except (OSError, ET.ParseError):
        pass
    return out


def malloc_trim(pad: int = 0) -> bool | None:
    """glibc's ``malloc_trim(pad)``: every arena's free pages go back to the kernel (``madvise``), the main
    heap's top beyond ``pad`` too. True if memory was released, None without glibc."""
    lib = _glibc()
    return None if lib is None else bool(lib.malloc_trim(int(pad)))


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's malloc.h


def mallopt(param: int, value: int) -> bool | None:
    """glibc's ``mallopt(param, value)`` (:data:`M_ARENA_MAX`, :data:`M_MMAP_THRESHOLD`, ...): True if accepted,
    None without glibc. At run time ``M_ARENA_MAX`` binds only while the process has not yet needed more
    arenas than glibc's test count (8 on 64-bit): glibc fixes its limit the first time it does."""
    lib = _glibc()
    return None if lib is None else bool(lib.mallopt(int(param), int(value)))


def allocator_env(arena_max: int | None = 2) -> dict[str, str]:
    """Environment for a process to start with: ``MALLOC_ARENA_MAX`` (glibc reads it once, at start).

    glibc gives each thread that contends for an arena a new one, up to 8 per core; each arena keeps the
    high-water mark of what its threads allocated (freed chunks are reused, not returned, unless they reach
    the top of the arena past the trim threshold, which glibc raises up to 64 MiB after a large block is
    freed). A process with many threads (a Ray worker has Ray's and gRPC's threads, torch's, and a version
    writer thread per version) slowly reaches each arena's high-water: RSS that grows with the run, slower
    and slower. Two arenas bound that. ``arena_max`` None: nothing (glibc's default). A variable already in
    this process's environment wins (an operator's setting)."""
    out = {} if arena_max is None else {"MALLOC_ARENA_MAX": str(int(arena_max))}
    for var in ALLOCATOR_VARS:
        if os.environ.get(var):
            out[var] = os.environ[var]
    return out


# ------------------------------------------------------------------------------------------ Python and Ray
def parse_pymalloc_stats(text: str) -> dict[str, int]:
    """``sys._debugmallocstats()``'s text -> pymalloc's ``arenas`` (current), ``arenas_highwater``, ``arena_bytes``
    (what its arenas hold from the kernel), ``in_use`` (bytes in allocated blocks), ``available`` (free blocks
    in used pools) and ``unused_pools`` (bytes): an arena goes back only when all of it is free, so
    ``arena_bytes`` far above ``in_use`` is fragmentation of Python's small objects."""
    keys = {
        "# arenas allocated current": "arenas",
        "# arenas highwater mark": "arenas_highwater",
        "# bytes in allocated blocks": "in_use",
        "# bytes in available blocks": "available",
    }
    out: dict[str, int] = {}
    for line in text.splitlines():
        left, sep, right = line.partition("=")
        if not sep:
            continue
        left, value = left.strip(), right.strip().replace(",", "")
        if not value.isdigit():
            continue
        if left in keys:
            out[keys[left]] = int(value)
        elif "unused pools *" in left:
            out["unused_pools"] = int(value)
        elif "bytes/arena" in left and "arena_bytes" not in out:
            out["arena_bytes"] = int(value)
    return out


def pymalloc_stats() -> dict[str, int] | None:
    """This process's pymalloc (:func:`parse_pymalloc_stats`), from ``sys._debugmallocstats()``, which writes to
    file descriptor 2: it is pointed at a temporary file for the call (another thread's stderr output in that
    millisecond goes there too: a diagnostic, for probes only). None where that is not available."""
    if not hasattr(sys, "_debugmallocstats"):
        return None
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    try:
        with tempfile.TemporaryFile("w+") as tmp:
            saved = os.dup(2)
            try:
                os.dup2(tmp.fileno(), 2)
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            return parse_pymalloc_stats(tmp.read()) or None
    except OSError:
        return None


def ray_refs() -> dict | None:
    """What this process's Ray core worker holds: object references counted, objects and bytes in its
    in-process memory store; None without a running Ray (Ray is never imported just to find out)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    out: dict = {}
    try:
        cw = ray._private.worker.global_worker.core_worker
    except AttributeError:
        return None
    for key, call in (
        ("object_refs", lambda: len(cw.get_all_reference_counts())),
        ("memory_store_objects", cw.get_memory_store_size),
        ("memory_store_bytes", cw.get_local_memory_store_bytes_used),
    ):
        try:
            out[key] = int(call())
        except Exception:  # an internal API: absent in another Ray version
            out[key] = None
    return out


def trace_sites(trace) -> dict[str, tuple[int, int]]:
    """Traced Python memory per allocation site (``file:line`` -> (bytes, blocks)); the snapshot is dropped."""
    snap = trace.take_snapshot()
    out = {str(s.traceback[0]): (s.size, s.count) for s in snap.statistics("lineno")}
    del snap
    return out


def grown_sites(before: Mapping, now: Mapping, n: int = 12, skip: tuple[str, ...] = ()) -> list[dict]:
    """The allocation sites that grew most from ``before`` to ``now`` (:func:`trace_sites` tables), those
    naming any of ``skip`` left out: ``[{"where", "kib", "blocks"}]``."""
    diff = [
        (size - before.get(k, (0, 0))[0], count - before.get(k, (0, 0))[1], k)
        for k, (size, count) in now.items()
        if not any(s in k for s in skip)
    ]
    diff.sort(reverse=True)
    return [{"where": k, "kib": round(d / 1024, 1), "blocks": c} for d, c, k in diff[:n] if d > 0]


def probe(pid: int | str = "self") -> dict:
    """One look at this process's memory: :func:`regions` (MiB), :func:`malloc_stats` (MiB, per arena
    left out), Python's object count (``gc.get_objects``), its threads, :func:`ray_refs`, and the glibc
    variables of its environment."""
    out: dict = {"pid": os.getpid() if pid == "self" else int(pid), "time": time.time()}
    try:
        out["regions_mib"] = regions_mib(regions(pid))
    except OSError as exc:
        out["regions_mib"] = {"error": str(exc)}
    ms = malloc_stats()
    if ms is not None:
        per = ms.pop("per_arena", [])
        out["malloc_mib"] = {k: (v if k in ("arenas", "mmapped_blocks") else round(v / MIB, 2)) for k, v in ms.items()}
        out["malloc_arena_mib"] = [(round(a["system"] / MIB, 2), round(a["free"] / MIB, 2)) for a in per]
    py = pymalloc_stats()
    if py is not None:
        out["pymalloc_mib"] = {k: (v if k.startswith("arenas") else round(v / MIB, 2)) for k, v in py.items()}
    out["python_objects"] = len(gc.get_objects())
    out["python_threads"] = threading.active_count()
    out["ray"] = ray_refs()
    own = (TRIM_ENV, ARENA_MAX_ENV, MMAP_THRESHOLD_ENV)
    out["env"] = {v: os.environ[v] for v in (*ALLOCATOR_VARS, *own) if v in os.environ}
    return out


# ---------------------------------------------------------------------------------- the per-version switch
@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """What :class:`MemoryHousekeeping` does after each version (:meth:`from_env` reads it).

    trim: ``malloc_trim(0)`` after each version. probe_path: append a :func:`probe` JSON line to this file
    every ``probe_every`` versions. trace_frames: > 0 starts tracemalloc with that many frames; probe lines
    then carry the traced total and the sites grown since the first probe at or after ``trace_from``."""

    trim: bool = False
    probe_path: str | None = None
    probe_every: int = 25
    trace_frames: int = 0
    trace_from: int = 0
    arena_max: int = 0  # > 0: mallopt(M_ARENA_MAX) when the housekeeping starts
    mmap_threshold: int = 0  # > 0: mallopt(M_MMAP_THRESHOLD): blocks from this size mmapped (and unmapped)

    def __post_init__(self) -> None:
        if self.arena_max < 0 or self.mmap_threshold < 0:
            raise ValueError(
                f"memory housekeeping: arena_max and mmap_threshold >= 0 (0: glibc's default); got {self.arena_max}, "
                f"{self.mmap_threshold} (set {ARENA_MAX_ENV}, {MMAP_THRESHOLD_ENV})"
            )
        if self.probe_every < 1 or self.trace_frames < 0 or self.trace_from < 0:
            raise ValueError(
                f"memory housekeeping: probe_every >= 1, trace_frames >= 0, trace_from >= 0; got {self.probe_every}, "
                f"{self.trace_frames}, {self.trace_from} (set {PROBE_EVERY_ENV}, {TRACE_ENV}, {TRACE_FROM_ENV})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, defaults: MemoryConfig | None = None) -> MemoryConfig:
        """The settings of ``environ`` (default ``os.environ``) over ``defaults`` (default: everything off)."""
        env = os.environ if environ is None else environ
        base = defaults if defaults is not None else cls()

        def integer(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r}: give a whole number (or unset it)") from None

        trim = env.get(TRIM_ENV, "").strip().lower()
        if trim not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"{TRIM_ENV}={trim!r}: give 1 (malloc_trim after each version) or 0")
        return cls(
            trim=base.trim if trim == "" else trim in ("1", "true", "yes", "on"),
            probe_path=env.get(PROBE_ENV, "").strip() or base.probe_path,
            probe_every=integer(PROBE_EVERY_ENV, base.probe_every),
            trace_frames=integer(TRACE_ENV, base.trace_frames),
            trace_from=integer(TRACE_FROM_ENV, base.trace_from),
            arena_max=integer(ARENA_MAX_ENV, base.arena_max),
            mmap_threshold=integer(MMAP_THRESHOLD_ENV, base.mmap_threshold),
        )

    @property
    def active(self) -> bool:
        return (
            self.trim
            or self.probe_path is not None
            or self.trace_frames > 0
            or self.arena_max > 0
            or self.mmap_threshold > 0
        )


class MemoryHousekeeping:
    """Call :meth:`after_version` once per version (the Ray Train worker does, after each data file's
    version decision); does nothing unless :class:`MemoryConfig` asks for something."""

    _OWN = ("/tracemalloc.py", "/common/memory.py")  # the tracing's own bookkeeping: not what is measured

    def __init__(self, cfg: MemoryConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else MemoryConfig.from_env()
        self.trims = self.released = 0
        self.trim_s = 0.0  # seconds spent in malloc_trim, all calls
        self.allocator: dict[str, bool | None] = {}  # mallopt settings applied, and whether glibc took them
        if self.cfg.arena_max > 0:
            self.allocator["arena_max"] = mallopt(M_ARENA_MAX, self.cfg.arena_max)
        if self.cfg.mmap_threshold > 0:
            self.allocator["mmap_threshold"] = mallopt(M_MMAP_THRESHOLD, self.cfg.mmap_threshold)
        self._base_sites: dict | None = None
        self._trace = None
        if self.cfg.trace_frames > 0:
            import tracemalloc

            if not tracemalloc.is_tracing():
                tracemalloc.start(self.cfg.trace_frames)
            self._trace = tracemalloc

    def after_version(self, n: int) -> dict | None:
        """After version (or data file) ``n``: trim, and probe every ``probe_every``; returns the probe line
        written, if any."""
        cfg = self.cfg
        if cfg.trim:
            t0 = time.perf_counter()
            self.released += bool(malloc_trim(0))
            self.trim_s += time.perf_counter() - t0
            self.trims += 1
        if cfg.probe_path is None or n % cfg.probe_every:
            return None
        line = {
            "n": int(n),
            **probe(),
            "trims": self.trims,
            "trims_released": self.released,
            "trim_ms_mean": round(1e3 * self.trim_s / self.trims, 3) if self.trims else None,
            "mallopt": self.allocator,
        }
        if self._trace is not None:
            sites = trace_sites(self._trace)
            line["traced_mib"] = round(
                sum(b for k, (b, _) in sites.items() if not any(o in k for o in self._OWN)) / MIB, 3
            )
            if self._base_sites is None and n >= cfg.trace_from:
                self._base_sites, line["traced_base"] = sites, True
            elif self._base_sites is not None:
                line["traced_grown"] = grown_sites(self._base_sites, sites, 15, self._OWN)
        with open(cfg.probe_path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        return line


def read_probe(path: str | os.PathLike) -> list[dict]:
    """The lines a probe file holds (a torn last line, from a process killed mid-write, is skipped)."""
    out = []
    try:
        with open(path) as fh:
            for raw in fh:
                try:
                    out.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        return []
    return out


__all__ = [
    "ALLOCATOR_VARS",
    "MemoryConfig",
    "MemoryHousekeeping",
    "allocator_env",
    "grown_sites",
    "malloc_stats",
    "malloc_trim",
    "mallopt",
    "parse_malloc_info",
    "parse_pymalloc_stats",
    "parse_smaps",
    "parse_status",
    "probe",
    "pymalloc_stats",
    "ray_refs",
    "read_probe",
    "regions",
    "regions_mib",
    "trace_sites",
]
