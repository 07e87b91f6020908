"""The version loader: what a serving follower (:class:`serving.follower.VersionFollower`) loads.

A loader turns committed version ``v`` of the store into the object a role serves: the Scorer's
:class:`serving.model.ServableModel` (``ScoringService._load``), a table shard's held version
(``serving.app.TableShardDeployment._prefetch``), Search's ``search.service.FrozenRanker``
(``search.service.load_frozen_ranker``). The contract, declared as :class:`VersionLoader`:

* ``load(v, previous)`` returns a :class:`Versioned` whose ``version`` is ``v``; ``previous`` is the
  object served now (an older version, or None), whose tables the deltas after it may be applied
  to: the result is the same as ``load(v, None)``;
* a version the loader cannot serve (checksum, format, the wrong kind of model) raises one of
  ``serving.follower.CORRUPT`` (the follower refuses it); the store failing raises anything else
  (retried); a loader never returns a half-built object.

``tests/unit/test_protocols.py`` runs the contract against the Scorer's and Search's loaders.
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

T = TypeVar("T", bound="Versioned")


@runtime_checkable
class Versioned(Protocol):
    """What a follower serves: it names the version it was built from."""

    @property
    def version(self) -> int: ...


class VersionLoader(Protocol[T]):
    def __call__(self, version: int, previous: T | None, /) -> T: ...
