"""``--resume``: what may change when a run continues, and the checkpoint it continues from.

A run folder's ``config.yaml`` (and its checkpoint's copy of the config) say what was trained.
Resuming may change only what cannot change the result (:data:`SAFE_ON_RESUME`), and ``epochs``
only upwards; any other difference is refused, naming the keys. A folder without a checkpoint
(a run killed before its first one) starts afresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from famus.train.checkpoint import CHECKPOINT, CorruptFileError, load_checkpoint
from famus.train.config import TrainConfig, from_dict, load_config
from famus.train.lock import LOCK_FILE
from famus.verified import is_temporary

CONFIG_FILE = "config.yaml"
# keys a resumed run may change: the run folder, where and how fast it runs, what it logs, how often
# it saves (epochs separately: longer only)
SAFE_ON_RESUME = frozenset({"out", "resume", "threads", "device", "progress", "metrics_format", "tensorboard",
                            "log_every", "log_quality", "track_every", "checkpoint_every", "dist_timeout_s"})


def run_config(run_dir: str | Path) -> TrainConfig | None:
    """The config in ``run_dir/config.yaml``, checked; ``None`` if there is none.

    Raises:
        ValueError: the file is not a valid config (the message names it).
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return load_config(path).validate()
    except ValueError as e:
        raise ValueError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_resume(cfg: TrainConfig, saved: TrainConfig, source: Path) -> None:
    """Refuse ``cfg`` if it differs from the run's ``saved`` config in anything but safe keys.

    Raises:
        ValueError: one line naming each changed key with its old and new value.
    """
    new, old = cfg.to_dict(), saved.to_dict()
    changed = [k for k in old if k not in SAFE_ON_RESUME and k != "epochs" and new[k] != old[k]]
    if changed:
        diff = ", ".join(f"{k} {_show(old[k])} -> {_show(new[k])}" for k in changed)
        raise ValueError(f"--resume: {source} was trained with other settings ({diff}); a resumed run may change "
                         "only epochs (longer), threads, device, progress, logging and checkpoint_every: drop those "
                         "flags, or start a new run with another --out")
    if cfg.epochs < saved.epochs:
        raise ValueError(f"--resume: epochs can only grow ({source} has {saved.epochs}, got {cfg.epochs}); pass "
                         f"--epochs {saved.epochs} or more")


def check_resumable_folder(run_dir: Path) -> None:
    """A folder to resume holds a run (``config.yaml``), or nothing but temporaries; refuse anything else."""
    if not run_dir.is_dir() or (run_dir / CONFIG_FILE).exists():
        return
    if any(not is_temporary(p) and p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise ValueError(f"--resume: {str(run_dir)!r} holds files but no {CONFIG_FILE}, so it is not a famus run "
                         "folder; choose another --out")


def resume_checkpoint(cfg: TrainConfig, run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint ``cfg`` continues from, after checking ``cfg`` against it; ``None``: start afresh.

    Without a checkpoint (killed before the first one) the run starts afresh, but ``cfg`` must
    still match the folder's ``config.yaml``, if any.

    Raises:
        CorruptFileError: the checkpoint fails its checksum, cannot be loaded safely, or holds a bad config.
        ValueError: ``cfg`` changes something a resumed run may not.
    """
    path = run_dir / CHECKPOINT
    if not path.exists():
        saved = run_config(run_dir)
        if saved is not None:
            check_resume(cfg, saved, run_dir / CONFIG_FILE)
        return None
    ck = load_checkpoint(path)
    try:
        saved = from_dict(ck["config"]).validate()
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CorruptFileError(f"{path} holds no valid config ({e})") from None
    check_resume(cfg, saved, path)
    return ck
