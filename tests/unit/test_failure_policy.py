"""The training run's failure policy (trainer/failure.py) against a fake worker group that fails the way
Ray Train v2 does: a ``WorkerGroupError`` whose ``worker_failures`` map ranks to ``UserExceptionWithTraceback``
around the worker's exception, pickled across the process boundary. No Ray cluster is started."""

from __future__ import annotations

import dataclasses
import pickle
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import ConfigError
from trainer.config import TrainJob
from trainer.data.counts import FileQualityError, FileReport
from trainer.failure import (
    DataFileError,
    FailureDecision,
    FailurePolicy,
    data_quality_stop,
    supervise,
)


def _bad_file(name: str = "part-00007.csv") -> FileQualityError:
    report = FileReport(name=name, rows_in=100, rows_good=7, rows_dead=93)
    report.by_reason.update(Counter({"wrong column count 2": 90, "label not 0/1": 3}))
    return FileQualityError(report, 0.5)


def _ray_failure(errors: dict[int, BaseException]) -> BaseException:
    """What ``TorchTrainer.fit()`` raises in the driver when workers fail (Ray Train v2), after the trip
    through pickle that the real errors take."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    failures = {
        rank: UserExceptionWithTraceback(exc, f"Traceback ...\n{type(exc).__name__}: {exc}")
        for rank, exc in errors.items()
    }
    return pickle.loads(pickle.dumps(WorkerGroupError("worker errors", failures)))


def _dead_shard() -> BaseException:
    from ray.exceptions import RayActorError

    return RayActorError(error_msg="the actor died unexpectedly before finishing this task (shard 0)")


class FakeWorkerGroup:
    """Plays one scripted outcome per attempt: an exception to raise, or None to finish."""

    def __init__(self, script: list[BaseException | None]) -> None:
        self.script = list(script)
        self.attempts = 0

    def fit(self, i: int) -> str:
        assert i == self.attempts, "attempts are numbered 0, 1, ... in order"
        self.attempts += 1
        outcome = self.script.pop(0)
        if outcome is not None:
            raise outcome
        return "done"


def test_a_dead_shard_restarts_from_the_last_version_until_the_limit():
    group = FakeWorkerGroup([_ray_failure({0: _dead_shard()}), _ray_failure({1: _dead_shard()}), None])
    restarts = []
    assert supervise(group.fit, FailurePolicy(3), lambda exc, d: restarts.append(d.restart)) == "done"
    assert group.attempts == 3 and restarts == [1, 2]


def test_the_failure_itself_is_raised_once_the_restarts_are_used_up():
    failures = [_ray_failure({0: _dead_shard()}) for _ in range(3)]
    group, policy = FakeWorkerGroup([*failures, None]), FailurePolicy(2)
    with pytest.raises(type(failures[0])) as caught:
        supervise(group.fit, policy)
    assert caught.value is failures[2] and group.attempts == 3 and policy.restarts == 2


def test_a_bad_data_file_on_any_rank_stops_at_once_with_its_reasons_not_a_restart():
    group = FakeWorkerGroup([_ray_failure({0: RuntimeError("gloo: connection reset"), 1: _bad_file()}), None])
    with pytest.raises(DataFileError, match=r"part-00007\.csv: 93 of 100 rows \(93%\).*wrong column count 2") as caught:
        supervise(group.fit, FailurePolicy(3))
    assert group.attempts == 1  # the same file would fail again: no restart
    report = caught.value.report
    assert report.name == "part-00007.csv" and report.by_reason["wrong column count 2"] == 90
    again = pickle.loads(pickle.dumps(caught.value))  # the CLI may get it from another process
    assert str(again) == str(caught.value) and again.report.rows_dead == 93


def test_a_refused_file_is_a_data_stop_with_the_refusal():
    report = FileReport(name="f.csv", error="the spec expects a header; the first line is data")
    stop = data_quality_stop(_ray_failure({0: FileQualityError(report, 0.5)}))
    assert stop is not None and stop.file == "f.csv" and "expects a header" in stop.report.error


def test_the_decision_goes_by_the_error_type_never_by_traceback_text():
    """An error that only MENTIONS FileQualityError (a log line, a traceback string) is not one."""
    text = "trainer.data.counts.FileQualityError: 93% of f1 dead-lettered"
    policy = FailurePolicy(3)
    decision = policy.make_decision(_ray_failure({0: RuntimeError(text)}))
    assert decision.action is FailureDecision.RESTART and decision.data_stop is None


def test_ray_cores_task_error_is_seen_through():
    """A remote task's error arrives as a RayTaskError that is also an instance of the remote type."""
    from ray.exceptions import RayTaskError

    wrapped = RayTaskError("consume", "Traceback ...", _bad_file("x.parquet")).as_instanceof_cause()
    outer = RuntimeError("fit failed")
    outer.__cause__ = wrapped
    decision = FailurePolicy(3).make_decision(outer)
    assert decision.action is FailureDecision.RAISE and decision.data_stop.file == "x.parquet"


def test_without_versions_there_is_nothing_to_restart_from():
    group = FakeWorkerGroup([_ray_failure({0: _dead_shard()}), None])
    with pytest.raises(Exception, match="Training failed due to worker errors"):
        supervise(group.fit, FailurePolicy(3, can_restart=False))
    assert group.attempts == 1


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    script=st.lists(st.sampled_from(["ok", "dead", "data", "other"]), min_size=1, max_size=8),
    max_restarts=st.integers(0, 4),
    can_restart=st.booleans(),
)
def test_random_failure_sequences_match_the_reference_rules(script, max_restarts, can_restart):
    """Seeded sequences of worker-group outcomes against a plain reference of the rules: a data stop
    raises at once; any other failure restarts while versions are kept and restarts remain."""
    make = {
        "ok": lambda: None,
        "dead": lambda: _ray_failure({0: _dead_shard()}),
        "data": lambda: _ray_failure({0: _bad_file()}),
        "other": lambda: ValueError("boom"),
    }
    script = [*script, "ok"]
    # the reference
    restarts, want = 0, None
    for i, outcome in enumerate(script):
        if outcome == "ok":
            want = ("done", i + 1, restarts)
            break
        if outcome == "data":
            want = (DataFileError, i + 1, restarts)
            break
        if not can_restart or restarts >= max_restarts:
            want = ("raise", i + 1, restarts)
            break
        restarts += 1
    group, policy = FakeWorkerGroup([make[o]() for o in script]), FailurePolicy(max_restarts, can_restart)
    try:
        got = supervise(group.fit, policy)
    except DataFileError:
        got = DataFileError
    except Exception:
        got = "raise"
    assert (got, group.attempts, policy.restarts) == want


def test_the_policy_refuses_a_negative_restart_budget():
    with pytest.raises(ValueError, match="max_restarts must be an integer >= 0"):
        FailurePolicy(-1)


def test_a_train_job_is_a_typed_frozen_config_that_says_what_to_fix(tmp_path):
    job = TrainJob("spec", tmp_path, history=tmp_path / "h")
    assert job.run_dir == tmp_path and job.max_restarts == 3 and job.version_extra == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.num_workers = 2  # frozen
    with pytest.raises(ConfigError, match="needs data files"):
        TrainJob("spec", tmp_path)
    with pytest.raises(ConfigError, match="num_workers.*>= 1"):
        TrainJob("spec", tmp_path, history="h", num_workers=0)
    with pytest.raises(ConfigError, match="max_restarts.*>= 0"):
        TrainJob("spec", tmp_path, history="h", max_restarts=-1)
    with pytest.raises(ConfigError, match="idle_timeout_s"):
        TrainJob("spec", tmp_path, history="h", idle_timeout_s=0)
    with pytest.raises(ConfigError, match="versions=False keeps no versions"):
        TrainJob("spec", tmp_path, history="h", versions=False, store_url="memory://x")
    with pytest.raises(ConfigError, match="TrainJob.train must be a TrainConfig"):
        TrainJob("spec", tmp_path, history="h", train={"batch_size": 3})


def test_the_worker_config_travels_to_ray_train_workers(tmp_path):
    """The worker's config is a typed frozen object that pickles (Ray ships it to each worker)."""
    import cloudpickle

    from paramserver.config import PSConfig, TableConfig
    from trainer.worker import WorkerConfig

    job = TrainJob("spec", tmp_path, history=str(tmp_path / "h"), version_extra={"spec": "taobao"})
    cfg = WorkerConfig(job, PSConfig(tables=(TableConfig("item", 4),)))
    back = cloudpickle.loads(cloudpickle.dumps(cfg))
    assert back == cfg and back.job.version_extra == {"spec": "taobao"} and back.client is None
    assert not hasattr(back, "max_dead_share")  # the share a file may lose comes from the spec only
