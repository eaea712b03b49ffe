"""A run folder's checks, its lock, and its first writes: ``config.yaml``, ``run.json``, ``classes.json``, the noisy
labels and the split."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import famus
from famus import distributed as dist
from famus.atomic import atomic_write_text
from famus.data import save_noisy_labels
from famus.train.config import TrainConfig
from famus.train.data import RunData
from famus.train.lock import LOCK_FILE, RunLock
from famus.train.resume import CONFIG_FILE, check_resumable_folder
from famus.verified import remove_stale_temporaries, save_verified


def code_version() -> str:
    """famus version plus the git commit of the source tree, when it is a checkout."""
    here = Path(famus.__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() if out.returncode == 0 else ""
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"{famus.__version__}+{commit}{'.dirty' if dirty else ''}" if commit else famus.__version__


def _check_path(run_dir: Path) -> None:
    """The run folder can be a folder here: it is one or can be created, and is writable."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {str(run_dir)!r} exists and is not a folder; choose another --out")
    try:
        str(run_dir).encode("utf-8")
    except UnicodeEncodeError:  # its name goes to summary.json and the printed summary
        raise ValueError(f"--out {ascii(str(run_dir))} is not valid UTF-8; choose a UTF-8 name") from None
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"cannot create --out {str(run_dir)!r}: {str(probe)!r} is a file; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {str(probe)!r} (for --out {str(run_dir)!r}); choose a writable --out")


def _check_contents(cfg: TrainConfig, run_dir: Path) -> None:
    """A new run needs an empty folder (but for a lock); a resumed one a run folder (or nothing yet)."""
    if cfg.resume:
        check_resumable_folder(run_dir)
    elif run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise ValueError(
            f"--out {str(run_dir)!r} already holds files; pass --resume to continue it or choose another --out"
        )


def check_out_dir(cfg: TrainConfig) -> Path:
    """Fail early, before anything is loaded or written, if the run folder is unusable."""
    run_dir = Path(cfg.out)
    _check_path(run_dir)
    _check_contents(cfg, run_dir)
    return run_dir


@contextmanager
def claim_out_dir(cfg: TrainConfig, lock: bool = True) -> Iterator[Path]:
    """:func:`check_out_dir` holding the folder's lock (:mod:`famus.train.lock`) for the whole block.

    The lock is taken before the folder's contents are checked and before anything is written, so no other
    process can start or resume a run there meanwhile; at the end it is released, and a folder it had to
    create is removed again if the run wrote nothing in it. ``lock=False`` (the other ranks of a
    multi-process run: rank 0 holds it) only checks.

    Raises:
        RunFolderLocked: another process holds the folder; ValueError, OSError: see :func:`check_out_dir`.
    """
    run_dir = Path(cfg.out)
    _check_path(run_dir)
    if not lock:
        _check_contents(cfg, run_dir)
        yield run_dir
        return
    with RunLock.acquire(run_dir):
        _check_contents(cfg, run_dir)
        yield run_dir


def start_run_folder(cfg: TrainConfig, run_dir: Path, data: RunData, device: torch.device, resumed: bool,
                     step: int = 0, groups=None, group_rule=None) -> None:
    """The first writes of a run, once every check passed: stale temporaries go; a new run (or one
    resumed without a checkpoint) gets its header; a resumed one its updated ``config.yaml`` and a
    note in ``run.json``."""
    remove_stale_temporaries(run_dir)
    if not resumed:
        _write_run_header(cfg, run_dir, data, device, groups, group_rule)
        return
    atomic_write_text(run_dir / CONFIG_FILE, replace(cfg, resume=False).to_yaml())  # e.g. more epochs
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        info = {}
    resumes = info.get("resumed") if isinstance(info.get("resumed"), list) else []
    resumes.append({"step": step, "code_version": code_version(), "torch": torch.__version__, "device": str(device),
                    "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    info["resumed"] = resumes
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")


def note_run_info(run_dir: Path, **keys: Any) -> None:
    """Add ``keys`` to ``run.json`` (written atomically), e.g. what ``--meta-grad auto`` chose once it chose; a
    mapping is merged into the one already there (a resumed run keeps what the first process recorded)."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        info = {}
    new = {k: {**info[k], **v} if isinstance(v, dict) and isinstance(info.get(k), dict) else v for k, v in keys.items()}
    if all(info.get(k) == v for k, v in new.items()):
        return
    info.update(new)
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")


def _write_run_header(cfg: TrainConfig, run_dir: Path, data: RunData, device: torch.device, groups=None,
                      group_rule=None) -> None:
    """config.yaml, run.json (seed, code version, environment), noisy labels and the split."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, replace(cfg, resume=False).to_yaml())  # the run, not how it started
    run_info = {"seed": cfg.seed, "code_version": code_version(), "torch": torch.__version__,
                "python": platform.python_version(), "device": str(device), "threads": torch.get_num_threads(),
                "train_examples": int(data.train_x.shape[0]), "meta_examples": int(data.meta_x.shape[0]),
                "noise": cfg.noise, "realised_noise_rate": data.noise.rate,
                "meta_source": data.meta_source, "val_source": data.val_source,
                "val_examples": int(data.val_y.numel()) if data.val_y is not None else 0,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "class_counts": data.class_counts().tolist()}
    if groups is not None:
        run_info.update(class_groups=groups, group_rule=group_rule)
    if dist.is_distributed():
        run_info.update(world_size=dist.world_size(), backend=torch.distributed.get_backend())
    atomic_write_text(run_dir / "run.json", json.dumps(run_info, indent=2) + "\n")
    if data.class_names is not None:  # index -> class name (folder names, list-file names, ...)
        atomic_write_text(run_dir / "classes.json", json.dumps(data.class_names, indent=1) + "\n")
    save_noisy_labels(run_dir / "noisy_labels.pt", data.clean_y.cpu(), data.noise)
    save_verified(run_dir / "split.pt", {"train_index": data.train_index, "meta_index": data.meta_index,
                                         "meta_source": data.meta_source})
