"""``faulty://``: an fsspec filesystem that wraps another (local, memory, s3) and fails a seeded share of calls.

    FRESHREC_CHAOS_FS='{"seed": 7, "rate": 0.02, "enospc": 0.01, "target": "file", "options": {}}'
    VersionStore("faulty:///tmp/run/versions")        # the local directory /tmp/run/versions, with faults
    VersionStore("faulty://bucket/run/versions")      # with "target": "s3" and the endpoint in "options"

A call fails with ``ConnectionResetError`` or ``OSError(EIO)`` with probability ``rate``, and a
write (``pipe_file``, ``open`` for writing, ``put_file``) with ``OSError(ENOSPC)`` with probability
``enospc``. Whether a call fails is a hash of (seed, method, path, how many times this process
called that method on that path): the same sequence of calls fails the same way in every run.
The configuration comes from the environment variable ``FRESHREC_CHAOS_FS`` (so that every
process of a run, Ray workers included, sees it) or from keyword arguments.

Every process that opens a ``faulty://`` URL must have registered the protocol:
:func:`register` (the harness puts a ``sitecustomize.py`` that calls it on the run's PYTHONPATH).
Each injected fault is appended to ``log`` (a JSON-lines file, when configured) so that the
harness can count faults by kind across processes.

Over a local directory, ``pipe_file`` (a whole small object: a manifest, LATEST, a pointer) is written under
a temporary name and renamed, as an object store's PUT is atomic: a reader never sees half a manifest
(the harness found a reader parsing an empty MANIFEST.json that a plain local ``pipe_file`` was writing,
an artefact of the wrapper, not of any real store).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import uuid

from fsspec.implementations.dirfs import DirFileSystem

ENV = "FRESHREC_CHAOS_FS"
PROTOCOL = "faulty"
_READS = ("cat_file", "exists", "info", "ls", "find", "glob", "get_file", "isdir", "isfile")
_WRITES = ("pipe_file", "put_file", "rm_file", "rm", "mv", "makedirs", "mkdir", "touch")


def register() -> None:
    """Make ``faulty://`` known to fsspec in this process."""
    from fsspec.registry import register_implementation

    register_implementation(PROTOCOL, "bench.chaos.faultyfs.FaultyFileSystem", clobber=True)


def config_from_env() -> dict:
    text = os.environ.get(ENV, "")
    return json.loads(text) if text else {}


class InjectedFault:
    """A marker mixed into the raised exceptions (``isinstance(exc, InjectedFault)`` in tests)."""


class InjectedConnectionReset(ConnectionResetError, InjectedFault):
    pass


class InjectedOSError(OSError, InjectedFault):
    pass


class FaultyFileSystem(DirFileSystem):
    protocol = (PROTOCOL,)
    root_marker = ""
    cachable = False  # each instance counts its own calls (the fault schedule is per instance)

    def __init__(
        self,
        seed: int | None = None,
        rate: float | None = None,
        enospc: float | None = None,
        target: str | None = None,
        options: dict | None = None,
        log: str | None = None,
        **kw,
    ):
        cfg = config_from_env()
        self.seed = int(cfg.get("seed", 0) if seed is None else seed)
        self.rate = float(cfg.get("rate", 0.0) if rate is None else rate)
        self.enospc = float(cfg.get("enospc", 0.0) if enospc is None else enospc)
        self.log_path = cfg.get("log") if log is None else log
        target = target or cfg.get("target", "file")
        options = dict(cfg.get("options", {}) if options is None else options)
        if target in ("file", "local"):
            options.setdefault("auto_mkdir", True)  # object-store semantics: a write makes its directories
        kw.pop("path", None)
        kw.pop("fs", None)
        self.atomic_pipe = target in ("file", "local")
        super().__init__(path="_", target_protocol=target, target_options=options, **kw)
        self.path = ""  # no prefix: paths pass through to the target unchanged
        self._calls: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.injected = 0

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        for proto in cls.protocol:  # a subclass registered under another name strips its own
            if path.startswith(f"{proto}://"):
                path = path[len(proto) + 3 :]
                break
        return path.rstrip("/") or "/"

    def _decide(self, method: str, path) -> str | None:
        """None, or the kind of fault this call gets."""
        if self.rate <= 0 and self.enospc <= 0:
            return None
        key = (method, str(path))
        with self._lock:
            n = self._calls.get(key, 0)
            self._calls[key] = n + 1
        h = hashlib.sha256(f"{self.seed}|{method}|{path}|{n}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        writing = method in ("pipe_file", "put_file", "open_w")
        if writing and u < self.enospc:
            return "enospc"
        u2 = int.from_bytes(h[8:16], "big") / 2**64
        if u2 < self.rate:
            return "reset" if h[16] % 2 else "eio"
        return None

    def _maybe_fail(self, method: str, path) -> None:
        kind = self._decide(method, path)
        if kind is None:
            return
        self.injected += 1
        if self.log_path:
            try:
                with open(self.log_path, "a") as fh:
                    fh.write(
                        json.dumps({"kind": f"store_{kind}", "method": method, "path": str(path), "pid": os.getpid()})
                        + "\n"
                    )
            except OSError:
                pass
        if kind == "enospc":
            raise InjectedOSError(errno.ENOSPC, f"No space left on device (injected): {path}")
        if kind == "reset":
            raise InjectedConnectionReset(errno.ECONNRESET, f"Connection reset by peer (injected): {method} {path}")
        raise InjectedOSError(errno.EIO, f"Input/output error (injected): {method} {path}")

    def open(self, path, mode="rb", *args, **kwargs):
        self._maybe_fail("open_w" if any(c in mode for c in "wa") else "open", path)
        return super().open(path, mode, *args, **kwargs)


def _wrap(name: str):
    base = getattr(DirFileSystem, name)

    def method(self, path, *args, **kwargs):
        self._maybe_fail(name, path)
        return base(self, path, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = base.__doc__
    return method


for _name in _READS + _WRITES:
    if hasattr(DirFileSystem, _name):
        setattr(FaultyFileSystem, _name, _wrap(_name))


def _pipe_file(self, path, value, *args, **kwargs):
    """``pipe_file`` with faults; over a local directory, atomic (a temporary name, then a rename) like a PUT."""
    self._maybe_fail("pipe_file", path)
    if not self.atomic_pipe:
        return DirFileSystem.pipe_file(self, path, value, *args, **kwargs)
    full = self._join(path)
    tmp = f"{full}.tmp-{uuid.uuid4().hex[:12]}"  # the store's own temp-file pattern: its cleanup knows it
    self.fs.pipe_file(tmp, value, *args, **kwargs)
    os.replace(tmp, full)
    return None


FaultyFileSystem.pipe_file = _pipe_file
