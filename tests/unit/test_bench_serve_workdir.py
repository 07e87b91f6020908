"""``bench serve`` removes its work directory and stops the processes it started: at the end, on an
error, on Ctrl-C and on SIGTERM; ``--keep-work`` keeps the directory."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.serve import work_dir
from cluster.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_the_work_directory_and_its_processes_go_at_the_end():
    with work_dir() as (work, children):
        (work / "versions").mkdir()
        (work / "versions" / "m.json").write_text("{}")
        child = _sleeper()
        children.append(child)
        done = subprocess.Popen([sys.executable, "-c", "pass"])
        done.wait(30)
        children.append(done)  # already ended: left as it is
        assert work.name.startswith("freshrec-bench-serve-") and work.is_dir()
    assert not work.exists()
    assert child.poll() is not None  # killed, and waited for


@pytest.mark.parametrize("error", [RuntimeError("the trainer process did not start"), KeyboardInterrupt()])
def test_an_error_or_ctrl_c_cleans_up_and_goes_on_up(error):
    with pytest.raises(type(error)):
        with work_dir() as (work, children):
            children.append(_sleeper())
            (work / "trainer.log").write_text("...")
            raise error
    assert not work.exists()
    assert children[0].poll() is not None


def test_keep_keeps_the_directory_and_says_where(capsys):
    with work_dir(keep=True) as (work, children):
        (work / "a.txt").write_text("kept")
        children.append(_sleeper())
    try:
        assert (work / "a.txt").read_text() == "kept"
        assert children[0].poll() is not None  # the processes stop either way
        assert str(work) in capsys.readouterr().err
    finally:
        import shutil

        shutil.rmtree(work)


def test_sigterm_cleans_up_and_exits_143(tmp_path):
    code = (
        "import os, signal, sys, time\n"
        "from bench.serve import work_dir\n"
        "with work_dir() as (work, children):\n"
        "    print(work, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        work = Path(proc.stdout.readline().strip())
        assert work.is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 5
    while work.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not work.exists()


def test_the_cli_takes_keep_work():
    args = build_parser().parse_args(["bench", "serve", "--keep-work", "--skip", "swaps"])
    assert args.keep_work is True
    assert build_parser().parse_args(["bench", "serve"]).keep_work is False
