"""Code the distributed tests run in child processes (importable without pytest).

``run_case`` runs K meta steps of one configuration, either in one process on the union batch or
on one rank of a 2-process gloo group on that rank's shard; ``spawn_worker`` is the
``torch.multiprocessing.spawn`` entry point; ``failing_model`` is a ``--model`` factory that raises
on rank 1 at a chosen forward pass (``FAMUS_TEST_FAIL_AT``).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.nn.functional as F
from torch import nn

STEPS = 3  # K
N, M = 8, 6  # union training and meta batch sizes (2 ranks: shards of 4 and 3)
CLASSES = 3

# name -> learner settings (every registered engine appears: test_distributed checks it); "bn": "sync"
# (SyncBatchNorm, compared with plain BN on the union batch) or "rank" (per-rank statistics, compared
# with a BN that normalizes each half of the batch apart)
CASES: dict[str, dict] = {
    "mwnet-exact-sync": dict(method="mwnet", engine="exact", bn="sync"),
    "mwnet-famus-sync": dict(method="mwnet", engine="famus", bn="sync", engine_options=dict(k=2)),
    "mwnet-jvp-sync": dict(method="mwnet", engine="jvp", bn="sync"),
    "mwnet-exact-rank": dict(method="mwnet", engine="exact", bn="rank"),
    "mwnet-famus-rank": dict(method="mwnet", engine="famus", bn="rank", engine_options=dict(k=2)),
    "mwnet-jvp-rank": dict(method="mwnet", engine="jvp", bn="rank"),
    "mwnet-famus-jvp-sync": dict(method="mwnet", engine="famus-jvp", bn="sync", engine_options=dict(k=2)),
    "mwnet-jvp-lagged-sync": dict(method="mwnet", engine="jvp", bn="sync", learner=dict(lagged=True)),
    "mwnet-exact-noreuse-rank": dict(method="mwnet", engine="exact", bn="rank", learner=dict(reuse_forward=False)),
    "mwnet-unnormalized-exact-sync": dict(method="mwnet", engine="exact", bn="sync",
                                          method_options=dict(normalize=False)),
    "l2r-exact-sync": dict(method="l2r", engine="exact", bn="sync"),
    "l2r-jvp-rank": dict(method="l2r", engine="jvp", bn="rank"),
    "mlc-jvp-sync": dict(method="mlc", engine="jvp", bn="sync", method_options=dict(num_classes=CLASSES)),
    # central differences divide rounding differences by the step (~6e-6): looser tolerances
    "mwnet-fd-sync": dict(method="mwnet", engine="fd", bn="sync", fd=True),
    "mwnet-famus-fd-rank": dict(method="mwnet", engine="famus-fd", bn="rank", engine_options=dict(k=2), fd=True),
    "mwnet-random-sync": dict(method="mwnet", engine="random", bn="sync", engine_options=dict(s=2)),
    "mwnet-block-rank": dict(method="mwnet", engine="block", bn="rank", engine_options=dict(layers=["3", "6"])),
    # amortized meta updates and the meta warm-up: the ordinary steps between are collective too
    "mwnet-fd-every-sync": dict(method="mwnet", engine="fd", bn="sync", fd=True,
                                learner=dict(meta_every=2, meta_warmup=1)),
    "l2r-exact-every-rank": dict(method="l2r", engine="exact", bn="rank", learner=dict(meta_every=2)),
    # the default recipe: auto (rank 0's timed choice on every rank), dense meta updates, then sparse
    "mwnet-auto-dense-sync": dict(method="mwnet", engine="auto", bn="sync", fd=True,
                                  learner=dict(meta_every=3, meta_dense=2, meta_warmup=1)),
}


class HalvesBatchNorm(nn.BatchNorm1d):
    """Training-mode BN over each half of the batch apart: one process doing what 2 ranks with
    per-rank statistics do (running statistics are not compared)."""

    def forward(self, x):
        if not self.training or x.shape[0] < 4:  # eval, or the learner's 2-example layer trace
            return super().forward(x)
        return torch.cat([F.batch_norm(h, self.running_mean, self.running_var, self.weight, self.bias, True,
                                       self.momentum, self.eps) for h in x.chunk(2)])


def make_model(halves: bool = False) -> nn.Module:
    """A float64 chain with two BN layers (stages for the forward-mode engines' cached activations)."""
    torch.manual_seed(0)
    bn = HalvesBatchNorm if halves else nn.BatchNorm1d
    return nn.Sequential(nn.Linear(5, 8), bn(8), nn.ReLU(), nn.Linear(8, 8), bn(8), nn.ReLU(),
                         nn.Linear(8, CLASSES)).double()


def batches(step: int):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(N, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    xm = torch.randn(M, 5, generator=g, dtype=torch.float64)
    ym = torch.randint(0, CLASSES, (M,), generator=g)
    return x, y, xm, ym


def run_case(name: str) -> dict:
    """K steps of case ``name``: in one process on the union batch, or on this rank's shard."""
    from famus import distributed as fdist
    from famus.meta import MetaLearner

    case = CASES[name]
    world, rank = fdist.world_size(), fdist.rank()
    model = make_model(halves=case["bn"] == "rank" and world == 1)
    if case["bn"] == "sync" and world > 1:
        model = fdist.convert_sync_batchnorm(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method_options = dict(case.get("method_options", {}))
    if case["method"] != "l2r":
        method_options.update(meta_lr=0.05)
    learner = MetaLearner(model, opt, case["method"], case["engine"], seed=3, **case.get("learner", {}),
                          method_options=method_options, engine_options=case.get("engine_options"))
    stats = []
    for step in range(STEPS):
        x, y, xm, ym = batches(step)
        if world > 1:
            s, sm = slice(rank * N // world, (rank + 1) * N // world), slice(rank * M // world, (rank + 1) * M // world)
            x, y, xm, ym = x[s], y[s], xm[sm], ym[sm]
        st = learner.step(x, y, xm, ym)
        stats.append({"train_loss": st.train_loss, "meta_loss": st.meta_loss, "weights": st.weights,
                      "gates": {k: float(v) for k, v in (st.gates or {}).items()}})
    # the learner's state-free evaluations on the last batch (collective too)
    grads = learner.meta_gradient(x, y, xm, ym, include_samplers=True)
    out = {"params": {k: v.detach().clone() for k, v in model.named_parameters()}, "stats": stats,
           "meta_gradient": grads, "meta_loss": learner.meta_loss(x, y, xm, ym)}
    if learner.meta_model is not None:
        out["meta"] = {k: v.detach().clone() for k, v in learner.meta_model.named_parameters()}
    samplers = learner.engine.parameters()
    if samplers:
        out["samplers"] = [p.detach().clone() for p in samplers]
    return out


def helper_checks() -> dict:
    """famus.distributed's helpers on 2 ranks: averages, sums, broadcasts, agreement on errors."""
    from famus import distributed as fdist

    r = fdist.rank()
    out: dict = {}
    bn = nn.BatchNorm1d(2)
    bn.running_mean.fill_(float(r))
    fdist.average_buffers_(bn)
    out["averaged"] = bn.running_mean.clone()
    out["sums"] = fdist.sum_over_ranks([torch.tensor([1.0, r]), None, torch.tensor(r, dtype=torch.float64)])
    t = torch.tensor([float(r + 5)])
    fdist.broadcast_([t])
    out["broadcast"] = t
    g = torch.Generator().manual_seed(r)
    fdist.sync_generator_(g)
    out["draw"] = torch.rand(3, generator=g)
    try:
        with fdist.agree_on_errors():
            if r == 1:
                raise ValueError("bad input on rank 1")
        out["agree"] = None
    except Exception as e:
        out["agree"] = f"{type(e).__name__}: {e}"
    return out


def spawn_worker(rank: int, store: str, out_dir: str, names: list[str], train_config: dict | None = None) -> None:
    """One rank of the 2-process gloo group: runs every case (and ``famus.train`` on ``train_config``
    inside this process group) and saves ``rank<r>.pt``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results = {name: run_case(name) for name in names}
        results["helpers"] = helper_checks()
        if train_config is not None:
            from famus.train import train

            results["train"] = train(train_config)
    finally:
        dist.destroy_process_group()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


class _FailingNet(nn.Module):
    def __init__(self, net: nn.Module, fail_at: int) -> None:
        super().__init__()
        self.net = net
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x):
        if self.training and x.shape[0] > 2:  # training passes, not the 2-example layer trace
            self.calls += 1
            if self.calls == self.fail_at and os.environ.get("RANK") == "1":
                raise RuntimeError(f"injected failure on rank 1 at forward pass {self.calls}")
        return self.net(x)


def failing_model(num_classes: int = 10, in_channels: int = 1, input_size: int = 8) -> nn.Module:
    """famus's MLP that raises on rank 1 at its ``FAMUS_TEST_FAIL_AT``-th training forward pass."""
    from famus.models import mlp

    return _FailingNet(mlp(num_classes, in_channels, hidden=32, input_size=input_size),
                       int(os.environ.get("FAMUS_TEST_FAIL_AT", "0")))
