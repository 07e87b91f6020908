"""fsspec storage options for a training run's store, history and incoming URLs (issue 21): ``freshrec
train/stream --storage-option KEY=VALUE`` (repeatable, over the run YAML's ``storage_options``), refused before
Ray starts when malformed; the data layer's storage functions take them (argument or ``storage_options()``
context). Against moto's S3 server on loopback with no AWS variable set: only the options reach it."""

from __future__ import annotations

import uuid

import pytest

from cluster.cli import main
from tests.unit.moto_s3 import s3_server  # noqa: F401 (pytest fixture)
from trainer.data import storage

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")


@pytest.fixture
def no_ray(monkeypatch):
    import cluster.ray_runtime

    def refuse(*a, **k):
        raise AssertionError("Ray must not start for a command line refused before the run")

    monkeypatch.setattr(cluster.ray_runtime, "ensure_ray", refuse)


@pytest.fixture
def bucket(s3_server, monkeypatch):  # noqa: F811
    """(url_of(prefix), options, put(key, bytes)) on a fresh bucket; no AWS variable in the environment."""
    import boto3

    for k in AWS_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = f"opts-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="k", aws_secret_access_key="s")
    s3.create_bucket(Bucket=name)
    options = {"endpoint_url": s3_server, "key": "k", "secret": "s", "use_listings_cache": False}
    return (
        (lambda prefix: f"s3://{name}/{prefix}"),
        options,
        (lambda key, body: s3.put_object(Bucket=name, Key=key, Body=body)),
    )


ROWS = "".join(f"{u},{u * 7},{u % 3},pv,{1511658000 + u}\n" for u in range(1, 11)).encode()


def test_storage_functions_use_the_options_given_or_the_contexts(bucket):
    url, options, put = bucket
    put("incoming/part-1.csv", ROWS)
    where = url("incoming")
    [info] = storage.list_files(where, options)
    assert info.name == "part-1.csv" and info.size == len(ROWS)
    assert storage.is_dir(where, options) and storage.exists(info.path, options)
    with storage.open_binary(info.path, options) as fh:
        assert fh.read() == ROWS
    with storage.storage_options(options):  # the default of every call inside (what a training worker sets)
        assert [f.name for f in storage.list_files(where)] == ["part-1.csv"]
        assert storage.stat(info.path).size == len(ROWS)
        import hashlib

        assert storage.sha256_of(info.path) == hashlib.sha256(ROWS).hexdigest()
    with pytest.raises(TypeError, match="mapping"):
        with storage.storage_options(["endpoint_url"]):
            pass


def test_follow_and_read_an_s3_prefix_with_the_context_options(bucket):
    from trainer.data import DataLedger, Validator, load_spec, read_data_file
    from trainer.data.follow import follow_data_files

    url, options, put = bucket
    put("incoming/part-1.csv", ROWS)
    with storage.storage_options(options):
        [ref] = list(follow_data_files(None, url("incoming"), DataLedger(), drain=True, poll_s=0.01, settle_s=0))
        assert ref.data == ROWS
        assert len(read_data_file(ref.path, Validator(load_spec("taobao")))) == len(ROWS.splitlines())


def _flags(options: dict) -> list[str]:
    import json

    return [f"--storage-option={k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in options.items()]


def test_stream_lists_s3_with_the_storage_options_before_ray_starts(bucket, no_ray, tmp_path, capsys):
    url, options, put = bucket
    base = ["stream", "--spec", "taobao", "--run-dir", str(tmp_path / "run"), "--drain"]
    # an empty prefix: nothing to train on, said before Ray starts (the listing itself worked)
    assert main([*base, "--incoming", url("incoming"), *_flags(options)]) == 2
    assert "no data files in s3://" in capsys.readouterr().err
    # a store that cannot be reached with these options: a clear error naming the flag
    bad = {**options, "endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"retries": {"max_attempts": 1}}}
    assert main([*base, "--incoming", url("incoming"), *_flags(bad)]) == 2
    err = capsys.readouterr().err
    assert "cannot be listed" in err and "--storage-option endpoint_url=" in err, err
    # the options of the YAML, with one flag over them
    put("incoming/part-1.csv", ROWS)
    import yaml

    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"storage_options": {**options, "endpoint_url": "http://127.0.0.1:9"}}))
    from cluster.cli import build_parser
    from cluster.commands.options import run_config_from_args
    from cluster.commands.train import check_inputs, storage_options_from_args

    args = build_parser().parse_args(
        [
            *base,
            "--incoming",
            url("incoming"),
            "--config",
            str(run),
            f"--storage-option=endpoint_url={options['endpoint_url']}",
        ]
    )
    cfg, _ = run_config_from_args(args)
    got = storage_options_from_args(args, cfg)
    assert got == options  # the flag wins over the YAML's endpoint; the rest comes from the YAML
    check_inputs(None, url("incoming"), drain=True, storage_options=got)  # lists part-1.csv: no error


def test_malformed_storage_options_are_refused_before_anything_starts(no_ray, tmp_path, capsys):
    base = ["stream", "--spec", "taobao", "--incoming", str(tmp_path), "--run-dir", str(tmp_path / "run")]
    for bad in ("endpoint_url", "=x"):
        with pytest.raises(SystemExit) as exc:
            main([*base, "--storage-option", bad])
        assert exc.value.code == 2
        assert "KEY=VALUE" in capsys.readouterr().err
    run = tmp_path / "run.yaml"
    run.write_text("storage_options: [endpoint_url]\n")
    assert main([*base, "--config", str(run)]) == 2
    assert "storage_options must be a mapping" in capsys.readouterr().err
    assert main([*base, "--set", "storage_options=3"]) == 2
    assert "storage_options must be a mapping" in capsys.readouterr().err


def test_storage_options_stay_out_of_the_versions_manifests():
    from cluster.config import RunConfig

    cfg = RunConfig.from_dict({"storage_options": {"key": "AKIA", "secret": "hush"}})
    assert cfg.storage_options == {"key": "AKIA", "secret": "hush"}
    assert "storage_options" not in cfg.to_dict(serve=False)  # what a run writes into every manifest
    assert cfg.to_dict()["storage_options"] == {"key": "AKIA", "secret": "hush"}  # `freshrec config show`
