"""The ``serve:`` section of the run config tree (issue 23 item 1): one definition of every serving default
(serving/config.py), the same precedence as ``train`` (flags > --set > YAML > defaults) for ``freshrec serve``,
``freshrec config show`` printing it, and errors that name the key. No Ray: the command's config step only."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.cli import main
from cluster.commands.serve import SERVE_FLAG_KEYS, serve_config_from_args
from cluster.config import RunConfig, load_run_config
from cluster.errors import UserError
from common.config import ConfigError
from serving.config import FollowSettings, Limits, ServeConfig


def _serve_args(argv: list[str]) -> argparse.Namespace:
    """``freshrec serve ARGV`` parsed by the real parser (nothing started)."""
    from cluster.cli import build_parser

    return build_parser().parse_args(["serve", *argv])


def _yaml(tmp_path, data: dict) -> str:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(p)


def test_the_serve_section_defaults_are_serve_configs_and_the_search_replica_shares_them():
    cfg = RunConfig()
    assert cfg.serve == ServeConfig()
    assert cfg.serve.store_url is None  # a run config names no store: serve --run-dir / --store gives it
    from search.service import SearchServeConfig

    assert SearchServeConfig("s", "c").poll_interval_s == ServeConfig.poll_interval_s
    # the grpcio launcher's flag default is ServeConfig's too
    from cluster.serve_config import GRPC_PORT

    assert GRPC_PORT == ServeConfig.grpc_port


def test_serve_reads_flags_over_set_over_yaml_over_defaults(tmp_path):
    path = _yaml(
        tmp_path,
        {
            "serve": {"poll_interval_s": 1.5, "replicas": 3, "retrieve": 300, "limits": {"max_k": 50}},
            "ray": {"address": "auto"},
        },
    )
    # YAML over defaults
    run = serve_config_from_args(_serve_args(["--store", "s3://b/v", "--config", path]))
    assert (run.serve.poll_interval_s, run.serve.replicas, run.serve.retrieve) == (1.5, 3, 300)
    assert run.serve.limits == Limits(max_k=50)
    assert run.serve.table_shards == ServeConfig.table_shards  # untouched: the default
    assert run.ray.address == "auto" and run.serve.store_url == "s3://b/v"
    # --set over YAML
    run = serve_config_from_args(
        _serve_args(["--store", "x", "--config", path, "--set", "serve.replicas=4", "--set", "serve.limits.max_k=60"])
    )
    assert (run.serve.replicas, run.serve.limits.max_k, run.serve.poll_interval_s) == (4, 60, 1.5)
    # flags over --set
    argv = ["--store", "x", "--config", path, "--set", "serve.replicas=4", "--replicas", "5", "--poll-interval", "2"]
    run = serve_config_from_args(_serve_args(argv + ["--address", "ray://h:10001"]))
    assert (run.serve.replicas, run.serve.poll_interval_s, run.ray.address) == (5, 2.0, "ray://h:10001")


def test_serve_store_comes_from_run_dir_store_or_the_yaml(tmp_path):
    run = serve_config_from_args(_serve_args(["--run-dir", str(tmp_path)]))
    assert run.serve.store_url == str(tmp_path / "versions")
    assert run.serve.metrics_path == str(tmp_path / "metrics.jsonl")
    path = _yaml(tmp_path, {"serve": {"store_url": "/data/versions", "storage_options": {"anon": False}}})
    run = serve_config_from_args(_serve_args(["--config", path, "--storage-option", "client_kwargs.x=1"]))
    assert run.serve.store_url == "/data/versions"
    assert run.serve.storage_options == {"anon": False, "client_kwargs.x": 1}  # merged, the key kept whole
    assert serve_config_from_args(_serve_args(["--config", path, "--store", "o"])).serve.store_url == "o"
    with pytest.raises(UserError, match="--store URL or --run-dir DIR"):
        serve_config_from_args(_serve_args([]))


def test_serve_list_flags_keep_paths_whole(tmp_path):
    odd = str(tmp_path / "a b: [c].csv")  # would not survive a round trip through YAML text
    run = serve_config_from_args(
        _serve_args(["--store", "x", "--catalogue", odd, "--remote-tables", "user,ctx", "--cache-rows", "1024"])
    )
    assert run.serve.catalogue == (odd,)
    assert run.serve.remote_tables == ("user", "ctx") and run.serve.cache_rows == 1024


@pytest.mark.parametrize(
    "override, key",
    [
        ("serve.poll_interval_s=0", "serve.poll_interval_s"),
        ("serve.replicas=0", "serve.replicas"),
        ("serve.grpc_port=70000", "serve.grpc_port"),
        ("serve.cache_rows=1000", "serve.cache_rows"),
        ("serve.limits.max_k=0", "serve.limits.max_k"),
        ("serve.limits.max_kk=3", "serve.limits"),
        ("serve.pollinterval=1", "pollinterval"),
        ("serve.retrieve=[1]", "serve.retrieve"),
        ("serve.catalogue=3", "serve.catalogue"),
        ("serve.pin_version=true", "serve.pin_version"),
        ("serve=3", "serve"),
    ],
)
def test_a_bad_serve_value_is_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_run_config(None, [override])


def test_serve_cli_refuses_a_bad_key_before_starting_anything(capsys):
    assert main(["serve", "--store", "x", "--set", "serve.limits.max_kk=3"]) != 0
    err = capsys.readouterr().err
    assert "serve.limits" in err and "max_kk" in err and "max_k" in err


def test_config_show_prints_serving_with_its_overrides(capsys):
    assert main(["config", "show", "--json", "--set", "serve.retrieve=123", "--set", "serve.limits.max_k=7"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["serve"]["retrieve"] == 123 and data["serve"]["limits"]["max_k"] == 7
    assert data["serve"]["poll_interval_s"] == ServeConfig.poll_interval_s
    # what config show prints loads back as the same tree
    assert RunConfig.from_dict(data) == load_run_config(None, ["serve.retrieve=123", "serve.limits.max_k=7"])
    # a version manifest's config leaves the serving settings out (not part of a model)
    assert "serve" not in RunConfig().to_dict(serve=False)


def test_app_from_args_takes_any_serve_key_and_refuses_unknown_ones():
    pytest.importorskip("ray.serve")
    from serving.app import app_from_args
    from serving.errors import ServingError

    app = app_from_args({"store": "/data/versions", "grpc_port": 9000, "replicas": 2, "limits": {"max_k": 9}})
    cfg = app._bound_deployment.init_args[0]
    assert isinstance(cfg, ServeConfig)
    assert cfg.limits.max_k == 9 and cfg.poll_interval_s == ServeConfig.poll_interval_s and cfg.replicas == 2
    assert app._bound_deployment.num_replicas == 2
    with pytest.raises(ServingError, match="poll_intervall"):
        app_from_args({"store": "/d", "poll_intervall": 1})
    with pytest.raises(ServingError, match="'store'"):
        app_from_args({"replicas": 1})


def test_a_replica_refuses_to_start_without_a_store():
    from serving.service import ScoringService

    with pytest.raises(ConfigError, match="serve.store_url is not set"):
        ScoringService(ServeConfig())


def test_follow_settings_none_means_no_change():
    assert FollowSettings.from_user_config({}) == FollowSettings(None, None)
    with pytest.raises(ConfigError, match="poll_interval_s"):
        FollowSettings.from_user_config({"poll_interval_s": True})


_SCALARS = {
    "poll_interval_s": st.floats(0.01, 3600, allow_nan=False),
    "replicas": st.integers(1, 64),
    "retrieve": st.integers(1, 5000),
    "table_shards": st.integers(1, 256),
    "cache_rows": st.sampled_from([1, 2, 1024, 1 << 16]),
    "torch_threads": st.integers(1, 16),
}


@settings(max_examples=30, deadline=None)
@given(
    yaml_part=st.fixed_dictionaries({}, optional=_SCALARS),
    set_part=st.fixed_dictionaries({}, optional=_SCALARS),
    flag_part=st.fixed_dictionaries(
        {}, optional={k: _SCALARS[k] for k in ("poll_interval_s", "replicas", "table_shards", "cache_rows")}
    ),
)
def test_precedence_against_a_reference_merge(tmp_path_factory, yaml_part, set_part, flag_part):
    """Randomised: each serve key ends as the flag's value if given, else --set's, else the YAML's, else the default."""
    path = _yaml(tmp_path_factory.mktemp("y"), {"serve": yaml_part})
    argv = ["--store", "x", "--config", path]
    for k, v in set_part.items():
        argv += ["--set", f"serve.{k}={v!r}"]
    dests = {v.split(".", 1)[1]: k for k, v in SERVE_FLAG_KEYS.items() if v.startswith("serve.")}
    for k, v in flag_part.items():
        argv += [f"--{dests[k].replace('_', '-')}", str(v)]
    expected = {**yaml_part, **set_part, **flag_part}
    run = serve_config_from_args(_serve_args(argv))
    for f in dataclasses.fields(ServeConfig):
        if f.name in _SCALARS:
            want = expected.get(f.name, getattr(ServeConfig(), f.name))
            assert getattr(run.serve, f.name) == pytest.approx(want), f.name
