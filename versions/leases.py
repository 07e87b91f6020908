"""Serving leases: who serves which version, recorded in the store so that gc keeps it.

Each serving process (a Scorer replica, a read-only table shard, a Search replica) heartbeats a
small object ``ROOT/leases/<holder>.json`` naming the version it serves and when that claim
expires::

    lease = store.renew_lease("replica-3@host-a", 12, ttl_s=60, role="replica")   # every ttl_s / 3
    store.leases()            # [ServingLease(holder="replica-3@host-a", version=12, ...), ...] (unexpired)
    store.release_lease("replica-3@host-a")                                   # on shutdown (idempotent)

``gc`` keeps every version named by an unexpired lease (and the chain it needs), like PINNED and
PUBLISHED. A holder that dies stops renewing: its lease expires after ``ttl_s`` and the version
becomes collectable again. Take (renew) the lease of a version *before* loading it, so gc sees
the claim before the load reads the parts.

Holder names are free text (``"replica:7@pod-a"``); the object's file name is a sanitised form
(letters, digits and ``._=-``, other characters become ``_``, plus a short hash of the exact name
when anything was replaced, so two holders never share a file). The object keeps the exact name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re

LEASES = "leases"
ROLES = ("replica", "table-shard", "search", "restore")  # restore: a trainer reading the version it resumes from
MAX_HOLDER = 200
_SAFE = re.compile(r"[^A-Za-z0-9._=-]")


@dataclasses.dataclass(frozen=True)
class ServingLease:
    """``holder`` serves ``version`` as a ``role`` (replica / table-shard / search) until ``expires_at``
    (unix seconds) unless it renews; ``host`` is where it runs."""

    holder: str
    version: int
    role: str
    expires_at: float
    host: str

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, text: bytes | str) -> ServingLease:
        """Parse a lease object; ValueError on anything that is not one."""
        try:
            raw = json.loads(text)
            lease = cls(
                holder=str(raw["holder"]),
                version=int(raw["version"]),
                role=str(raw["role"]),
                expires_at=float(raw["expires_at"]),
                host=str(raw.get("host", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a serving lease: {exc}") from None
        if lease.version < 1 or not math.isfinite(lease.expires_at):
            raise ValueError(f"not a serving lease: version {lease.version}, expires_at {lease.expires_at}")
        return lease


def check_holder(holder: str) -> str:
    """A holder name: non-empty text of at most 200 printable characters, no '/' or whitespace-only."""
    if not isinstance(holder, str) or not holder.strip() or len(holder) > MAX_HOLDER or not holder.isprintable():
        raise ValueError(
            f"bad lease holder {holder!r}: use a non-empty printable name of at most {MAX_HOLDER} "
            f"characters that identifies one serving process (e.g. 'replica-3@pod-a')"
        )
    return holder


def holder_file(holder: str) -> str:
    """The file name (without ``.json``) of ``holder``'s lease: sanitised, unique per exact name."""
    check_holder(holder)
    safe = _SAFE.sub("_", holder)
    if safe != holder or safe.startswith((".", "_", "-")):
        safe = f"{safe.lstrip('._-')[:120] or 'holder'}-{hashlib.sha256(holder.encode()).hexdigest()[:10]}"
    return safe


def check_lease_args(version, ttl_s, role) -> tuple[int, float, str]:
    if isinstance(version, bool) or not isinstance(version, int) and not hasattr(version, "__index__"):
        raise ValueError(f"a lease names a committed version number >= 1, got {version!r}")
    version = int(version)
    if version < 1:
        raise ValueError(f"a lease names a committed version number >= 1, got {version}")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"lease ttl_s must be a number of seconds > 0, got {ttl_s!r}")
    if role not in ROLES:
        raise ValueError(f"lease role must be one of {list(ROLES)}, got {role!r}")
    return version, float(ttl_s), role
