"""ensure_ray's address handling and `freshrec submit` / `jobs` before any Ray call (no Ray here)."""

import socket

import pytest

from cluster import ray_runtime
from cluster.cli import main
from cluster.commands import jobs
from cluster.config import RayConfig
from cluster.errors import UserError


def test_host_port_parses_the_address_forms():
    assert ray_runtime.host_port("10.0.0.5:6380") == ("10.0.0.5", 6380)
    assert ray_runtime.host_port("head") == ("head", 6379)
    assert ray_runtime.host_port("ray://head:10001") == ("head", 10001)
    with pytest.raises(UserError, match="HOST:PORT"):
        ray_runtime.host_port("head:notaport")


def test_an_unreachable_address_is_a_clear_error_before_ray_init():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port}.*embedded"):
        ray_runtime.ensure_ray(RayConfig(address=f"127.0.0.1:{port}"))  # the unit conftest refuses ray.init


def test_the_address_comes_from_the_flag_or_freshrec_ray_address(monkeypatch):
    monkeypatch.delenv(ray_runtime.ADDRESS_ENV, raising=False)
    assert ray_runtime.effective_address(RayConfig()) is None
    monkeypatch.setenv(ray_runtime.ADDRESS_ENV, "auto")
    assert ray_runtime.effective_address(RayConfig()) == "auto"
    assert ray_runtime.effective_address(RayConfig(address="h:1")) == "h:1"


def test_token_source_names_where_the_token_comes_from(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_runtime.token_source() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x")
    assert ray_runtime.token_source().endswith(".ray/auth_token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "y")
    assert ray_runtime.token_source() == "RAY_AUTH_TOKEN"


def test_submit_checks_the_command_first(capsys, monkeypatch):
    monkeypatch.delenv(jobs.ADDRESS_ENV, raising=False)
    assert main(["submit", "--address", "http://127.0.0.1:1", "--", "train", "--spec", "taobao"]) == 2
    assert "the command to submit is not valid" in capsys.readouterr().err
    assert main(["submit", "--address", "http://127.0.0.1:1", "--", "jobs", "list"]) == 2
    assert "runs where you are" in capsys.readouterr().err
    assert main(["submit", "--address", "http://127.0.0.1:1"]) == 2
    assert "nothing to submit" in capsys.readouterr().err
    assert main(["jobs", "list"]) == 2
    assert "--address is required" in capsys.readouterr().err
    assert main(["jobs", "list", "--address", "ray://h:10001"]) == 2
    assert "not Ray Client" in capsys.readouterr().err


def test_jobs_without_a_reachable_api_say_where_the_api_lives(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["jobs", "list", "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Ray job API at http://127.0.0.1:{port}" in err and "8265" in err


def test_the_runtime_env_ships_this_tree_and_joins_the_cluster(tmp_path):
    args = jobs.argparse.Namespace(env=["A=1"], no_working_dir=False, working_dir=None)
    renv = jobs.runtime_env(args)
    assert renv["env_vars"]["FRESHREC_RAY_ADDRESS"] == "auto" and renv["env_vars"]["A"] == "1"
    assert (jobs.REPO / "cluster" / "cli.py").is_file() and renv["working_dir"] == str(jobs.REPO)
    assert ".venv" in renv["excludes"] and "/data" in renv["excludes"] and "data" not in renv["excludes"]
    with pytest.raises(UserError, match="not a freshrec source tree"):
        jobs.runtime_env(jobs.argparse.Namespace(env=[], no_working_dir=False, working_dir=tmp_path))
    assert "working_dir" not in jobs.runtime_env(jobs.argparse.Namespace(env=[], no_working_dir=True, working_dir=None))
    assert (
        jobs.entrypoint(["data", "validate", "a b.csv"], installed=False)
        == "python -m cluster.cli data validate 'a b.csv'"
    )
    assert jobs.entrypoint(["train"], installed=True) == "freshrec train"


def test_an_embedded_ray_starts_its_processes_with_at_most_two_malloc_arenas_unless_the_user_set_it(monkeypatch):
    import ray

    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(
        ray, "init", lambda **kw: seen.append((kw["address"], __import__("os").environ.get("MALLOC_ARENA_MAX")))
    )
    monkeypatch.delenv(ray_runtime.ADDRESS_ENV, raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    ray_runtime.ensure_ray(RayConfig())
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    ray_runtime.ensure_ray(RayConfig())
    assert seen == [("local", "2"), ("local", "4")]
