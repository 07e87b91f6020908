"""The training CLI's errors and `freshrec report` (no Ray needed)."""

import json

from cluster.cli import main
from trainer.report import auc_table, load_metrics


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"file": f"part-{i}.parquet", "examples": 100 + i, "positives": 10, "auc": 0.5 + i / 100,
             "log_loss": 0.4, "train_seconds": 0.5, "examples_trained": 100 + i, "examples_per_s": 200.0 + i,
             "cumulative_auc": 0.5 + i / 200, "ledger_rows": 100 * (i + 1), "wall_time": 0.0} for i in range(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run


def test_report_writes_pngs(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["report", "--run-dir", str(run), "--out", str(tmp_path / "plots")]) == 0
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["auc.png", "throughput.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in pngs)
    table = auc_table(load_metrics(run))
    assert "part-2.parquet" in table and "0.5200" in table


def test_report_on_a_missing_run_says_what_to_do(tmp_path, capsys):
    assert main(["report", "--run-dir", str(tmp_path / "nope")]) == 2
    assert "run directory" in capsys.readouterr().err


def test_train_refuses_a_missing_shard_directory(tmp_path, capsys):
    assert main(["train", "--shards", str(tmp_path / "nope"), "--spec", "taobao"]) == 2
    assert "freshrec data split" in capsys.readouterr().err
    assert main(["stream", "--incoming", str(tmp_path), "--spec", "nospec"]) == 2
    assert "built-in" in capsys.readouterr().err


def test_every_command_has_help(capsys):
    import pytest

    for argv in (["--help"], ["data", "--help"], ["data", "validate", "--help"], ["data", "split", "--help"],
                 ["data", "fetch", "--help"], ["train", "--help"], ["stream", "--help"], ["report", "--help"],
                 ["demo", "--help"], ["bench", "--help"], ["bench", "reader", "--help"], ["bench", "ps", "--help"],
                 ["bench", "train", "--help"], ["bench", "quality", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0, argv
        assert "usage: freshrec" in capsys.readouterr().out
