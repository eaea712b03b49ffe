"""One process per run folder (issue 25): a second ``famus train`` or ``--resume`` on a folder in use is refused
naming the holder; a killed holder does not block; a refused run leaves nothing behind."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import famus
from famus.cli import main
from famus.train import TrainConfig, train
from famus.verified import PAUSE_ENV

REPO = Path(famus.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
BASE = ["--dataset", "digits", "--model", "mlp", "--meta-per-class", "10", "--batch-size", "64", "--no-progress",
        "--threads", "1"]
LOCK = ".famus.lock"
HOLD = """
import sys, time
from famus.train.lock import RunLock
lock = RunLock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _until(ready, proc, timeout=60.0) -> None:
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None and time.monotonic() < end, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)


def test_a_second_process_is_refused_naming_the_holder_until_it_is_killed(tmp_path):
    from famus.train.lock import RunFolderLocked, RunLock

    run = tmp_path / "runs" / "a"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline().decode().strip() == "held", holder.stderr.read().decode()[-2000:]
        info = json.loads((run / LOCK).read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        with pytest.raises(RunFolderLocked) as exc:
            RunLock.acquire(run)
        msg = str(exc.value)
        assert f"--out {str(run)!r} is in use by another famus process (pid {holder.pid} on " in msg
        assert "wait for it to end, or choose another --out" in msg and "\n" not in msg
        assert [p.name for p in run.iterdir()] == [LOCK]  # the refused one removed nothing, wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert (run / LOCK).exists()  # a SIGKILL leaves the file, but not the lock
    with RunLock.acquire(run) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not run.exists() or not any(run.iterdir())


def test_lock_release_removes_what_it_created_and_refuses_symlinks(tmp_path):
    from famus.train.lock import RunLock

    run = tmp_path / "x" / "y" / "run"
    with RunLock.acquire(run):
        assert (run / LOCK).is_file()
    assert not (tmp_path / "x").exists()  # nothing was written: the folders it made are gone
    run.mkdir(parents=True)
    (run / LOCK).symlink_to(tmp_path / "victim")
    (tmp_path / "victim").write_text("keep me")
    with pytest.raises(OSError):
        RunLock.acquire(run)
    assert (tmp_path / "victim").read_text() == "keep me"


def test_a_refused_run_leaves_no_folder_and_no_lock(tmp_path, capsys):
    """The data is refused after the lock was taken (and the folders made for it): they go again."""
    out = tmp_path / "new" / "run"
    assert main(["train", *BASE, "--dataset", "folder", "--data-dir", str(tmp_path / "nothing"), "--epochs", "1",
                 "--out", str(out)]) == 2
    assert "nothing is not a folder" in _err(capsys)
    assert not (tmp_path / "new").exists()


def test_a_finished_run_releases_its_lock(tmp_path, one_thread):
    out = tmp_path / "run"
    train(TrainConfig(dataset="digits", model="mlp", method="erm", meta_per_class=0, epochs=1, out=str(out),
                      progress=False, threads=1))
    assert not (out / LOCK).exists() and (out / "summary.json").exists()
    train(TrainConfig(dataset="digits", model="mlp", method="erm", meta_per_class=0, epochs=2, out=str(out),
                      progress=False, threads=1, resume=True))  # not blocked by itself
    assert not (out / LOCK).exists()


@pytest.mark.slow
def test_two_famus_train_processes_on_one_out(tmp_path):
    """A real run (slowed: 8 s per file save) holds the folder: a second run and a --resume of it are refused
    naming it (on main both went ahead and the folder ended mixed); SIGKILL-ed, it no longer blocks, and --resume
    finishes it."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "famus", "train", *BASE, "--method", "mwnet", "--epochs", "3",
                              "--out", str(out)], env={**ENV, PAUSE_ENV: "4.0"}, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _until(lambda: (out / "noisy_labels.pt").exists(), first)  # training has begun writing (slowly)
        for args in ([*BASE, "--method", "erm", "--epochs", "1", "--out", str(out)], ["--out", str(out), "--resume"]):
            second = subprocess.run([sys.executable, "-m", "famus", "train", *args], env=ENV, cwd=tmp_path,
                                    capture_output=True, text=True, timeout=300)
            err = second.stderr.strip().splitlines()
            assert second.returncode == 2 and len(err) == 1, second.stderr[-2000:]
            assert f"is in use by another famus process (pid {first.pid} on {socket.gethostname()}" in err[0]
            assert first.poll() is None  # refused while the first was running, not after
        assert "method: mwnet" in (out / "config.yaml").read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    done = subprocess.run([sys.executable, "-m", "famus", "train", "--out", str(out), "--resume"], env=ENV,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and not (out / LOCK).exists()
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3
