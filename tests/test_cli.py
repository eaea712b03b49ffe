"""The command line in scripts and shells: progress lines, logging, --quiet, --version, --help defaults, Ctrl-C."""

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import famus
from famus.cli import TRAIN_FLAGS, build_parser, config_defaults, main, resume_hint
from famus.meta.recipe import default_recipe
from famus.progress import LineProgress, progress
from famus.train.checkpoint import load_checkpoint
from famus.train.loop import _Run

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--dataset", "digits", "--model", "mlp", "--meta-per-class", "10", "--batch-size", "64", "--epochs", "2",
       "--noise", "symmetric", "--noise-rate", "0.4"]


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# --- progress ------------------------------------------------------------------------------------------------

def test_line_progress_prints_one_line_per_postfix_and_nothing_per_update(capsys):
    bar = LineProgress(total=40, initial=0, desc="mwnet/fd", per_epoch=20)
    for _ in range(10):
        bar.update(1)
    assert capsys.readouterr().err == ""
    bar.set_postfix({"loss": "0.5000", "lr": "0.1"})
    bar.update(15)
    bar.set_postfix({"test_acc": "0.9"})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "\r" not in "".join(lines)
    assert lines[0].startswith("mwnet/fd: epoch 1/2, step 10/40 (25%), ") and lines[0].endswith("loss=0.5000, lr=0.1")
    assert "it/s, ETA " in lines[0]
    assert lines[1].startswith("mwnet/fd: epoch 2/2, step 25/40 (62%)") and lines[1].endswith("test_acc=0.9")
    silent = LineProgress(total=4, enabled=False)
    silent.update(2)
    silent.set_postfix({"loss": "1"})
    assert silent.n == 2 and capsys.readouterr().err == ""


class _Terminal:
    def __init__(self, tty):
        self.tty, self.text = tty, []

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text.append(s)

    def flush(self):
        pass


def test_a_bar_on_a_terminal_lines_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal(True))
    bar = progress(10, 0, "erm", 5)
    assert type(bar).__name__ == "tqdm"
    bar.close()
    monkeypatch.setattr(sys, "stderr", _Terminal(False))
    assert isinstance(progress(10, 0, "erm", 5), LineProgress)


def test_train_into_a_file_writes_one_line_per_log_window(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *RUN, "--method", "mwnet", "--set", "log_every=5", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    iters = _records(out)[0]["step"]  # steps per epoch (one network)
    windows = -(-iters // 5)  # every 5 steps and at the epoch's end
    assert lines[0].startswith("famus: injecting symmetric label noise at rate 0.4: ")
    progress_lines = lines[1:]
    assert len(progress_lines) == 2 * (windows + 1), lines  # and one per epoch end
    assert all(x.startswith(f"mwnet/{default_recipe('mwnet').engine}: epoch ") for x in progress_lines)
    epoch_end = progress_lines[windows]
    assert f"epoch 1/2, step {iters}/{2 * iters} (50%), " in epoch_end and "test_acc=" in epoch_end


def test_quiet_keeps_only_warnings_on_stderr_and_the_result_on_stdout(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import fails: famus warns
    assert main(["train", *RUN, "--quiet", "--tensorboard", "--out", str(tmp_path / "q")]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "famus: warning: tensorboard is not installed; pip install tensorboard to log there"]
    assert "test accuracy of the chosen model" in captured.out
    assert not logging.getLogger("famus").handlers  # the command's handler is gone with it


def test_the_library_logs_through_the_famus_loggers_and_adds_no_handler(tmp_path, caplog):
    root_handlers = list(logging.getLogger().handlers)
    caplog.set_level(logging.INFO, logger="famus")
    famus.train.train({"dataset": "digits", "model": "mlp", "meta_per_class": 10, "epochs": 1, "method": "erm",
                       "noise": "pair", "noise_rate": 0.2, "progress": False, "out": str(tmp_path / "lib")})
    noise = [r for r in caplog.records if r.name == "famus.train.loop"]
    assert len(noise) == 1 and noise[0].levelno == logging.INFO and "pair label noise" in noise[0].getMessage()
    assert not logging.getLogger("famus").handlers and logging.getLogger().handlers == root_handlers


def test_enable_shows_famus_messages_one_line_each(capsys):
    handler = famus.log.enable()
    assert famus.log.enable() is handler  # no second handler, no doubled lines
    try:
        logging.getLogger("famus.somewhere").info("two\nlines")
        logging.getLogger("famus.somewhere").warning("careful")
        logging.getLogger("other").warning("not ours")  # Python's last resort shows it, not famus's handler
    finally:
        logging.getLogger("famus").removeHandler(handler)
        logging.getLogger("famus").setLevel(logging.NOTSET)
    assert capsys.readouterr().err.splitlines()[:2] == ["famus: two lines", "famus: warning: careful"]


# --- --version and --help --------------------------------------------------------------------------------------

def test_version_names_famus_and_torch(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == (f"famus {famus.__version__} (torch {torch.__version__}, "
                                       f"Python {sys.version.split()[0]})\n")


def _subcommands():
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return action.choices


def _helps(parser):
    """Option -> its help text as ``--help`` prints it (defaults expanded), whatever the line wrapping."""
    formatter = parser._get_formatter()
    return {a.option_strings[-1]: formatter._expand_help(a) for a in parser._actions if a.option_strings and a.help}


def test_train_help_shows_each_flags_config_default():
    helps = _helps(_subcommands()["train"])
    defaults = config_defaults()
    for flag, key, _type, _help in TRAIN_FLAGS:
        if defaults[key] is None:
            assert "(default: " in helps[flag], flag  # what unset means, said by the help text
        else:
            assert helps[flag].endswith(f"(default: {defaults[key]})"), (flag, helps[flag])
    assert helps["--lr"].endswith(f"(default: {famus.train.TrainConfig().lr})")
    assert "(default: runs/run)" in _subcommands()["train"].format_help()  # and --help prints them


def test_every_command_shows_its_defaults():
    for name, parser in _subcommands().items():
        helps = _helps(parser)
        assert "--quiet" in helps, name
        for action in parser._actions:
            d = action.default
            if not action.option_strings or d is None or d is False or d == [] or d == argparse.SUPPRESS:
                continue
            assert "(default: " in helps[action.option_strings[-1]], (name, action.option_strings)


# --- Ctrl-C --------------------------------------------------------------------------------------------------

def test_ctrl_c_prints_the_resume_command_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    save = _Run.save

    def save_then_interrupt(self, epoch_done, *args, **kwargs):
        save(self, epoch_done, *args, **kwargs)
        if epoch_done == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(_Run, "save", save_then_interrupt)
    assert main(["train", *RUN, "--no-progress", "--out", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"famus train: interrupted; the last checkpoint is kept in {out / 'checkpoint.pt'}; resume with: "
        f"famus train --out {out} --resume")
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1  # whole, and verified
    monkeypatch.setattr(_Run, "save", save)
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert [r["epoch"] for r in _records(out)] == [1, 2]


def test_ctrl_c_before_anything_was_written(tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("famus.train.loop.prepare_data", interrupt)
    out = tmp_path / "with space"
    assert main(["train", *RUN, "--out", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == ("famus train: interrupted; nothing was written yet; run "
                                                        "the same command again")
    assert not out.exists()


def test_resume_hint_quotes_the_folder(tmp_path):
    out = tmp_path / "with space"
    out.mkdir()
    (out / "config.yaml").write_text("epochs: 1\n")
    assert resume_hint(str(out)) == (f"no checkpoint yet; start the run again from its config.yaml with: famus "
                                     f"train --out '{out}' --resume")


@pytest.mark.slow
def test_sigint_exits_130_with_the_resume_command(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "famus", "train", *RUN[:-6], "--epochs", "400", "--threads", "1",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            # a shell's background job (`cmd &`) inherits SIGINT ignored: Ctrl-C as at a terminal
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # 400 epochs: the run cannot end first, however loaded the machine
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert err.splitlines()[-1] == (f"famus train: interrupted; the last checkpoint is kept in {out / 'checkpoint.pt'}"
                                    f"; resume with: famus train --out {out} --resume")
    assert "Traceback" not in err
    load_checkpoint(out / "checkpoint.pt")
