"""Run folders you can trust (issue 15): verified checkpoints that cannot run code, resume that checks
what it resumes, recovery from a kill at any moment, and a one-line error for every bad value."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import famus
import famus.train.loop as loop
from famus.cli import main
from famus.train import TrainConfig, train
from famus.train.checkpoint import CheckpointSchedule, load_checkpoint
from famus.verified import PAUSE_ENV, CorruptFileError, checksum_path

REPO = Path(famus.__file__).resolve().parents[1]
# runs compared bit for bit pin the engine: the default (auto) times exact and fd, and two runs may choose apart
BASE = ["--dataset", "digits", "--model", "mlp", "--meta-per-class", "10", "--batch-size", "64", "--no-progress",
        "--noise", "symmetric", "--noise-rate", "0.4", "--meta-grad", "fd"]
COMMON = dict(dataset="digits", model="mlp", meta_per_class=10, batch_size=64, lr=0.05, progress=False, threads=1,
              noise="symmetric", noise_rate=0.4, meta_grad="fd")
TIME_KEYS = {"time_per_iter_s", "wall_time_s", "stage_time_s", "epoch_time_s", "tracking_time_s"}
STATE_KEYS = ("epoch", "step", "position", "nets", "generator", "torch_rng", "source", "best_test_acc", "tracker",
              "selection", "scores")


def assert_same(a, b, where="checkpoint"):
    """``a`` and ``b`` are equal: tensors bit for bit, containers item by item."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)), \
            where  # NaN: an example score never visited
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_same_run(out, ref):
    """The final checkpoints (model, optimizer, learner, random streams, ...) and metrics are identical,
    except times."""
    a, b = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(ref / "checkpoint.pt")
    for key in STATE_KEYS:
        assert (key in a) == (key in b), key
        if key in a:
            assert_same(a[key], b[key], key)
    assert_same(_records(out / "metrics.jsonl"), _records(ref / "metrics.jsonl"), "metrics")
    if (ref / "tracking.jsonl").exists():
        assert_same(_records(out / "tracking.jsonl"), _records(ref / "tracking.jsonl"), "tracking")


def _records(path):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- a kill at any moment -------------------------------------------------------------------------------------

def _wait(proc, ready, timeout=60.0):
    """Poll until ``ready()`` or the process ends; True if ``ready()`` held while it ran."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if ready():
            return True
        time.sleep(0.003)
    return False


def _checkpoint_in_epoch(out, epochs_done):
    """Ready when this process has written a checkpoint and ``epochs_done`` epochs are in metrics.jsonl."""
    p, metrics = out / "checkpoint.pt", out / "metrics.jsonl"
    since = p.stat().st_mtime_ns if p.exists() else 0
    return lambda: (p.exists() and p.stat().st_mtime_ns > since and metrics.exists()
                    and metrics.read_text().count("\n") >= epochs_done)


@pytest.mark.slow
def test_sigkill_at_five_moments_then_resume_is_bit_identical(tmp_path, one_thread):
    """SIGKILL a subprocess run at 5 moments (in the first epoch before any checkpoint, while a checkpoint
    file is being written, while the checksum lists both the old and the new file, and twice at random
    times after a checkpoint), resume each time with only ``--out``: the final model, optimizer, learner,
    random streams and metrics equal those of an uninterrupted run (checkpointed at epoch ends only)."""
    out = tmp_path / "killed"
    flags = [*BASE, "--method", "mwnet", "--meta-grad", "famus", "--lr", "0.05", "--epochs", "3", "--threads", "1",
             "--set", "checkpoint_every=3", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", PAUSE_ENV: "0.04"}
    sidecar = checksum_path(out / "checkpoint.pt")
    rng = random.Random(15)
    # (what, when to start the random delay, its maximum): the pauses above are 0.04 s
    moments = [
        ("first epoch, writing the run header", lambda: (out / "config.yaml").exists(), 0.03),
        ("writing checkpoint.pt", lambda: any(out.glob(".checkpoint.pt.*.tmp")), 0.06),
        ("checksum lists old and new", lambda: sidecar.exists() and len(sidecar.read_text().splitlines()) == 2, 0.03),
        ("random, epoch 2", 1, 0.3),
        ("random, epoch 3", 2, 0.3),
    ]
    stale_seen, states = False, []
    for i, (what, ready, delay) in enumerate(moments):
        if isinstance(ready, int):  # a checkpoint written by this process, in epoch `ready` + 1
            ready = _checkpoint_in_epoch(out, ready)
        args = flags if i == 0 else ["--out", str(out), "--resume"]
        proc = subprocess.Popen([sys.executable, "-m", "famus", "train", *args], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            hit = _wait(proc, ready)
            time.sleep(rng.uniform(0.0, delay))
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert hit and proc.returncode == -signal.SIGKILL, (what, proc.returncode, err.decode()[-2000:])
        stale_seen |= any(out.glob(".*.tmp"))
        if (out / "checkpoint.pt").exists():  # whenever the kill came, the checkpoint left verifies and loads
            ck = load_checkpoint(out / "checkpoint.pt")
            states.append((ck["epoch"], ck["step"], ck["position"] is not None))
        else:
            states.append(None)
    assert states[0] is None  # killed before the first checkpoint: the next run starts afresh
    assert any(s is not None and s[0] == 0 and s[2] for s in states)  # a kill resumed in the first epoch
    assert any(s is not None and s[0] > 0 for s in states)  # and a later one after it
    assert stale_seen  # some kill left a temporary file behind
    done = subprocess.run([sys.executable, "-m", "famus", "train", "--out", str(out), "--resume"],
                          env={**env, PAUSE_ENV: ""}, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(out.glob(".*.tmp"))  # stale temporaries removed
    info = json.loads((out / "run.json").read_text())
    assert len(info["resumed"]) == sum(s is not None for s in states)  # the runs that found a checkpoint

    ref = tmp_path / "ref"
    train(TrainConfig(**{**COMMON, "meta_grad": "famus"}, method="mwnet", epochs=3, out=str(ref)))
    assert_same_run(out, ref)


# --- in-process interruptions (a KeyboardInterrupt right after a chosen checkpoint) ----------------------------

def _interrupt_after(monkeypatch, module, when):
    """Make ``module.save_checkpoint`` raise KeyboardInterrupt right after the save for which ``when(state)``."""
    real = module.save_checkpoint
    seen = []

    def save(path, state):
        real(path, state)
        if Path(path).name == "checkpoint.pt" and when(state) and not seen:
            seen.append(state["step"])
            raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_checkpoint", save)
    return seen


@pytest.mark.parametrize("extra", [
    dict(method="erm"),
    dict(method="mwnet", meta_grad="famus", track_every=4, milestones=[1]),
    dict(method="mlc", meta_grad="exact", noise="pair"),
    dict(method="mwnet", meta_grad="fd", meta_every=3, meta_warmup=5),
    dict(method="mwnet", meta_grad="auto", meta_dense=12, meta_every=3, meta_warmup=5,
         engine_options={"choice": "exact"}),  # the recipe's schedule (dense, then sparse) resumes mid-epoch
])
def test_mid_epoch_resume_equals_uninterrupted(tmp_path, monkeypatch, one_thread, extra):
    cfg = dict(COMMON, epochs=2, checkpoint_every=7, **extra)
    ref = tmp_path / "ref"
    train(TrainConfig(**{**cfg, "checkpoint_every": None}, out=str(ref)))
    out = tmp_path / "cut"
    seen = _interrupt_after(monkeypatch, loop, lambda s: s["epoch"] == 1 and s["position"] is not None)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**cfg, out=str(out)))
    assert seen == [21]  # mid-epoch 2 (20 steps an epoch)
    monkeypatch.undo()
    train(TrainConfig(**cfg, out=str(out), resume=True))
    assert_same_run(out, ref)


@pytest.mark.parametrize("options", [{"semi": True}, {"semi": False}])
def test_pseudo_mid_epoch_resume_equals_uninterrupted(tmp_path, monkeypatch, one_thread, options):
    cfg = dict(COMMON, method="mwnet", meta_grad="famus", meta_set="pseudo", epochs=2, noise_rate=0.5,
               pseudo_options={"warmup_epochs": 1, **options}, checkpoint_every=5)
    ref = tmp_path / "ref"
    train(TrainConfig(**{**cfg, "checkpoint_every": None}, out=str(ref)))
    for name, when in (("warm-up, second network", lambda s: s["position"] and s["position"]["net"] == 1),
                       ("meta epoch, first network", lambda s: s["epoch"] == 1 and s["position"] is not None)):
        out = tmp_path / name
        seen = _interrupt_after(monkeypatch, loop, when)
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(**cfg, out=str(out)))
        assert seen, name
        monkeypatch.undo()
        train(TrainConfig(**cfg, out=str(out), resume=True))
        assert_same_run(out, ref)


def test_resume_with_only_out_uses_the_folders_config(tmp_path, monkeypatch, one_thread, capsys):
    flags = [*BASE, "--method", "l2r", "--seed", "5", "--lr", "0.05", "--epochs", "2", "--threads", "1"]
    ref, out = tmp_path / "ref", tmp_path / "cut"
    assert main(["train", *flags, "--out", str(ref)]) == 0
    _interrupt_after(monkeypatch, loop, lambda s: s["epoch"] == 1)
    assert main(["train", *flags, "--out", str(out)]) == 130
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert_same_run(out, ref)
    assert (out / "config.yaml").read_text() == (ref / "config.yaml").read_text().replace(str(ref), str(out))


def test_schedule_steps_and_time():
    every = CheckpointSchedule(3)
    assert [s for s in range(1, 10) if every.due(s)] == [3, 6, 9]
    timed = CheckpointSchedule(None, seconds=0.05)
    assert not timed.due(1)
    time.sleep(0.06)
    assert timed.due(2)
    timed.written()
    assert not timed.due(3)


# --- resume that checks ---------------------------------------------------------------------------------------

@pytest.fixture
def finished_run(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *BASE, "--method", "mwnet", "--epochs", "1", "--threads", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("flags,keys", [
    (["--seed", "2"], ["seed 1 -> 2"]),
    (["--method", "l2r"], ["method 'mwnet' -> 'l2r'"]),
    (["--meta-per-class", "5"], ["meta_per_class 10 -> 5"]),
    (["--meta-set", "pseudo"], ["meta_set 'clean' -> 'pseudo'", "meta_per_class 10 -> 0"]),
    (["--set", "engine_options.k=2", "--lr", "0.5"], ["lr 0.1 -> 0.5", "engine_options {} -> {'k': 2}"]),
    (["--epochs", "0"], ["epochs must be >= 1"]),
])
def test_resume_refuses_other_settings(finished_run, capsys, flags, keys):
    before = _snapshot(finished_run)
    assert main(["train", "--out", str(finished_run), "--resume", "--epochs", "2", *flags]) == 2
    err = _one_line_error(capsys)
    for k in keys:
        assert k in err
    assert _snapshot(finished_run) == before  # nothing written


@pytest.mark.slow
def test_resume_refuses_fewer_epochs_and_allows_safe_changes(finished_run, capsys):
    run = ["train", "--out", str(finished_run), "--resume"]
    assert main(run) == 0  # nothing left to do
    cfg = (finished_run / "config.yaml").read_text()
    assert main([*run, "--epochs", "2", "--threads", "2", "--metrics-format", "csv", "--set", "log_every=3",
                 "--set", "checkpoint_every=50", "--track-every", "5"]) == 0
    assert [r["epoch"] for r in _records(finished_run / "metrics.jsonl")] == [1, 2]
    assert (finished_run / "metrics.csv").exists() and "epochs: 2" in (finished_run / "config.yaml").read_text()
    assert cfg != (finished_run / "config.yaml").read_text()
    capsys.readouterr()
    assert main([*run, "--epochs", "1"]) == 2
    assert "epochs can only grow" in _one_line_error(capsys)


def test_folder_without_checkpoint_starts_afresh(tmp_path, one_thread):
    """Killed in the first epoch: config.yaml (maybe more) but no checkpoint, and stale temporaries."""
    ref, out = tmp_path / "ref", tmp_path / "cut"
    cfg = dict(COMMON, method="mwnet", epochs=1)
    train(TrainConfig(**cfg, out=str(ref)))
    out.mkdir()
    (out / "config.yaml").write_text((ref / "config.yaml").read_text().replace(str(ref), str(out)))
    (out / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 0.5}\n{"epo')  # foreign, and a line cut short
    (out / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert not list(out.glob(".*.tmp"))
    assert_same_run(out, ref)


def test_resume_into_a_missing_or_foreign_folder(tmp_path, capsys):
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["train", *BASE, "--epochs", "1", "--out", str(foreign), "--resume"]) == 2
    assert "not a famus run folder" in _one_line_error(capsys)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    fresh = tmp_path / "new"
    assert main(["train", *BASE, "--method", "erm", "--epochs", "1", "--out", str(fresh), "--resume"]) == 0
    assert (fresh / "checkpoint.pt").exists()


# --- checkpoints that cannot run code, and damaged files ------------------------------------------------------

class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_with_checksum(path, obj):
    """What an attacker can do: any pickle, with a matching checksum file."""
    torch.save(obj, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    checksum_path(path).write_text(f"{digest}  {path.name}\n")


@pytest.mark.parametrize("name", ["checkpoint.pt", "model_best.pt", "split.pt"])
def test_malicious_pickle_is_refused_and_never_runs(finished_run, capsys, name):
    marker = finished_run.parent / "pwned"
    path = finished_run / name
    ck = torch.load(path, weights_only=True)
    ck["epoch"] = Payload(marker)
    _write_with_checksum(path, ck)
    with pytest.raises(CorruptFileError, match=f"cannot load .*{name} safely"):
        load_checkpoint(path)
    if name == "checkpoint.pt":
        assert main(["train", "--out", str(finished_run), "--resume", "--epochs", "2"]) == 2
        assert name in _one_line_error(capsys)
    assert not marker.exists()


def _truncate(data):
    return data[: len(data) // 2]


def _zero_fill(data):
    mid = len(data) // 2
    return data[:mid] + bytes(100) + data[mid + 100:]


def _bit_flips(data):
    out = bytearray(data)
    rng = random.Random(7)
    for _ in range(3):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


@pytest.mark.parametrize("damage,needle", [
    (_truncate, "does not match its checksum"),
    (_zero_fill, "does not match its checksum"),
    (_bit_flips, "does not match its checksum"),
    (lambda data: b"", "does not match its checksum"),
    ("no checksum", "has no checksum"),
    ("truncated, checksum matching", "cannot load"),
])
def test_damaged_checkpoint_is_a_one_line_error(finished_run, capsys, damage, needle):
    path = finished_run / "checkpoint.pt"
    data = path.read_bytes()
    if damage == "no checksum":
        checksum_path(path).unlink()
    elif damage == "truncated, checksum matching":
        path.write_bytes(_truncate(data))
        checksum_path(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  checkpoint.pt\n")
    else:
        path.write_bytes(damage(data))
        assert path.read_bytes() != data
    before = _snapshot(finished_run)
    assert main(["train", "--out", str(finished_run), "--resume", "--epochs", "2"]) == 2
    err = _one_line_error(capsys)
    assert needle in err and str(path) in err
    assert _snapshot(finished_run) == before


def test_every_bit_flip_is_caught(finished_run):
    """Whatever byte it hits (tensor data, pickle, zip headers, padding), a flipped bit is refused."""
    path = finished_run / "model_best.pt"
    data = path.read_bytes()
    for i in random.Random(3).sample(range(len(data)), 40):
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:])
        with pytest.raises(CorruptFileError, match="does not match its checksum"):
            load_checkpoint(path)


# --- every bad value a one-line error, nothing written ---------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--set", "dataset_options=[1,2"], "--set 'dataset_options=[1,2': the value is not valid YAML"),
    (["--set", "seed=abc"], "config key 'seed' must be an int, got 'abc'"),
    (["--set", "epochs=abc"], "config key 'epochs' must be an int, got 'abc'"),
    (["--set", "augment=maybe"], "config key 'augment' must be a bool (true or false), got 'maybe'"),
    (["--set", "batch_size=1.5"], "config key 'batch_size' must be an int, got 1.5"),
    (["--lr", "nan"], "config key 'lr' must be finite, got nan"),
    (["--set", "dataset_options=[1, 2]"], "config key 'dataset_options' must be a mapping"),
    (["--set", "noise_rate=.inf"], "config key 'noise_rate' must be finite"),
    (["--set", "method_options={meta_lr: .nan}"], "config key 'method_options' must be finite, got nan"),
    (["--set", "milestones=[1.5]"], "config key 'milestones' must be a list of ints"),
    (["--set", "threads=0"], "threads must be >= 1"),
    (["--set", "checkpoint_every=0"], "checkpoint_every must be >= 1"),
    (["--set", "seed.x=1"], "config key 'seed' must be an int"),
    (["--set", "a=1", "--set", "a.b=2"], "'a' was set to a value before"),
])
def test_bad_values_one_line_exit_2_nothing_written(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    for resume in ([], ["--resume"]):
        assert main(["train", *BASE, "--epochs", "1", *args, "--out", str(out), *resume]) == 2
        assert needle in _one_line_error(capsys)
        assert not out.exists()


def test_bad_config_files_are_one_line_errors(tmp_path, capsys):
    cases = {"syntax.yaml": ("epochs: [1,\n", "is not valid YAML: "), "type.yaml": ("augment: maybe\n", "augment"),
             "keys.yaml": ("1: 2\n", "config keys are names"), "list.yaml": ("- 1\n", "must hold a mapping")}
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["train", "--config", str(tmp_path / name), "--out", str(tmp_path / "run")]) == 2
        assert needle in _one_line_error(capsys), name
    assert not (tmp_path / "run").exists()


def test_resume_reads_a_checked_config_yaml(finished_run, capsys):
    (finished_run / "config.yaml").write_text((finished_run / "config.yaml").read_text() + "lr: .nan\n")
    assert main(["train", "--out", str(finished_run), "--resume"]) == 2
    assert "config.yaml: config key 'lr' must be finite" in _one_line_error(capsys)
