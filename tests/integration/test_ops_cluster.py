"""Operations against a real `ray start --head` cluster with token authentication.

One module, one cluster: the test starts `ray start --head --block` on free loopback ports (GCS,
dashboard and job API, metrics export, agents, workers) in its own temp dir, with
RAY_AUTH_MODE=token and a random token, and stops it by its own process group (never a bare
`ray stop`, which would stop other people's Ray too). Then:

* `freshrec submit ... -- config show` runs as a Ray job and `freshrec jobs list|status|logs` read it;
* a submitted `freshrec stream` joins the cluster, commits versions, emits its series and is stopped by
  `freshrec jobs stop`;
* without the token, `freshrec jobs` and `--address` say that authentication failed;
* without --address, freshrec starts its own Ray even when RAY_ADDRESS names this cluster;
* a driver joins with --address, drives a parameter-server shard actor and the trainer's
  telemetry, and the metrics endpoint (Prometheus text) serves the freshrec series.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
PORT_FLAGS = (
    "port",
    "dashboard-port",
    "metrics-export-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "node-manager-port",
    "object-manager-port",
    "runtime-env-agent-port",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, fn, timeout_s: float, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s} s (last error: {last})")


class Head:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        self.token = secrets.token_hex(16)
        self.gcs = f"127.0.0.1:{self.ports['port']}"
        self.dashboard = f"http://127.0.0.1:{self.ports['dashboard-port']}"
        self.metrics_url = f"http://127.0.0.1:{self.ports['metrics-export-port']}/metrics"
        self.proc: subprocess.Popen | None = None

    def env(self, with_token: bool = True) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["HOME"] = str(self.tmp / "home")  # no ~/.ray/auth_token of the person running the tests
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # as in an activated venv
        if with_token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        return env

    def start(self) -> None:
        (self.tmp / "home").mkdir()
        worker = free_port()
        cmd = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=2",
            "--object-store-memory=100000000",
            f"--temp-dir={self.tmp / 'ray'}",
            "--disable-usage-stats",
            f"--min-worker-port={worker}",
            f"--max-worker-port={worker + 40}",
        ]
        cmd += [f"--{flag}={port}" for flag, port in self.ports.items()]
        self.log = open(self.tmp / "ray-start.log", "w")
        self.proc = subprocess.Popen(
            cmd, env=self.env(), cwd=self.tmp, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )  # its own process group: stopped by its id
        wait_until("the dashboard's job API", self._jobs_api_up, 120)

    def _jobs_api_up(self) -> bool:
        assert self.proc.poll() is None, (self.tmp / "ray-start.log").read_text()[-3000:]
        req = urllib.request.Request(f"{self.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status == 200

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # our group only (a SIGTERM drains for 30 s)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        marker = str(self.tmp / "ray")  # what Ray started outside the group carries our temp dir
        for pid in _pids_with(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def _pids_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def head():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    with tempfile.TemporaryDirectory(prefix="frh-", dir="/tmp") as d:  # short: Ray's unix sockets live in it
        h = Head(Path(d))
        try:
            h.start()
            yield h
        finally:
            if ray.is_initialized():
                ray.shutdown()
            h.stop()


def freshrec(head: Head, *args: str, with_token: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=REPO,
        env=head.env(with_token),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_submit_runs_a_freshrec_command_as_a_ray_job(head):
    sub = freshrec(
        head,
        "submit",
        "--address",
        head.dashboard,
        "--python",
        sys.executable,
        "--follow",
        "--timeout",
        "150",
        "--",
        "config",
        "show",
        "--workers",
        "3",
        "--json",
    )
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = sub.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert '"workers": 3' in sub.stdout  # the job's own output, streamed back
    assert f"job {job_id}: SUCCEEDED" in sub.stderr

    listed = freshrec(head, "jobs", "list", "--address", head.dashboard)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert "SUCCEEDED" in row and "-m cluster.cli config show --workers 3 --json" in row

    status = freshrec(head, "jobs", "status", job_id, "--address", head.dashboard)
    assert status.returncode == 0 and f"{job_id}: SUCCEEDED" in status.stdout
    logs = freshrec(head, "jobs", "logs", job_id, "--address", head.dashboard)
    assert logs.returncode == 0 and json.loads(logs.stdout[logs.stdout.index("{") :])["workers"] == 3

    missing = freshrec(head, "jobs", "status", "raysubmit_nosuchjob", "--address", head.dashboard)
    assert missing.returncode == 2 and "freshrec: error:" in missing.stderr


def scrape(head: Head) -> dict[str, list[str]]:
    """{series name: sample lines} of freshrec's series on the head's metrics endpoint."""
    with urllib.request.urlopen(head.metrics_url, timeout=5) as r:
        text = r.read().decode()
    seen: dict[str, list[str]] = {}
    for row in text.splitlines():
        if row.startswith("ray_freshrec_"):
            seen.setdefault(row.split("{")[0].split(" ")[0], []).append(row)
    return seen


def test_a_submitted_stream_joins_the_cluster_commits_versions_and_runs_until_stopped(head, tmp_path):
    """`freshrec stream` as a Ray job (what k8s/ and docs/operations.md run): it joins this cluster (no embedded
    Ray), trains the data files already there, commits versions and emits its series, follows its directory,
    and `freshrec jobs stop` stops it. (The one Ray Train job of this module: it was a `train` job and a
    separate idle `stream` job.)"""
    from tests.support.data import synthetic_log
    from trainer import bundle  # the manifest references the ledger (issue 19): its totals, not every entry
    from trainer.data import Validator, load_spec
    from trainer.data.split import split_into_files
    from versions import VersionStore

    log = tmp_path / "log.csv"
    synthetic_log(log, rows=1500)
    files = split_into_files([log], Validator(load_spec("taobao")), 300, tmp_path / "incoming", progress=False).files
    assert len(files) >= 2
    run_dir = tmp_path / "run"
    sub = freshrec(
        head,
        "submit",
        "--address",
        head.dashboard,
        "--python",
        sys.executable,
        "--",
        "stream",
        "--incoming",
        str(tmp_path / "incoming"),
        "--spec",
        "taobao",
        "--run-dir",
        str(run_dir),
        "--workers",
        "1",
        "--ps-shards",
        "1",
        "--batch-size",
        "256",
        "--idle-timeout",
        "600",
    )
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.splitlines()[0].strip()
    store = VersionStore(str(run_dir / "versions"))

    def consumed() -> int:
        latest = store.latest()
        return bundle.ledger_totals(store.manifest(latest))[0] if latest else 0

    def job_failed() -> str:
        status = freshrec(head, "jobs", "status", job_id, "--address", head.dashboard).stdout
        return status if "FAILED" in status or "STOPPED" in status else ""

    try:
        wait_until("a version holding every data file", lambda: consumed() == len(files), 240, every_s=0.5)
    except AssertionError as exc:
        logs = freshrec(head, "jobs", "logs", job_id, "--address", head.dashboard).stdout
        raise AssertionError(f"{exc}; {job_failed()}; {logs[-3000:]}") from None
    assert store.manifest(store.latest()).rows > 0
    logs = freshrec(head, "jobs", "logs", job_id, "--address", head.dashboard).stdout
    # FRESHREC_RAY_ADDRESS=auto from the runtime env: the job joined this cluster, no embedded Ray
    assert re.search(rf"connecting to Ray at \S+:{head.ports['port']}\b", logs), logs[-3000:]
    assert "starting an embedded local Ray" not in logs
    # the run's own emission points (worker.py, versioning.py, the shard actor) reached the metrics endpoint
    want = {
        "ray_freshrec_trainer_data_files_total",
        "ray_freshrec_versions_committed_total",
        "ray_freshrec_ps_push_latency_seconds_bucket",
    }
    wait_until("the training run's series", lambda: want <= set(scrape(head)), 60, every_s=2)
    # still following its directory: stopped on request
    assert not job_failed()
    stop = freshrec(head, "jobs", "stop", job_id, "--wait", "--timeout", "90", "--address", head.dashboard)
    assert stop.returncode == 0 and f"{job_id}: STOPPED" in stop.stdout, stop.stdout + stop.stderr
    status = freshrec(head, "jobs", "status", job_id, "--address", head.dashboard)
    assert "STOPPED" in status.stdout


def test_a_bad_command_is_refused_before_submission(head):
    bad = freshrec(head, "submit", "--address", head.dashboard, "--", "train", "--spec", "taobao")
    assert bad.returncode == 2
    assert "not valid" in bad.stderr and "--data" in bad.stderr


def test_without_the_token_both_apis_say_authentication_failed(head):
    jobs = freshrec(head, "jobs", "list", "--address", head.dashboard, with_token=False)
    assert jobs.returncode == 2
    assert "token authentication" in jobs.stderr and "RAY_AUTH_TOKEN" in jobs.stderr

    join = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from cluster.cli import main; import sys; sys.exit(main(['config', 'show', '--address', '{head.gcs}']))",
        ],
        cwd=REPO,
        env=head.env(with_token=False),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert join.returncode == 0  # config show does not start Ray: nothing to refuse
    probe = (
        "import sys\nfrom cluster.config import RayConfig\nfrom cluster.errors import UserError\n"
        "from cluster.ray_runtime import ensure_ray\n"
        f"try:\n    ensure_ray(RayConfig(address='{head.gcs}'))\nexcept UserError as e:\n"
        "    print(e); sys.exit(2)\n"
    )
    t0 = time.monotonic()
    refused = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=head.env(with_token=False),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr[-2000:]
    assert "without an authentication token" in refused.stdout and "RAY_AUTH_TOKEN" in refused.stdout
    assert time.monotonic() - t0 < 90


def test_a_dead_address_fails_fast_and_no_address_starts_an_embedded_ray(head):
    dead = f"127.0.0.1:{free_port()}"
    probe = (
        "import sys\nfrom cluster.config import RayConfig\nfrom cluster.errors import UserError\n"
        "from cluster.ray_runtime import ensure_ray\n"
        f"try:\n    ensure_ray(RayConfig(address='{dead}'))\nexcept UserError as e:\n    print(e); sys.exit(2)\n"
    )
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=head.env(), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and f"cannot reach a Ray cluster at {dead}" in r.stdout
    assert time.monotonic() - t0 < 20  # not the minutes of a hanging ray.init

    env = head.env()
    env["RAY_ADDRESS"] = head.gcs  # a registered cluster must not be joined without --address
    embedded = (
        "import ray\nfrom cluster.config import RayConfig\nfrom cluster.ray_runtime import ensure_ray\n"
        "ensure_ray(RayConfig(num_cpus=1))\nprint(ray.get_runtime_context().gcs_address)\n"
        "print(ray.cluster_resources().get('CPU'))\nray.shutdown()\n"
    )
    r = subprocess.run([sys.executable, "-c", embedded], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    gcs, cpus = r.stdout.split()[-2:]
    assert gcs.rsplit(":", 1)[1] != str(head.ports["port"]) and float(cpus) == 1.0


DRIVER = """
import sys, types
import numpy as np
import ray
from cluster.config import RayConfig
from cluster.ray_runtime import ensure_ray
from common import metrics
from paramserver import PSConfig, TableConfig, create_parameter_server

ensure_ray(RayConfig(address=sys.argv[1]))
# the parameter server emits from its shard actor
cfg = PSConfig(tables=(TableConfig("item", 4),), num_shards=1, num_workers=1, mode="sync", capacity_per_shard=64,
               actor_num_cpus=0.5)
client = create_parameter_server(cfg)
ids = np.arange(10, dtype=np.int64)
for step in range(3):
    client.wait(client.pull_many({"item": ids}, step=step))
    client.wait(client.push_many({"item": (ids, np.ones((10, 4), np.float32))}, step=step))
client.stats()  # flushes the shard's counters

@ray.remote(num_cpus=0)
def trainer_side():  # the trainer's telemetry, from a worker process as in Ray Train
    from trainer import telemetry
    report = types.SimpleNamespace(by_reason={"unknown action": 3, "malformed id": 1}, rows_late=2)
    telemetry.record_file({"examples_trained": 100, "examples_per_s": 5000.0, "auc": 0.71, "log_loss": 0.52,
                           "cumulative_auc": 0.7}, report)
    telemetry.record_version(types.SimpleNamespace(kind="delta", bytes=12345, version=7), pause_ms=4.0, write_s=0.3)
    return True

assert ray.get(trainer_side.remote(), timeout=60)

# serving: a real Ray Serve replica answers gRPC calls and follows a store the publish gate writes
import tempfile, time
from pathlib import Path
import grpc
from bench.servedata import StoreTrainer, write_taobao_csv
from serving.app import start_serving
from serving.client import ScoringClient
from serving.config import ServeConfig
from serving.wire import pb

root = Path(tempfile.mkdtemp(prefix="frh-serve-"))
st = StoreTrainer(root / "versions")  # in this driver: the gate's published_total / published_version
st.add_file(write_taobao_csv(root / "in" / "part-0.csv", 600, 0))
port = start_serving(ServeConfig(store_url=str(root / "versions"), poll_interval_s=0.1))
c = ScoringClient(f"127.0.0.1:{port}")
c.wait_ready(120)
for _ in range(3):
    c.score(5, [1, 2])
try:
    c.stub.Score(pb.ScoreRequest(), metadata=c.metadata, timeout=10)  # no candidates: INVALID_ARGUMENT
except grpc.RpcError as exc:
    assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
path = write_taobao_csv(root / "in" / "part-1.csv", 600, 1, start_ts=1_511_662_000)
picked = time.time()  # a new version with a pick-up time: the replica's forward swap records freshness
st.trainer.step_file(st.read(path), path.name, rows_read=600)
st.keeper.after_file(picked_up_at=picked)
st.keeper.wait()
c.wait_ready(60, min_version=st.keeper.last_version)
print("emitted", flush=True)
sys.stdin.read()  # the series stay while this driver lives: the test closes stdin once it has scraped
from ray import serve
serve.shutdown()
client.shutdown()
"""


def test_the_metrics_endpoint_serves_freshrec_series(head):
    from common import metrics

    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, head.gcs],
        cwd=REPO,
        env=head.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, line = time.monotonic() + 240, ""
        while line.strip() != "emitted" and time.monotonic() < deadline:  # bounded wait for "emitted"
            ready, _, _ = select.select([driver.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = driver.stdout.readline() if ready else "(no answer within 240 s)"
            if not line:  # the driver ended
                break
        assert line.strip() == "emitted", driver.stderr.read()[-3000:] if driver.poll() is not None else line
        want = {
            "ray_freshrec_ps_pull_latency_seconds_bucket",
            "ray_freshrec_ps_push_latency_seconds_count",
            "ray_freshrec_ps_rows_pulled_total",
            "ray_freshrec_ps_rows_pushed_total",
            "ray_freshrec_ps_resident_rows",
            "ray_freshrec_trainer_examples_total",
            "ray_freshrec_trainer_examples_per_second",
            "ray_freshrec_trainer_progressive_auc_ratio",
            "ray_freshrec_trainer_progressive_logloss_nats",
            "ray_freshrec_trainer_dead_letters_total",
            "ray_freshrec_trainer_late_rows_total",
            "ray_freshrec_versions_size_bytes",
            "ray_freshrec_versions_pause_seconds_bucket",
            "ray_freshrec_versions_write_duration_seconds_sum",
            "ray_freshrec_versions_latest_version",
            "ray_freshrec_versions_published_total",
            "ray_freshrec_versions_published_version",
            "ray_freshrec_serving_requests_total",
            "ray_freshrec_serving_request_latency_seconds_bucket",
            "ray_freshrec_serving_loaded_version",
            "ray_freshrec_serving_version_lag_versions",
            "ray_freshrec_serving_freshness_seconds_count",
        }
        seen: dict[str, list[str]] = {}

        def found() -> bool:
            seen.clear()
            seen.update(scrape(head))
            return want <= set(seen)

        try:
            wait_until("the freshrec series on the metrics endpoint", found, 60, every_s=2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; missing {sorted(want - set(seen))}") from None
        assert any(
            'reason="unknown action"' in row and row.endswith(" 3.0")
            for row in seen["ray_freshrec_trainer_dead_letters_total"]
        )
        assert any('shard="0"' in row and row.endswith(" 30.0") for row in seen["ray_freshrec_ps_rows_pulled_total"])
        assert any(row.endswith(" 0.71") for row in seen["ray_freshrec_trainer_progressive_auc_ratio"])
        # the replica's own series: requests by method and code, the served version, its lag, freshness
        requests = seen["ray_freshrec_serving_requests_total"]
        assert any('method="Score"' in r and 'code="OK"' in r and r.endswith(" 3.0") for r in requests), requests
        assert any('method="Score"' in r and 'code="INVALID_ARGUMENT"' in r and r.endswith(" 1.0") for r in requests)
        assert any(r.endswith(" 2.0") for r in seen["ray_freshrec_serving_loaded_version"])  # version 2 served
        assert any(r.endswith(" 0.0") for r in seen["ray_freshrec_serving_version_lag_versions"])
        exported = {n for d in metrics.DEFINITIONS for n in metrics.exported_names(d)}
        assert set(seen) <= exported  # everything freshrec exports is defined, under Ray's ray_ prefix
    finally:
        if driver.poll() is None:
            driver.stdin.close()
            try:
                driver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                driver.kill()
