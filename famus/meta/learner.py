"""``MetaLearner``: the three-stage meta-learning iteration for any ``nn.Module`` classifier."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from famus import distributed as dist
from famus.meta import checks, guard, precision
from famus.meta import inputs as io
from famus.meta.engines import DEFAULT_ENGINE, ENGINES, STAGES, Engine, MetaBatch, MetaResult, build_engine
from famus.meta.engines.base import StageTimer
from famus.meta.engines.virtual import virtual_train
from famus.meta.inputs import Inputs
from famus.meta.layers import LayerInfo, layer_infos
from famus.meta.methods import METHODS, MetaMethod, build_method
from famus.meta.options import option_names
from famus.meta.update import MetaUpdate, StepStats
from famus.meta.virtual_step import step_sizes, warn_if_unsupported

LAGGED_SUFFIX = "+lagged"


def _flat_options(options: dict, method: str | MetaMethod, meta_grad: str | Engine) -> tuple[dict, dict]:
    """Deprecated flat keywords, as ``(method_options, engine_options)``: each to the one that declares it.

    An option both declare (``hidden``) or neither declares is a ``TypeError``: pass it explicitly.
    """
    warnings.warn("MetaLearner(..., **options) is deprecated: pass method_options={...} and engine_options={...}",
                  DeprecationWarning, stacklevel=3)
    names = {"method": option_names(METHODS.get(method)) if isinstance(method, str) else [],
             "engine": option_names(ENGINES.get(meta_grad)) if isinstance(meta_grad, str) else []}
    out: dict[str, dict] = {"method": {}, "engine": {}}
    for key, value in options.items():
        owners = [k for k, valid in names.items() if key in valid]
        if len(owners) != 1:
            what = "both the method and the engine take" if owners else "unknown"
            raise TypeError(f"{what} option {key!r}: pass method_options={{...}} or engine_options={{...}}; "
                            f"valid method options: {', '.join(names['method']) or '(none)'}; "
                            f"valid engine options: {', '.join(names['engine']) or '(none)'}")
        out[owners[0]][key] = value
    return out["method"], out["engine"]


def _built(kind: str, spec, base: type, build, options: dict | None):
    """``spec`` itself when it is built already (then no options may be given), else ``build(spec, **options)``."""
    if isinstance(spec, base):
        if options:
            raise TypeError(f"{kind}_options {sorted(options)} given, but the {kind} is already built")
        return spec
    return build(spec, **(options or {}))


class MetaLearner:
    """Meta-learning for any classifier: Virtual-Train, Meta-Train, Actual-Train (Eq. 3-5).

    Args:
        model: any ``nn.Module`` mapping ``(n, ...)`` inputs to ``(n, C)`` logits. It needs no
            famus code: the virtual and meta passes use ``torch.func.functional_call``. Inputs may
            be a tensor (``model(x)``), a tuple of tensors (``model(*x)``) or a dict of tensors
            (``model(**x)``, e.g. ``input_ids`` and ``attention_mask``), batch dimension first; the
            output may be the logits or an object holding them as ``.logits`` (:mod:`famus.meta.inputs`).
        optimizer: the base model's optimizer. The virtual step follows it: plain SGD at its current
            learning rate alpha, or for Adam/AdamW ``lr / (sqrt(v_hat) + eps)`` elementwise with its
            current second moment (see :mod:`famus.meta.virtual_step`; other optimizers: SGD, with a warning).
        method: ``"mwnet"``, ``"l2r"`` or ``"mlc"`` (see ``famus.meta.methods.METHODS``), or a ``MetaMethod``.
        meta_grad: engine name (``"fd"``, the default: the exact meta gradient by one extra forward
            pass; ``"exact"``, ``"famus"``, ``"jvp"``, ``"famus-jvp"``, ``"famus-fd"``, ``"block"``,
            ``"random"``) or an ``Engine``. A ``"+lagged"`` suffix
            (e.g. ``"famus-fd+lagged"``) is the same as ``lagged=True``.
        seed: seed of the learner's own generator (gates, random layers).
        reuse_forward: Actual-Train reuses the Virtual-Train forward pass (on by default). The
            virtual forward ran in train mode at the same w on the same batch, so its logits and
            the BN statistics it produced are exactly those of a separate actual forward; the
            actual loss is backpropagated through the kept virtual graph (which stays alive
            during Meta-Train: more memory) and the statistics are copied back. It falls back to
            a separate forward by itself when the virtual forward drew random numbers (dropout).
        lagged: one-backward mode, off by default. Actual-Train steps with the weighted gradient
            Virtual-Train already computed, i.e. with the meta model's weights from BEFORE this
            iteration's meta update: Eq. 5 with a one-step delay (not the paper's algorithm).
            An iteration then costs one forward and backward on the training batch plus the
            meta-batch work. Needs meta parameters that persist across steps (MW-Net, not L2R).
        meta_every: update the meta parameters (meta model, FaMUS samplers) on every ``meta_every``-th
            step only; the steps between are ordinary steps weighted by the current meta model
            (one forward and backward; L2R, which keeps no meta parameters, weighs them uniformly).
        meta_dense: the first ``meta_dense`` steps after the warm-up update the meta parameters on every
            step whatever ``meta_every`` is: dense while the weighting forms, sparse once it has
            (``famus train``'s default recipe, :mod:`famus.meta.recipe`).
        meta_warmup: the first ``meta_warmup`` steps are ordinary, uniformly weighted steps with no
            meta update (docs/learning-quality.md: it skips the first steps' meta gradient, which points
            the wrong way while all features are alike).
        method_options: options of the method (e.g. ``meta_lr``, ``normalize``, ``hidden``, ``loss_fn``),
            given to it and only to it: ``build_method(method, **method_options)``.
        engine_options: options of the engine (e.g. ``k``, ``temperature``, ``candidates``, ``fd_eps``,
            ``hidden``), given to it and only to it: ``build_engine(meta_grad, **engine_options)``.
        **options: deprecated flat form (a ``DeprecationWarning``): each option goes to the one of the
            method and the engine that declares it; one both declare (``hidden``) is an error.

    The meta model moves to the model's device and dtype at construction; the engine (FaMUS's samplers)
    and MLC's transition matrix, sized by the model's class count, are built on the first batch (or :meth:`bind`).

    Data parallel: inside an initialized ``torch.distributed`` process group every rank builds the
    same learner and calls :meth:`step` with its own equal-sized shard of the training batch and of
    the meta batch; the result is the step on the union batch (see :mod:`famus.distributed`). On the
    first batch the model, meta model, samplers and generator are broadcast from rank 0, so every
    rank starts from the same state and draws the same random stream (gates, random layers).
    :meth:`bind`, :meth:`step`, :meth:`meta_gradient` and :meth:`meta_loss` are then collective:
    every rank calls them, in the same order.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        method: str | MetaMethod = "mwnet",
        meta_grad: str | Engine = DEFAULT_ENGINE,
        *,
        seed: int = 0,
        reuse_forward: bool = True,
        lagged: bool = False,
        meta_every: int = 1,
        meta_warmup: int = 0,
        meta_dense: int = 0,
        method_options: dict | None = None,
        engine_options: dict | None = None,
        **options,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        first = next((p for p in model.parameters() if p.requires_grad), None)
        if first is None:
            raise ValueError(f"{type(model).__name__} has no trainable parameters; famus needs a model to train")
        checks.check_optimizer(model, optimizer)  # one over another model would never change this one
        self.model = model
        self.optimizer = optimizer
        warn_if_unsupported(optimizer)
        if isinstance(meta_grad, str) and meta_grad.endswith(LAGGED_SUFFIX):
            meta_grad, lagged = meta_grad[: -len(LAGGED_SUFFIX)], True
        if options:
            flat_method, flat_engine = _flat_options(options, method, meta_grad)
            method_options = {**flat_method, **(method_options or {})}
            engine_options = {**flat_engine, **(engine_options or {})}
        self.method: MetaMethod = _built("method", method, MetaMethod, build_method, method_options)
        self.engine: Engine = _built("engine", meta_grad, Engine, build_engine, engine_options)
        self.engine_name = self.engine.name
        if lagged and not self.method.lagged_ok:
            raise ValueError(
                f"lagged mode needs meta parameters that persist across steps; {self.method.name!r} resets "
                "them every step, so its Virtual-Train gradient is not a training gradient"
            )
        if isinstance(meta_every, bool) or not isinstance(meta_every, int) or meta_every < 1:
            raise ValueError(f"meta_every must be an int >= 1, got {meta_every!r}")
        for key, value in (("meta_warmup", meta_warmup), ("meta_dense", meta_dense)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be an int >= 0, got {value!r}")
        self.meta_every, self.meta_warmup, self.meta_dense = meta_every, meta_warmup, meta_dense
        self.reuse_forward, self.lagged = bool(reuse_forward), bool(lagged)
        self.reused_forward = False  # whether the last step reused the virtual forward
        # the meta model, samplers and meta losses stay in this dtype (float32 for a 16-bit model)
        self.device, self.dtype = first.device, precision.master_dtype(first.dtype)
        self.method.bind(None, self.device, self.dtype)  # the class count comes with the first batch
        self.generator = torch.Generator().manual_seed(seed)
        self.layer_infos: list[LayerInfo] | None = None
        self.num_classes: int | None = None
        self._engines: dict[str, Engine] = {self.engine_name: self.engine}
        self.steps = 0
        self._shards_checked = False
        self._values_checked = False  # labels and input values: checked at once until a first batch passed
        self._late: guard.LateFlag | None = None  # then, on a GPU, without waiting for it (_check_values)

    # ------------------------------------------------------------------ helpers
    @property
    def meta_model(self) -> nn.Module | None:
        """The meta model (MW-Net's weighting MLP), or ``None`` for L2R."""
        return self.method.meta_model

    def _bind(self, x: Inputs) -> None:
        if self.layer_infos is not None:
            return
        # the model on the batch's first 2 examples: a failure is reported in terms of the user's batch
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            state = {**dict(self.model.named_parameters()), **self._buffers()}
            out = checks.model_output(self.model, state, x, 2)
        self.layer_infos = layer_infos(self.model, io.head(x, 2))
        self.num_classes = out.shape[1]
        self.method.bind(self.num_classes, self.device, self.dtype)
        self.engine.bind(self.layer_infos, self.device, self.dtype)
        if dist.is_distributed():  # every rank starts from rank 0's state (as DDP does)
            meta = self.meta_model
            dist.broadcast_([*self.model.parameters(), *self.model.buffers(), *self.engine.parameters(),
                             *(meta.parameters() if meta is not None else ())])
            dist.sync_generator_(self.generator)

    def _engine(self, name: str | None, layers: list[str] | None = None) -> Engine:
        if name is None:
            return self.engine
        name = name.removesuffix(LAGGED_SUFFIX)  # the lagged mode changes Actual-Train only
        if name == "block" and layers is not None:  # its one option is the layers meta_gradient fixes anyway
            return build_engine("block", layers=layers)
        if name not in self._engines:
            eng = build_engine(name)
            eng.bind(self.layer_infos, self.device, self.dtype)
            dist.broadcast_(eng.parameters())
            self._engines[name] = eng
        return self._engines[name]

    def _first_param(self) -> Tensor:
        return next(self.model.parameters())

    def _buffers(self) -> dict[str, Tensor]:
        # clones: BN in train mode writes running stats into whatever it is given
        return {n: b.clone() for n, b in self.model.named_buffers()}

    def _lrs(self) -> dict[str, float | Tensor]:
        """The virtual step's size per parameter: ``lr``, or Adam's preconditioned ``lr`` (:mod:`.virtual_step`)."""
        return step_sizes(self.optimizer, dict(self.model.named_parameters()))

    def _validate(self, x: Inputs, y: Tensor, x_meta: Inputs, y_meta: Tensor) -> None:
        for name, t in (("y", y), ("y_meta", y_meta)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        counts = {"x": io.check(x, "x"), "x_meta": io.check(x_meta, "x_meta")}
        for xn, ys, what in (("x", y, "training"), ("x_meta", y_meta, "meta")):
            soft = what == "training" and ys.dim() == 2 and ys.is_floating_point()
            if ys.dim() != 1 and not soft:
                raise ValueError(
                    f"{what} labels must be 1-D class indices"
                    + (" (or (n, C) float soft targets)" if what == "training" else "")
                    + f", got shape {tuple(ys.shape)}"
                )
            if counts[xn] != ys.shape[0]:
                raise ValueError(
                    f"mismatched {what} batch: inputs have {counts[xn]} examples but labels have {ys.shape[0]}"
                )
            if counts[xn] == 0:
                raise ValueError(f"the {what} batch is empty")
            if ys.dtype != torch.long and not soft:
                raise TypeError(f"{what} labels must be int64 (torch.long), got {ys.dtype}")
        if isinstance(x, Tensor) and isinstance(x_meta, Tensor) and x.dim() != x_meta.dim():
            raise ValueError(f"your batch x has {io.describe(x)} but x_meta {io.describe(x_meta)}: their examples "
                             "must have the same number of dimensions")
        self._bind(x)
        if not self._shards_checked and dist.is_distributed():
            sizes = [None] * dist.world_size()
            torch.distributed.all_gather_object(sizes, (io.batch_size(x), io.batch_size(x_meta)))
            if len(set(sizes)) > 1:
                raise ValueError(f"ranks hold shards of different sizes (training, meta): {sizes}; the union "
                                 "batch's step needs equal shards")
            self._shards_checked = True
        self._check_values(x, y, x_meta, y_meta)

    def _check_values(self, x: Inputs, y: Tensor, x_meta: Inputs, y_meta: Tensor) -> None:
        """Labels within the class count, and no NaN or infinite input values, without a host sync per step.

        Reading a device value waits for the device, so on a GPU the values are checked at once (labels,
        ``x`` and ``x_meta``) only until a first batch passed; from then on ``x``'s finiteness is or-ed into
        a device flag that is read when its copy to the host has arrived (:class:`~famus.meta.guard.LateFlag`):
        a non-finite batch is refused a step or two late, never silently trained on. On the CPU nothing
        waits: every batch's labels and ``x`` are checked at once. A non-finite ``x_meta`` is not refused
        (a warning on the first batch): it makes the meta gradient non-finite, and that meta update is
        skipped and counted (``meta_skipped``); it never reaches the model.
        """
        first = not self._values_checked
        if first or io.device_of(x).type != "cuda":
            checks.check_labels(y, y_meta, self.num_classes)
            checks.check_finite(x, "your batch x")
            if first:
                checks.check_finite(x_meta, "your meta batch x_meta", refuse=False)
            self._values_checked = True
            return
        if self._late is None:
            self._late = guard.LateFlag(io.device_of(x))
        self._late.add(io.nonfinite(x))
        if self._late.poll(self.steps + 1):
            raise ValueError(
                f"your batch x held NaN or infinite values in a step between steps {self._late.clean_until + 1} "
                f"and {self._late.copied_at} (on a GPU this is checked without waiting for the device, so it is "
                "reported late: those steps were taken, and the model's weights may no longer be finite). Replace "
                "or drop non-finite inputs before training (e.g. impute missing features)")

    def _batch(self, x, y, x_meta, y_meta, theta=None, keep_virtual=False) -> MetaBatch:
        return MetaBatch(
            model=self.model,
            params=dict(self.model.named_parameters()),
            buffers=self._buffers(),
            lrs=self._lrs(),
            x=x,
            y=y,
            x_meta=x_meta,
            y_meta=y_meta,
            method=self.method,
            theta=theta if theta is not None else self.method.meta_params(io.batch_size(x), self._first_param()),
            layers=self.layer_infos,
            keep_virtual=keep_virtual,
        )

    @contextmanager
    def _no_side_effects(self):
        """Keep the train mode, global RNG and learner generator as they were."""
        was_training = self.model.training
        gen_state = self.generator.get_state()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            try:
                yield
            finally:
                self.generator.set_state(gen_state)
                self.model.train(was_training)

    # ------------------------------------------------------------------ public API
    def meta_update(
        self, x: Inputs, y: Tensor, x_meta: Inputs, y_meta: Tensor, *, keep_forward: bool | None = None
    ) -> MetaUpdate:
        """Virtual-Train and Meta-Train (Eq. 3-4), meta model and samplers stepped; the model is not.

        For your own loop: compute logits, ``loss = update.loss(logits)``, then backward, clipping,
        gradient scaling and the optimizer step as you like (:meth:`step` does exactly that, plainly).
        A non-finite meta gradient is not applied (``update.meta_skipped`` is 1; L2R's weights are then
        zero).

        Args:
            x: training inputs ``(n, ...)`` (a tensor, or a tuple or dict of tensors); y: noisy labels
                ``(n,)`` int64 (or ``(n, C)`` float soft targets).
            x_meta: meta inputs ``(m, ...)``; y_meta: trusted labels ``(m,)`` int64.
            keep_forward: keep the Virtual-Train forward's graph so that :meth:`MetaUpdate.logits` can
                reuse it as the Actual-Train forward (more memory until the update is dropped);
                default: the learner's ``reuse_forward`` (and not ``lagged``).
        """
        self._validate(x, y, x_meta, y_meta)
        self.model.train()
        keep = (self.reuse_forward and not self.lagged) if keep_forward is None else bool(keep_forward)
        res: MetaResult = self.engine.compute(self._batch(x, y, x_meta, y_meta, keep_virtual=keep), self.generator)
        timer = StageTimer(self.device)
        self._reduce(res)
        skipped = self._apply(res)
        timer.mark("meta_backward")  # the meta optimizers' steps belong to Meta-Train
        self.steps += 1
        times = {s: res.times.get(s, 0.0) + timer.times.get(s, 0.0) for s in STAGES}
        return MetaUpdate(self, x, y, res, skipped, times)

    def _apply(self, res: MetaResult) -> Tensor:
        """The meta-optimizer and sampler steps (Eq. 4), skipped where the meta gradient is not finite.

        Returns:
            0-d float, 1.0 when skipped. ``res.meta_grads`` are zeroed then (no NaN reaches Actual-Train).
        """
        grads = [*res.meta_grads.values(), *(res.sampler_grads or {}).values()]
        ok = guard.all_finite(grads, self._first_param())
        if dist.is_distributed():  # L2R's per-example slices differ by rank: skip on all of them or none
            (share,) = dist.mean_over_ranks([ok.to(self.dtype)])
            ok = share == 1
        res.meta_grads = guard.zero_where_not(ok, res.meta_grads)
        if res.sampler_grads:
            res.sampler_grads = guard.zero_where_not(ok, res.sampler_grads)
        optimizers = [o for o in (self.method.meta_optimizer, *self.engine.optimizers()) if o is not None]

        def steps() -> None:
            self.method.apply(res.meta_grads)
            self.engine.apply(res)

        guard.guarded(optimizers, ok, steps)
        return (~ok).to(torch.float32)

    def meta_step_due(self) -> bool:
        """Whether the next :meth:`step` updates the meta parameters (``meta_warmup``, ``meta_dense``,
        ``meta_every``)."""
        k = self.steps - self.meta_warmup
        return k >= 0 and (k < self.meta_dense or (k - self.meta_dense) % self.meta_every == 0)

    def plain_step(self, x: Inputs, y: Tensor, *, scaler: torch.amp.GradScaler | None = None) -> StepStats:
        """An ordinary step, no meta update: uniform weights in the meta warm-up, else the current meta model's."""
        self._validate(x, y, x, y if y.dim() == 1 else y.argmax(1))
        self.model.train()
        timer = StageTimer(self.device)
        logits = io.forward(self.model, None, x)
        loss, c = precision.plain_loss(self.method, io.logits_of(logits), y, self.steps < self.meta_warmup,
                                       self.dtype)
        timer.mark("actual_forward")
        loss = self._actual_step(loss, scaler)
        timer.mark("actual_backward")
        self.steps += 1
        nan = loss.new_full((), float("nan")).detach()
        return StepStats(weights=c.detach(), train_loss=loss.detach(), meta_loss=nan, gates=None,
                         times={s: timer.times.get(s, 0.0) for s in STAGES}, meta_skipped=torch.zeros(()),
                         meta_updated=False)

    def step(self, x: Inputs, y: Tensor, x_meta: Inputs, y_meta: Tensor, *,
             scaler: torch.amp.GradScaler | None = None) -> StepStats:
        """One meta-learning iteration: :meth:`meta_update`, then Actual-Train (Eq. 5).

        With ``meta_every > 1`` or ``meta_warmup > 0``, the steps without a meta update are
        :meth:`plain_step` (``x_meta`` unused).

        Actual-Train: the method's loss on the Actual-Train logits (the reused Virtual-Train forward
        where possible), ``zero_grad``, backward and the optimizer step.

        Args:
            x: training inputs ``(n, ...)`` (a tensor, or a tuple or dict of tensors); y: noisy labels ``(n,)`` int64.
            x_meta: meta inputs ``(m, ...)``; y_meta: trusted labels ``(m,)`` int64.
            scaler: a ``torch.amp.GradScaler`` (float16 autocast): the backward and the optimizer step go
                through it (not in lagged mode, whose gradient comes from Virtual-Train unscaled).
        """
        if not self.meta_step_due():
            return self.plain_step(x, y, scaler=scaler)
        update = self.meta_update(x, y, x_meta, y_meta)
        timer = StageTimer(self.device)
        if self.lagged:
            loss, c = self._lagged_step(update._result)
            self.reused_forward = True
        else:
            logits = update.logits()
            loss, c = update.loss_and_weights(logits)
            timer.mark("actual_forward")
            loss = self._actual_step(loss, scaler)
        timer.mark("actual_backward")
        return update.stats(loss, c, timer.times)

    def _actual_step(self, loss: Tensor, scaler: torch.amp.GradScaler | None) -> Tensor:
        """``zero_grad``, backward, the optimizer step; returns the (union batch's) loss."""
        self.optimizer.zero_grad(set_to_none=True)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if dist.is_distributed():  # DDP-style: the union loss is the sum of the ranks' losses
            (loss,) = dist.reduce_gradients_(self.model.parameters(), [loss.detach()])
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)
            scaler.update()
        return loss

    def _actual_loss(self, logits: Tensor, y: Tensor, meta_grads: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The method's Actual-Train loss and coefficients ``(n,)`` on ``logits``."""
        return precision.actual_loss(self.method, logits, y, meta_grads, self.dtype)

    def _reduce(self, res: MetaResult) -> None:
        """In a process group: the union batch's meta gradients and meta loss, from the ranks' parts.

        Replicated meta parameters and samplers: the mean over ranks (the engines' convention, see
        :mod:`famus.distributed`); per-example ones (L2R's ``eps``): this rank's slice over the world size.
        """
        if not dist.is_distributed():
            return
        per_example = self.method.per_example
        shared = [n for n in res.meta_grads if n not in per_example]
        samplers = list(res.sampler_grads or {})
        tensors = [res.meta_grads[n] for n in shared] + [res.sampler_grads[n] for n in samplers] + [res.meta_loss]
        out = dist.mean_over_ranks(tensors)
        res.meta_grads.update(zip(shared, out[: len(shared)]))
        if samplers:
            res.sampler_grads = dict(zip(samplers, out[len(shared) : -1]))
        res.meta_loss = out[-1]
        for n in per_example:
            if n in res.meta_grads:
                res.meta_grads[n] = res.meta_grads[n] / dist.world_size()

    def _copy_buffers(self, buffers: dict[str, Tensor] | None) -> None:
        """Install the running statistics the Virtual-Train forward produced (BN moves once)."""
        if buffers is None:
            return
        with torch.no_grad():
            for n, b in self.model.named_buffers():
                b.copy_(buffers[n])

    def _lagged_step(self, res: MetaResult) -> tuple[Tensor, Tensor]:
        """Actual-Train with the Virtual-Train gradient (old meta weights): no forward, no backward."""
        vt = res.virtual
        if vt is None:
            raise RuntimeError(f"engine {self.engine_name!r} returns no Virtual-Train gradient; lagged mode needs it")
        self._copy_buffers(vt.buffers)
        self.optimizer.zero_grad(set_to_none=True)
        for n, p in self.model.named_parameters():
            g = vt.grads.get(n)
            p.grad = None if g is None else g.detach()
        self.optimizer.step()
        return vt.loss, vt.weights

    def meta_gradient(
        self,
        x: Tensor,
        y: Tensor,
        x_meta: Tensor,
        y_meta: Tensor,
        meta_grad: str | None = None,
        layers: list[str] | None = None,
        include_samplers: bool = False,
    ) -> dict[str, Tensor]:
        """The meta gradient at the current state, changing no state at all.

        Args:
            meta_grad: engine name (default: the learner's own engine).
            layers: when given, only these layers (names or module prefixes) contribute.
            include_samplers: also return FaMUS sampler gradients, keyed ``"sampler:<name>"``.

        Returns:
            Meta parameter name -> gradient (for L2R: ``{"eps": (n,)}``).
        """
        self._validate(x, y, x_meta, y_meta)
        engine = self._engine(meta_grad, layers)
        with self._no_side_effects():
            self.model.train()
            res = engine.compute(self._batch(x, y, x_meta, y_meta), self.generator, layers=layers)
            self._reduce(res)
        out = {k: v.detach() for k, v in res.meta_grads.items()}
        if include_samplers and res.sampler_grads:
            out.update({f"sampler:{k}": v.detach() for k, v in res.sampler_grads.items()})
        return out

    def meta_loss(
        self, x: Tensor, y: Tensor, x_meta: Tensor, y_meta: Tensor, meta_params: dict[str, Tensor] | None = None
    ) -> float:
        """``L_c``: the meta-batch loss after the virtual step, changing no state.

        Args:
            meta_params: optional override of the meta parameters (same names and shapes as
                :meth:`meta_gradient` returns), e.g. for finite-difference checks.
        """
        self._validate(x, y, x_meta, y_meta)
        with self._no_side_effects():
            self.model.train()
            theta = {k: v.detach() for k, v in self.method.meta_params(io.batch_size(x), self._first_param()).items()}
            if meta_params is not None:
                unknown = set(meta_params) - set(theta)
                if unknown:
                    raise ValueError(f"unknown meta parameters {sorted(unknown)}; valid: {sorted(theta)}")
                theta.update(meta_params)
            batch = self._batch(x, y, x_meta, y_meta, theta=theta)
            vt = virtual_train(batch, create_graph=False)
            with torch.no_grad():
                g = vt.grads
                w_hat = {n: p if g[n] is None else p - batch.lrs[n] * g[n] for n, p in batch.params.items()}
                out = io.forward(self.model, {**w_hat, **batch.buffers}, x_meta)
                (value,) = dist.mean_over_ranks([precision.meta_ce(out, y_meta, self.dtype)])
                return float(value)

    def state_dict(self) -> dict:
        """Meta model, meta optimizer, engine state (samplers) and the generator."""
        return {
            "method": self.method.state_dict(),
            "engine": self.engine.state_dict(),
            "generator": self.generator.get_state(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        if state.get("engine"):
            if self.layer_infos is None:
                raise RuntimeError("load_state_dict of a FaMUS learner needs one batch first: call learner.bind(x)")
            self.engine.load_state_dict(state["engine"])
        self.generator.set_state(state["generator"])
        self.steps = state.get("steps", 0)

    def bind(self, x: Tensor) -> None:
        """Trace the model's layers on an example batch ``x`` (done on the first step anyway)."""
        self._bind(x)
