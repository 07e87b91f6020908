"""The training CLI's errors and `freshrec report` (no Ray needed)."""

import json

from cluster.cli import main
from trainer.plots import auc_table, load_metrics


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recs = [
        {
            "file": f"part-{i}.parquet",
            "examples": 100 + i,
            "positives": 10,
            "auc": 0.5 + i / 100,
            "log_loss": 0.4,
            "train_seconds": 0.5,
            "examples_trained": 100 + i,
            "examples_per_s": 200.0 + i,
            "cumulative_auc": 0.5 + i / 200,
            "ledger_rows": 100 * (i + 1),
            "wall_time": 0.0,
        }
        for i in range(3)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run


def test_report_writes_pngs(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["report", "--run-dir", str(run), "--out", str(tmp_path / "plots")]) == 0
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["quality.png", "throughput.png"]  # no version store: no version plots
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in pngs)
    table = auc_table(load_metrics(run))
    assert "part-2.parquet" in table and "0.5200" in table


def test_report_on_a_missing_run_says_what_to_do(tmp_path, capsys):
    assert main(["report", "--run-dir", str(tmp_path / "nope")]) == 2
    assert "run directory" in capsys.readouterr().err


def test_train_refuses_bad_input_before_ray_starts(tmp_path, capsys, monkeypatch):
    import cluster.ray_runtime

    def no_ray(*a, **k):
        raise AssertionError("Ray must not start for a bad command line")

    monkeypatch.setattr(cluster.ray_runtime, "ensure_ray", no_ray)
    assert main(["train", "--data", str(tmp_path / "nope"), "--spec", "taobao"]) == 2
    assert "freshrec data split" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--spec", "taobao"]) == 2  # an empty directory
    assert "no data files" in capsys.readouterr().err
    assert main(["stream", "--incoming", str(tmp_path), "--spec", "nospec"]) == 2
    assert "built-in" in capsys.readouterr().err
    for bad, says in (
        (["--workers", "0"], "workers must be"),
        (["--ps-shards", "0"], "ps.num_shards"),
        (["--set", "train.lr=1"], "unknown key"),
        (["--set", "ps.mode=fast"], "ps.mode"),
        (["--set", "oops"], "KEY=VALUE"),
        (["--config", str(tmp_path / "none.yaml")], "does not exist"),
        (["--set", "ps.placement=in_process", "--workers", "2"], "one training worker's process"),
        (["--set", "ps.pipeline_depth=1", "--mode", "async"], "for sync mode"),
        (["--set", "ps.pipeline_depth=7"], "ps.pipeline_depth must be"),
    ):
        assert main(["stream", "--incoming", str(tmp_path), "--spec", "taobao", *bad]) == 2, bad
        assert says in capsys.readouterr().err, bad
    assert main(["stream", "--incoming", str(tmp_path), "--spec", "taobao", "--idle-timeout", "0"]) == 2


def test_config_show_layers_defaults_yaml_set_and_flags(tmp_path, capsys):
    import yaml

    run = tmp_path / "run.yaml"
    run.write_text("spec: movielens100k\nworkers: 2\ntrain: {batch_size: 64, sparse_lr: 0.1}\nps: {num_shards: 3}\n")
    assert main(["config", "show", "--config", str(run), "--set", "train.batch_size=128", "--seed", "7"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["spec"] == "movielens100k" and cfg["workers"] == 2
    assert cfg["train"]["batch_size"] == 128 and cfg["train"]["sparse_lr"] == 0.1 and cfg["train"]["seed"] == 7
    assert cfg["ps"]["num_shards"] == 3 and cfg["ps"]["mode"] == "sync" and cfg["ray"]["address"] is None
    assert main(["config", "show", "--json", "--set", "model.arch=torchrec_dlrm_dcn"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["arch"] == "torchrec_dlrm_dcn"


def test_every_command_has_help(capsys):
    import pytest

    for argv in (
        ["--help"],
        ["data", "--help"],
        ["data", "validate", "--help"],
        ["data", "split", "--help"],
        ["data", "fetch", "--help"],
        ["train", "--help"],
        ["stream", "--help"],
        ["report", "--help"],
        ["demo", "--help"],
        ["config", "show", "--help"],
        ["bench", "--help"],
        ["bench", "reader", "--help"],
        ["bench", "ps", "--help"],
        ["bench", "train", "--help"],
        ["bench", "quality", "--help"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0, argv
        assert "usage: freshrec" in capsys.readouterr().out
