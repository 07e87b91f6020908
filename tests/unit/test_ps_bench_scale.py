"""The table-size benches run small: ``bench ps --scale`` (pre-filled tables, in-process shards, no
Ray) and ``bench shard --idmap`` (hash map vs the previous sorted map)."""

import json

from cluster.cli import main


def test_bench_ps_scale_prefills_each_size_and_reports_ms_per_step(capsys):
    assert (
        main(
            [
                "bench",
                "ps",
                "--json",
                "--scale",
                "--rows",
                "4000,12000",
                "--shards",
                "1",
                "--placements",
                "in_process",
                "--rounds",
                "2",
                "--chunk",
                "1",
                "--warmup",
                "1",
                "--batch",
                "128",
                "--tables",
                "2",
                "--dim",
                "8",
                "--naive-steps",
                "0",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    keys = list(out["ps_ms_per_step"])
    assert keys == ["4000 rows, 1 shards in_process", "12000 rows, 1 shards in_process"]
    assert out["ratio_to_smallest"][keys[0]] == 1.0 and out["ratio_to_smallest"][keys[1]] > 0
    # the pre-filled rows are held, plus the ids the steps admitted (the same steps at each size)
    admitted = out["rows_held"][keys[0]] - 4000
    assert admitted > 0 and out["rows_held"][keys[1]] == 12000 + admitted
    assert out["new ids per step (all tables, median of the timed steps)"] > 0


def test_bench_ps_refuses_several_rows_without_scale(capsys):
    assert main(["bench", "ps", "--rows", "1000,2000", "--placements", "in_process"]) == 2
    assert "--scale" in capsys.readouterr().err


def test_bench_shard_idmap_times_both_maps(capsys):
    assert (
        main(
            [
                "bench",
                "shard",
                "--json",
                "--idmap",
                "--held",
                "0,3000",
                "--batch",
                "256",
                "--rounds",
                "2",
                "--chunk",
                "2",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out["insert_ms_hash"]) == {"0 held", "3000 held"}
    assert out["hash_insert_over_smallest"]["0 held"] == 1.0
    assert all(v["median"] > 0 for v in out["insert_ratio_sorted_over_hash"].values())
    assert 0 < out["hash_map_bytes_per_slot"]["3000 held"] < 64


def test_bench_snapshot_reports_peak_rss_over_table_per_phase(capsys):
    """One small run of ``bench snapshot`` (it also covers test_versions_cli's former smoke run of the bench)."""
    assert main(["bench", "snapshot", "--json", "--rows", "20000", "--rounds", "1", "--free-before-restore"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 20000 and out["bytes_per_row_by_kind"]["rows"] == 128
    for key in ("delta_over_full", "pause_ms", "restore_s", "bytes_per_row"):
        assert out[key] > 0, key
    peaks = out["peak_rss_over_table"]
    assert set(peaks) == {"full_cut", "delta_cut", "commit", "restore"}
    assert all(v is None or v > 0 for v in peaks.values()) and out["restored_sample_equal"] is True
    assert out["parts_per_full"] >= 1 and out["table_rss_bytes"] > 0
