"""`freshrec evaluate` scores held-out files with a committed version; `bench quality` replays any spec."""

import dataclasses
import json

import pytest

from cluster.cli import main
from tests.support.data import small_csv
from trainer.config import ModelConfig, TrainConfig
from trainer.data import load_spec
from trainer.local import LocalTrainer
from trainer.versioning import VersionKeeper, version_extra


def test_evaluate_scores_held_out_files_with_the_committed_model(tmp_path, capsys):
    from trainer.data import Validator, read_data_file

    spec = load_spec("taobao")
    files = [small_csv(tmp_path / f"f{i}.csv", 1500, i) for i in range(4)]
    t = LocalTrainer(spec, ModelConfig(), TrainConfig(batch_size=128, sparse_lr=0.1, dense_lr=0.05))
    keeper = VersionKeeper(
        str(tmp_path / "run" / "versions"),
        t.backend,
        t,
        extra=version_extra("taobao", {"model": dataclasses.asdict(ModelConfig()), "train": {"batch_size": 128}}),
    )
    v = Validator(spec)
    for f in files[:3]:
        t.step_file(read_data_file(f, v), f.name, rows_read=1500)
        keeper.after_file()
    keeper.wait()
    held_out = read_data_file(files[3], Validator(spec))
    want = t.score(held_out)
    assert main(["evaluate", "--run-dir", str(tmp_path / "run"), "--data", str(files[3]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    from trainer.metrics import auc

    assert out["version"] == 3 and out["examples"] == len(held_out)
    assert out["auc"] == pytest.approx(auc(held_out.label, want), abs=1e-9) and out["auc"] > 0.6
    assert main(["evaluate", "--run-dir", str(tmp_path / "nothing"), "--data", str(files[3])]) == 2
    assert "cannot load a model version" in capsys.readouterr().err

    # --baseline lr: an FTRL-LR trained on the version's data files (found by name), scored on the same rows
    from trainer.ftrl import FTRLConfig, FTRLProximal

    run = ["evaluate", "--run-dir", str(tmp_path / "run"), "--data", str(files[3]), "--baseline", "lr", "--json"]
    assert main([*run, "--train-data", str(tmp_path)]) == 0  # the directory holds the held-out file too
    out_lr = json.loads(capsys.readouterr().out)
    lr = FTRLProximal(spec, FTRLConfig())
    v = Validator(spec)
    for f in files[:3]:
        lr.train(read_data_file(f, v))
    assert out_lr["auc"] == out["auc"] and out_lr["lr_examples"] == lr.examples_trained == 4500
    assert out_lr["auc_lr"] == pytest.approx(auc(held_out.label, lr.score(held_out)), abs=1e-12)
    assert out_lr["files"][0]["auc_lr"] == pytest.approx(out_lr["auc_lr"]) and out_lr["auc_lr"] > 0.6
    assert main(run) == 2
    assert "pass --train-data" in capsys.readouterr().err
    assert main([*run, "--train-data", str(files[0]), str(files[1])]) == 2
    assert "are not in --train-data" in capsys.readouterr().err


def test_bench_quality_replays_any_spec(tmp_path, capsys):
    data = [small_csv(tmp_path / f"log{i}.csv", 2000, i) for i in range(3)]
    assert (
        main(
            [
                "bench",
                "quality",
                "--spec",
                "taobao",
                "--data",
                *map(str, data),
                "--files",
                "5",
                "--warmup",
                "2",
                "--points",
                "2",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["spec"] == "taobao_userbehavior" and out["points"] == 2 and out["files"] == 5
    assert 0 < out["compute_ratio"] < 1 and 0.4 < out["auc_incremental"] <= 1
    assert out["auc_lr"] > 0.4 and out["logloss_lr"] > 0 and out["config"]["lr"]["alpha"] > 0  # the FTRL-LR baseline
    assert main(["bench", "quality", "--data", str(data[0]), "--warmup", "1", "--history-files", "2"]) == 2
    assert "--history-files must be in [0, --warmup=1]" in capsys.readouterr().err
