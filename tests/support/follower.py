"""Follower test doubles: a store with the three pointers and a lease log (that can go down), and a loaded model."""

from __future__ import annotations

import dataclasses

from versions.errors import NoSuchVersionError, StoreUnavailableError


class FakeStore:
    def __init__(self, latest=None, published=None, pinned=None):
        self._latest, self._published, self._pinned = latest, published, pinned
        self.down = False
        self.leases: dict[str, tuple[int, str]] = {}
        self.renewals = 0

    def _read(self, v):
        if self.down:
            raise StoreUnavailableError("mem://s", "connection reset by peer")
        return v

    def latest(self):
        return self._read(self._latest)

    def published(self):
        return self._read(self._published)

    def pinned(self):
        return self._read(self._pinned)

    def manifest(self, v):
        raise NoSuchVersionError(v)

    def renew_lease(self, holder, version, *, ttl_s=60.0, role="replica"):
        self.renewals += 1
        self.leases[holder] = (version, role)

    def release_lease(self, holder):
        self.leases.pop(holder, None)


@dataclasses.dataclass(frozen=True)
class Model:
    version: int
    base: int | None
