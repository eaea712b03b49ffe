"""Per-example clean scores, for the list of likely mislabeled examples (``example_scores.csv``).

* Meta-weighting methods (MW-Net, L2R): the meta model's weight of the example, as a running mean
  over its visits. At each visit the weight is taken relative to the uniform one, ``c_i * B``
  (``B`` the global batch size: 1.0 is an average example), and folded into an exponential moving
  average over visits (``decay``, :attr:`TrainConfig.score_decay`; the first visit sets it). It is
  tracked on the device: each step scatters the batch's weights into an ``(N,)`` tensor, with no
  host sync; the moving average is updated once per epoch (every example is visited at most once
  per epoch), which is also where several processes combine their shards (one all-reduce).
* Pseudo-clean co-training: the GMM's clean probability (see :mod:`famus.train.pseudo`).
* ERM and MLC (uniform weights): the final model's probability of the given label.

At the end of a run, ``suspects.npz`` keeps the lowest-scored examples (with thumbnails of images) for
``famus report``, which then needs no dataset.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famus import distributed as dist
from famus.data import Augmenter

if TYPE_CHECKING:
    from famus.train.data import RunData

SUSPECTS_FILE = "suspects.npz"
SUSPECTS = 64  # lowest-scored examples kept in suspects.npz
THUMBNAIL = 64  # their images' long side at most, in pixels
WEIGHT_SCORED = ("mwnet", "l2r")  # methods whose per-example weights say which labels look clean


def score_source(method: str, meta_set: str = "clean") -> str:
    """What the clean score of a run is: ``gmm_clean_probability``, ``meta_weight`` or ``prob_given_label``."""
    if meta_set == "pseudo":
        return "gmm_clean_probability"
    return "meta_weight" if method in WEIGHT_SCORED else "prob_given_label"


class ScoreTracker:
    """Running mean over visits of each training example's relative meta weight ``c_i * B``.

    Args:
        n: number of training examples N.
        device: where the ``(N,)`` tensors live (the training device).
        decay: weight of the previous mean at each new visit, in ``[0, 1)``.
    """

    def __init__(self, n: int, device: torch.device | str, decay: float = 0.5) -> None:
        self.decay = decay
        self.score = torch.full((n,), math.nan, dtype=torch.float32, device=device)
        self.visits = torch.zeros(n, dtype=torch.int32, device=device)
        self._epoch = torch.full((n,), math.nan, dtype=torch.float32, device=device)

    def visit(self, idx: Tensor, weights: Tensor, batch_size: int) -> None:
        """Record one step: ``idx`` ``(b,)`` distinct example indices, ``weights`` ``(b,)`` their coefficients
        ``c_i`` of the (global) batch of ``batch_size`` examples. No host sync."""
        self._epoch[idx] = weights.detach().float() * batch_size

    def end_epoch(self) -> None:
        """Fold the epoch's visits into the moving average (all-reduces the epoch's weights over processes)."""
        seen = ~torch.isnan(self._epoch)
        weights = torch.where(seen, self._epoch, torch.zeros_like(self._epoch))
        if dist.is_distributed():  # each example was visited by at most one process this epoch
            weights, count = dist.sum_over_ranks([weights, seen.float()])
            seen = count > 0
        first = seen & (self.visits == 0)
        mixed = self.decay * self.score + (1 - self.decay) * weights
        self.score = torch.where(first, weights, torch.where(seen, mixed, self.score))
        self.visits += seen.int()
        self._epoch.fill_(math.nan)

    def state_dict(self) -> dict[str, Any]:
        """The scores, and the visits of the epoch under way (a mid-epoch checkpoint resumes them)."""
        return {"score": self.score.cpu(), "visits": self.visits.cpu(), "decay": self.decay,
                "epoch": self._epoch.cpu()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.score = state["score"].to(self.score.device)
            self.visits = state["visits"].to(self.visits.device)
            if state.get("epoch") is not None:
                self._epoch = state["epoch"].to(self._epoch.device)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, y: Tensor, augmenter: Augmenter, batch_size: int) -> tuple[Tensor, Tensor]:
    """Eval-mode predictions on un-augmented examples.

    Args:
        x: ``(N, C, H, W)`` examples (uint8 images or float features); y: ``(N,)`` given labels.

    Returns:
        ``(predicted (N,) int64, probability of the given label (N,) float32)``, on the CPU.
    """
    was = model.training
    model.eval()
    preds, probs = [], []
    for i in range(0, x.shape[0], batch_size):
        p = F.softmax(model(augmenter.normalize(x[i : i + batch_size])).float(), dim=1)
        preds.append(p.argmax(1).cpu())
        probs.append(p.gather(1, y[i : i + batch_size, None]).squeeze(1).cpu())
    model.train(was)
    return torch.cat(preds), torch.cat(probs)


def finish_scores(run_dir: Path, data: RunData, predicted: Tensor, score: Tensor, source: str) -> dict[str, Any]:
    """Write ``example_scores.csv`` and ``suspects.npz``, and measure the scores against the injected noise,
    where there is some.

    Args:
        predicted: ``(N,)`` the final model's predicted labels; score: ``(N,)`` clean scores (CPU or device).
        source: what the score is (:func:`score_source`).

    Returns:
        ``{"clean_score": source}``; ``"data_root"``: the absolute folder the ``path`` column is relative to
        (datasets of files); ``"label_issues"``: :func:`famus.issues.detection_quality` when the run injected
        noise (AUROC and precision at N of the clean score against the known corrupted labels).
    """
    from famus.issues import SCORES_FILE, detection_quality, write_scores

    score_np = score.detach().float().cpu().numpy()
    pred_np = predicted.cpu().numpy()
    write_scores(run_dir / SCORES_FILE, data.train_index.cpu().numpy(), data.train_paths,
                 data.train_y.cpu().numpy(), pred_np, score_np, data.class_names)
    write_suspects(run_dir / SUSPECTS_FILE, data, pred_np, score_np)
    out: dict[str, Any] = {"clean_score": source}
    root = data_root(run_dir) if data.train_paths is not None else None
    if root is not None:
        out["data_root"] = root
    if data.noise_known:
        out["label_issues"] = detection_quality(score_np, data.corrupted.cpu().numpy())
    return out


def data_root(run_dir: Path) -> str | None:
    """The absolute data root of the run (its ``config.yaml``'s ``data_dir``, resolved now: during the run,
    from the folder it was started in); the current folder when ``data_dir`` is unset (list files)."""
    from famus.yamlload import safe_load

    try:
        cfg = safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, ValueError):
        return None
    data_dir = cfg.get("data_dir") if isinstance(cfg, dict) else None
    return str(Path(os.path.expanduser(str(data_dir or "."))).resolve())


def write_suspects(path: Path, data: RunData, predicted: np.ndarray, score: np.ndarray, k: int = SUSPECTS,
                   size: int = THUMBNAIL) -> None:
    """``suspects.npz``: the ``k`` lowest-scored training examples, so ``famus report`` needs no dataset.

    Arrays (no pickle): ``index``, ``given``, ``predicted`` (int64), ``score`` (float64), ``path`` (str),
    and for images ``images``: uint8 ``(k, h, w, C)`` thumbnails, the long side at most ``size`` pixels.
    Feature datasets get no ``images`` (the report shows their rows).
    """
    from famus.atomic import atomic_write_bytes

    s = np.where(np.isfinite(score), score, np.inf)
    order = np.argsort(s, kind="stable")[:k]
    order = order[np.isfinite(score[order])]
    arrays: dict[str, np.ndarray] = {
        "index": data.train_index.cpu().numpy()[order].astype(np.int64),
        "given": data.train_y.cpu().numpy()[order].astype(np.int64),
        "predicted": np.asarray(predicted)[order].astype(np.int64),
        "score": np.asarray(score, dtype=np.float64)[order],
        "path": np.array([data.train_paths[i] for i in order] if data.train_paths else [""] * len(order), dtype=str),
    }
    x = data.train_x[torch.as_tensor(order, dtype=torch.long, device=data.train_x.device)]
    if x.dtype == torch.uint8 and x.dim() == 4 and len(order):
        h, w = x.shape[-2:]
        if max(h, w) > size:  # a thumbnail: the long side at most `size` pixels
            scale = size / max(h, w)
            x = F.interpolate(x.float(), size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
            x = x.round().clamp(0, 255).to(torch.uint8)
        arrays["images"] = x.permute(0, 2, 3, 1).cpu().numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
