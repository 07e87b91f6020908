"""What a PS-mode run does when training fails: restart from the last committed version, or stop and say why.

Modelled on Ray Train v2's ``FailurePolicy.make_decision`` (``ray.train.v2._internal.execution.
failure_handling``: RETRY / RAISE). The driver (:func:`trainer.run.run_ps_training`) hands each failure of
a worker group to :meth:`FailurePolicy.make_decision`:

* a data file that would stop the run again (a :class:`trainer.data.FileQualityError` raised by a worker:
  the file was refused, or most of its rows were dead-lettered, usually the wrong spec) is a RAISE with
  the data-quality reasons (:class:`DataQualityStop`): restarting would read the same file and fail again;
* any other failure (a shard actor or a worker that died) is a RESTART while the run keeps versions and
  ``max_restarts`` is not used up: new shard actors and workers resume from the last committed version,
  so nothing is lost or applied twice; otherwise a RAISE of the failure itself.

The worker's error is found by its type, never by the text of a traceback: Ray Train v2 raises a
``WorkerGroupError`` whose ``worker_failures`` map each rank to a ``UserExceptionWithTraceback`` holding the
worker's exception (unpickled: ``FileQualityError`` pickles its report); Ray Core's ``RayTaskError`` is a
subclass of the remote exception's type. :func:`worker_errors` walks all of these.

:func:`supervise` is the driver's loop over attempts, written without Ray so it is unit-tested with a fake
worker group (tests/unit/test_failure_policy.py).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator

from trainer.data.counts import FileQualityError, FileReport


class FailureDecision(enum.Enum):
    RESTART = "restart"  # new shard actors and workers, from the last committed version
    RAISE = "raise"  # stop the run: the failure (or a DataFileError with the data-quality reasons) goes up


class DataFileError(RuntimeError):
    """A data file stopped the run (it was refused, or most of its rows were dead-lettered: usually the
    wrong spec). ``report`` is the file's :class:`trainer.data.FileReport`: name, counts, reasons."""

    def __init__(self, message: str, report: FileReport | None = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self):
        return (DataFileError, (str(self), self.report))


@dataclasses.dataclass(frozen=True)
class DataQualityStop:
    """Why a data file stopped the run (structured, from the worker's FileQualityError)."""

    message: str
    report: FileReport  # the file's name, counts and dead-letter reasons (``report.error``: refused as a whole)

    @property
    def file(self) -> str:
        return self.report.name

    @property
    def reasons(self) -> dict[str, int]:
        """Dead-letter reason -> rows."""
        return dict(self.report.by_reason)

    def error(self) -> DataFileError:
        return DataFileError(self.message, self.report)


@dataclasses.dataclass(frozen=True)
class Decision:
    action: FailureDecision
    data_stop: DataQualityStop | None = None  # RAISE because of a data file: why
    restart: int = 0  # RESTART: the how-manieth (1-based)

    @property
    def cause(self) -> str:
        return (
            "data" if self.data_stop is not None else "restart" if self.action is FailureDecision.RESTART else "limit"
        )


def worker_errors(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it carries: causes and contexts, Ray Train v2's ``worker_failures``
    (rank -> error) and the worker exception inside a ``UserExceptionWithTraceback`` (``_base_exc``),
    Ray Core's ``cause``. Each once, depth first."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner = [e.__cause__, e.__context__, getattr(e, "cause", None), getattr(e, "_base_exc", None)]
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            inner += [failures[k] for k in sorted(failures)]
        todo += reversed(inner)  # in the order listed


def data_quality_stop(exc: BaseException) -> DataQualityStop | None:
    """The data-quality reasons if a worker stopped on a FileQualityError (found by type), else None."""
    for e in worker_errors(exc):
        if isinstance(e, FileQualityError):
            return DataQualityStop(str(e), e.report)
    return None


class FailurePolicy:
    """Decides, for each failure of a run's worker group, RESTART or RAISE (see the module docstring).

    ``can_restart``: the run keeps versions (without a committed version to resume from a restart would
    redo everything). ``max_restarts``: restarts allowed in the run, all causes together.
    """

    def __init__(self, max_restarts: int, can_restart: bool = True) -> None:
        if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
        self.max_restarts = max_restarts
        self.can_restart = can_restart
        self.restarts = 0

    def make_decision(self, error: BaseException) -> Decision:
        stop = data_quality_stop(error)
        if stop is not None:  # the same file would fail again
            return Decision(FailureDecision.RAISE, data_stop=stop)
        if not self.can_restart or self.restarts >= self.max_restarts:
            return Decision(FailureDecision.RAISE)
        self.restarts += 1
        return Decision(FailureDecision.RESTART, restart=self.restarts)


def supervise(
    attempt: Callable[[int], object],
    policy: FailurePolicy,
    on_restart: Callable[[BaseException, Decision], None] = lambda exc, decision: None,
):
    """Run ``attempt(i)`` (i = 0, 1, ...: one worker group each) until one returns; after each failure ask
    ``policy``: RESTART calls ``on_restart(exc, decision)`` (new shards, a new metrics follower) and tries
    again; RAISE raises a :class:`DataFileError` with the data-quality reasons, or the failure itself.
    Returns what the successful attempt returned."""
    i = 0
    while True:
        try:
            return attempt(i)
        except Exception as exc:
            decision = policy.make_decision(exc)
            if decision.action is FailureDecision.RAISE:
                if decision.data_stop is not None:
                    raise decision.data_stop.error() from None
                raise
            on_restart(exc, decision)
            i += 1
