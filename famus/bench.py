"""``famus bench``: every meta-gradient engine side by side, on the same batches, in one process.

For each engine it reports the six stages of the paper's Fig. 1b, the time per iteration (all
three stages), the ratio to an ERM step of the same model (forward, backward, optimizer step),
the speed-up over ``exact``, the peak memory of one iteration, and how close the engine's meta
gradient is to ``exact``'s on the same batch and state.

Engine specs are engine names with optional suffixes: ``+lagged`` (one-backward mode, see
:class:`~famus.meta.learner.MetaLearner`) and ``+noreuse`` (a separate Actual-Train forward
instead of reusing the Virtual-Train one), and optional engine options in brackets right after the
name, ``KEY=VALUE`` (YAML values) separated by ``;``: ``famus[lg_target=detached;gate_unit=tensor]+lagged``,
so variants of one engine run side by side. The spec ``default`` is what ``famus train`` runs when
no engine or schedule is named (:mod:`famus.meta.recipe`): its engine's meta step, and its cost
amortized over a run of ``steps`` steps (warm-up, dense meta updates, then every k-th step), with
the ordinary weighted step between meta updates timed beside the others.

>>> result = bench("resnet20", (3, 32, 32), 32, "mwnet", ["exact", "famus-fd"], repeats=2)  # doctest: +SKIP
>>> print(format_table(result))  # doctest: +SKIP

Command line: ``python -m famus.bench --model resnet32 --input-shape 3,32,32 --batch-size 100
--method mwnet --engines exact,famus,jvp,fd,famus-fd,famus-fd+lagged --repeats 5 --json out.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from famus.meta.engines import ENGINES, STAGES, build_engine
from famus.meta.learner import LAGGED_SUFFIX, MetaLearner
from famus.meta.methods import METHODS
from famus.meta.recipe import DEFAULT_SPEC, Recipe, default_recipe
from famus.train.step import erm_step
from famus.yamlload import safe_load

DEFAULT_ENGINES = ("exact", "famus", "jvp", "fd", "famus-fd", "famus-fd+lagged", DEFAULT_SPEC)
DEFAULT_STEPS = 20000  # the run the default recipe is amortized over: Table 1's MW-Net schedule (20k iterations)
NOREUSE_SUFFIX = "+noreuse"
CPU_MEMORY = "CPU: peak of the running sum of tensor allocations minus frees during one iteration (torch.profiler)"
CUDA_MEMORY = "CUDA: torch.cuda.max_memory_allocated during one iteration minus the allocation before it"


def spec_options(spec: str) -> tuple[str, dict]:
    """``"famus[k=2;lg_target=detached]+lagged"`` -> ``("famus+lagged", {"k": 2, "lg_target": "detached"})``."""
    if "[" not in spec and "]" not in spec:
        return spec, {}
    head, _, rest = spec.partition("[")
    body, close, tail = rest.partition("]")
    items = [i for i in (s.strip() for s in body.split(";")) if i]
    if not close or "[" in tail or "]" in tail or not all("=" in i and i.split("=", 1)[0].strip() for i in items):
        raise ValueError(f"engine spec {spec!r}: options go as name[KEY=VALUE;KEY=VALUE]+suffixes")
    try:
        return head + tail, {k.strip(): safe_load(v) for k, v in (i.split("=", 1) for i in items)}
    except yaml.YAMLError as e:
        raise ValueError(f"engine spec {spec!r}: an option value is not valid YAML ({e})") from None


def split_specs(text: str) -> list[str]:
    """``--engines`` into specs: commas split, except inside ``[...]``."""
    return [e.strip() for e in re.split(r",(?![^\[]*\])", text) if e.strip()]


def parse_engine(spec: str, method: str = "mwnet") -> tuple[str, bool, bool]:
    """``"famus-fd+lagged"`` -> ``("famus-fd", lagged=True, reuse=True)``; suffixes in any order (options:
    :func:`spec_options`). ``"default"``: the default recipe's engine for ``method``."""
    base, lagged, reuse = spec_options(default_recipe(method).engine if spec == DEFAULT_SPEC else spec)[0], False, True
    while True:
        if base.endswith(LAGGED_SUFFIX):
            base, lagged = base[: -len(LAGGED_SUFFIX)], True
        elif base.endswith(NOREUSE_SUFFIX):
            base, reuse = base[: -len(NOREUSE_SUFFIX)], False
        else:
            break
    ENGINES.get(base)  # unknown names fail here, listing the valid ones
    return base, lagged, reuse


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(model: str | Callable[[], nn.Module] | nn.Module, num_classes: int, in_channels: int) -> nn.Module:
    if isinstance(model, str):
        from famus.models import build_model

        return build_model(model, num_classes, in_channels=in_channels)
    if isinstance(model, nn.Module):
        return copy.deepcopy(model)
    out = model()
    if not isinstance(out, nn.Module):
        raise TypeError(f"the model factory returned {type(out).__name__}, not an nn.Module")
    return out


def _flat(grads: dict[str, Tensor]) -> Tensor:
    return torch.cat([grads[k].detach().reshape(-1).double() for k in sorted(grads) if not k.startswith("sampler:")])


def _peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes of tensor memory above the starting level while ``fn`` runs (see the module constants)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:  # raw allocation events: kineto's list keeps every alloc (+) and free (-) with its time
        raw = prof.profiler.kineto_results.events()
        events = sorted((e.start_ns(), e.nbytes()) for e in raw if e.name() == "[memory]")
    except (AttributeError, RuntimeError):
        return None
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return int(peak)


class _ERM:
    """A plain training step of the same model (:func:`famus.train.step.erm_step`): forward, cross-entropy,
    backward, SGD step."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor, y_meta: Tensor) -> None:
        self.model.train()
        erm_step(self.model, self.optimizer, x, y)  # the training loop's plain step


class _Plain:
    """A learner's ordinary weighted step (no meta update): what ``meta_every`` steps between updates cost."""

    def __init__(self, learner: MetaLearner) -> None:
        self.learner = learner

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor, y_meta: Tensor) -> None:
        self.learner.plain_step(x, y)


def bench(
    model: str | Callable[[], nn.Module] | nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    method: str = "mwnet",
    engines: Sequence[str] = DEFAULT_ENGINES,
    repeats: int = 5,
    warmup: int = 2,
    meta_batch_size: int | None = None,
    num_classes: int = 10,
    device: str | torch.device | None = None,
    seed: int = 0,
    lr: float = 0.1,
    meta_every: int = 1,
    method_options: dict | None = None,
    engine_options: dict[str, dict] | None = None,
    steps: int = DEFAULT_STEPS,
) -> dict:
    """Time every engine on the same batches and compare its meta gradient with ``exact``'s.

    Args:
        model: a ``famus.models`` registry name (e.g. ``"resnet32"``), an ``nn.Module`` (copied),
            or a factory returning one.
        input_shape: one example's shape, e.g. ``(3, 32, 32)``; batches are ``(batch_size, *input_shape)``
            standard-normal inputs with uniform random labels.
        batch_size: training batch size ``n``.
        method: ``"mwnet"``, ``"l2r"`` or ``"mlc"``.
        engines: engine specs (names with optional ``+lagged`` / ``+noreuse``).
        repeats: timed iterations per engine; the report gives medians.
        warmup: untimed iterations per engine first.
        meta_batch_size: ``m`` (default: ``batch_size``, the paper's setting).
        num_classes: classes of the model and labels.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        seed: seeds the data, the model and every learner (same samplers, same gates).
        lr: base learning rate (alpha of the virtual step).
        meta_every: also report each engine's iteration amortized over ``meta_every`` steps, one with
            a meta update and ``meta_every - 1`` ordinary weighted steps (:meth:`MetaLearner.plain_step`,
            timed beside the others): ``(iteration + (k - 1) * plain) / k``.
        method_options: options of the method, for every learner (e.g. ``{"meta_lr": 1e-3}``).
        engine_options: per engine name, its options (e.g. ``{"famus": {"k": 2}, "fd": {"fd_eps": 1e-3}}``);
            a name that is not benched, or an option the engine does not take, is an error. A spec's own
            options (``famus[k=2]``) go over these.
        steps: the run length the ``default`` spec is amortized over (its warm-up, dense phase and
            every-k-th meta updates, :meth:`famus.meta.recipe.Recipe.counts`).

    Returns:
        A JSON-ready dict: ``erm_step_s``, ``engines`` (spec -> ``iteration_s``, ``speedup_vs_exact``,
        ``ratio_to_erm``, ``cosine_to_exact``, ``rel_error_to_exact``, ``peak_memory_bytes``,
        ``stages``, ...; ``amortized_s`` and ``amortized_ratio_to_erm`` where it amortizes: every engine with
        ``meta_every > 1``, and ``default`` over its schedule, with ``schedule``), and the settings
        (``memory_method``, ``timing``, ...).
    """
    engine_options = {k: dict(v) for k, v in (engine_options or {}).items()}
    parsed = _check(method, engines, repeats, warmup, meta_every, engine_options, steps)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = meta_batch_size or batch_size
    shape = tuple(int(s) for s in input_shape)
    torch.manual_seed(seed)
    model0 = _build(model, num_classes, shape[0]).to(dev)
    batches = _random_batches(shape, batch_size, m, num_classes, warmup + repeats + 1, seed, dev)  # +1: memory
    make = _Learners(model0, batches[0][0], method, lr, seed, dict(method_options or {}), engine_options)
    plain = meta_every > 1 or DEFAULT_SPEC in parsed
    runners, report = _fidelity(make, parsed, batches[0], plain)
    times, stages, reused = _time(runners, batches, warmup, repeats, dev)
    memory = {name: _peak_memory(lambda rn=runner: rn.step(*batches[-1]), dev) for name, runner in runners.items()}
    erm_s = statistics.median(times["erm"])
    plain_s = statistics.median(times["plain"]) if plain else None
    for spec, row in report.items():
        if "error" not in row:
            row.update(_timing_row(times, spec, erm_s, plain_s if meta_every > 1 else None, meta_every),
                       peak_memory_bytes=memory[spec],
                       stages={s: statistics.median(t[s] for t in stages[spec]) for s in STAGES},
                       reused_forward=reused.get(spec, False))
            choice = getattr(getattr(runners[spec], "engine", None), "choice", None)
            if choice is not None:  # auto: the backend it timed faster
                row["choice"] = choice
            if spec == DEFAULT_SPEC:
                row.update(_recipe_row(default_recipe(method), row["iteration_s"], plain_s, erm_s, steps))
    return {
        "model": model if isinstance(model, str) else type(model0).__name__,
        "input_shape": list(shape), "batch_size": batch_size, "meta_batch_size": m, "method": method,
        "num_classes": num_classes, "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "repeats": repeats, "warmup": warmup,
        "timing": f"median of {repeats} iterations after {warmup} warm-up ones, engines interleaved"
        + (", CUDA-synchronized" if dev.type == "cuda" else ""),
        "memory_method": CUDA_MEMORY if dev.type == "cuda" else CPU_MEMORY,
        "method_options": dict(method_options or {}), "engine_options": engine_options,
        "meta_every": meta_every, "plain_step_s": plain_s, "steps": steps,
        "erm_step_s": erm_s, "erm_step_s_all": times["erm"], "erm_peak_memory_bytes": memory["erm"],
        "engines": report,
    }


def _check(method: str, engines: Sequence[str], repeats: int, warmup: int, meta_every: int,
           engine_options: dict[str, dict], steps: int = DEFAULT_STEPS) -> dict[str, tuple[str, bool, bool]]:
    """The parsed engine specs; bad counts, unknown names and options for an engine not benched are errors."""
    if repeats < 1 or warmup < 0 or meta_every < 1 or steps < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, meta_every >= 1 and steps >= 1, got {repeats}, {warmup}, "
                         f"{meta_every}, {steps}")
    METHODS.get(method)
    specs = list(dict.fromkeys(engines))
    parsed = {s: parse_engine(s, method) for s in specs}
    stray = sorted(set(engine_options) - {b for b, _, _ in parsed.values()})
    if stray:
        raise ValueError(f"engine_options for {stray}, which are not benched (engines: {', '.join(specs)})")
    for spec, (base, _, _) in parsed.items():  # a spec's own options are checked before anything is timed
        if spec_options(spec)[1]:
            build_engine(base, **{**engine_options.get(base, {}), **spec_options(spec)[1]})
    return parsed


def _random_batches(shape: tuple[int, ...], n: int, m: int, num_classes: int, count: int, seed: int,
                    dev: torch.device) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """``count`` batches ``(x (n, *shape), y (n,), x_meta (m, *shape), y_meta (m,))``: standard normal inputs,
    uniform labels."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        x = torch.randn((n, *shape), generator=gen)
        xm = torch.randn((m, *shape), generator=gen)
        y = torch.randint(0, num_classes, (n,), generator=gen)
        ym = torch.randint(0, num_classes, (m,), generator=gen)
        batches.append(tuple(t.to(dev) for t in (x, y, xm, ym)))
    return batches


class _Learners:
    """Builds each engine's learner on its own copy of the same model, with the same initialisations."""

    def __init__(self, model0: nn.Module, bind_x: Tensor, method: str, lr: float, seed: int, method_options: dict,
                 engine_options: dict[str, dict]) -> None:
        self.model0, self.bind_x, self.method = model0, bind_x, method
        self.lr, self.seed, self.method_options, self.engine_options = lr, seed, method_options, engine_options

    def __call__(self, base: str, lagged: bool = False, reuse: bool = True, options: dict | None = None) -> MetaLearner:
        net = copy.deepcopy(self.model0)
        opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        torch.manual_seed(self.seed)  # same meta model and sampler initialisation for every engine
        out = MetaLearner(net, opt, self.method, base, seed=self.seed, reuse_forward=reuse, lagged=lagged,
                          method_options=self.method_options,
                          engine_options={**(self.engine_options.get(base) or {}), **(options or {})})
        out.bind(self.bind_x)
        return out


def _fidelity(make: _Learners, parsed: dict[str, tuple[str, bool, bool]], batch: tuple, plain: bool
              ) -> tuple[dict[str, object], dict[str, dict]]:
    """The runners to time (ERM, the plain step when ``plain``, each engine) and each engine's meta gradient
    against ``exact``'s at the same state on ``batch`` (cosine, relative error)."""
    reference = _flat(make("exact").meta_gradient(*batch))
    runners: dict[str, object] = {"erm": _ERM(copy.deepcopy(make.model0), make.lr)}
    if plain:  # the ordinary weighted step between meta updates (the same for every engine)
        runners["plain"] = _Plain(make("exact"))
    report: dict[str, dict] = {}
    for spec, (base, lagged, reuse) in parsed.items():
        try:
            runners[spec] = lrn = make(base, lagged, reuse, spec_options(spec)[1])
        except ValueError as e:  # e.g. lagged L2R
            report[spec] = {"error": str(e)}
            continue
        got = _flat(lrn.meta_gradient(*batch))
        report[spec] = {
            "engine": base, "lagged": lagged, "reuse_forward": reuse,
            "cosine_to_exact": float(F.cosine_similarity(got, reference, dim=0)),
            "rel_error_to_exact": float((got - reference).norm() / reference.norm().clamp_min(1e-300)),
        }
    return runners, report


def _time(runners: dict[str, object], batches: list[tuple], warmup: int, repeats: int, dev: torch.device):
    """Per runner: the timed iterations (s), the stage times of each, and whether the forward was reused."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    stages: dict[str, list[dict[str, float]]] = {k: [] for k in runners}
    reused: dict[str, bool] = {}
    for r in range(warmup + repeats):
        for name, runner in runners.items():  # interleaved: load from other processes hits all alike
            _sync(dev)
            t0 = time.perf_counter()
            stats = runner.step(*batches[r])
            _sync(dev)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
                if stats is not None:
                    stages[name].append(stats.times)
            if isinstance(runner, MetaLearner):
                reused[name] = runner.reused_forward
    return times, stages, reused


def _timing_row(times: dict[str, list[float]], spec: str, erm_s: float, plain_s: float | None,
                meta_every: int) -> dict:
    """An engine's median iteration, its ratios to ERM and exact, and (``meta_every > 1``) amortized."""
    it = statistics.median(times[spec])
    exact_s = statistics.median(times["exact"]) if "exact" in times else None
    row = dict(iteration_s=it, iteration_s_all=times[spec], speedup_vs_exact=exact_s / it if exact_s else None,
               ratio_to_erm=it / erm_s)
    if plain_s is not None:
        amortized = (it + (meta_every - 1) * plain_s) / meta_every
        row.update(amortized_s=amortized, amortized_ratio_to_erm=amortized / erm_s)
    return row


def _recipe_row(recipe: Recipe, meta_s: float, plain_s: float, erm_s: float, steps: int) -> dict:
    """The default recipe over ``steps`` steps: warm-up and weighted steps cost ``plain_s``, meta steps ``meta_s``."""
    warm, meta, plain = recipe.counts(steps)
    amortized = (meta * meta_s + (warm + plain) * plain_s) / steps
    return dict(amortized_s=amortized, amortized_ratio_to_erm=amortized / erm_s,
                schedule=dict(engine=recipe.engine, warmup=recipe.warmup, dense=recipe.dense, every=recipe.every,
                              steps=steps, meta_steps=meta, plain_steps=warm + plain))


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def format_table(result: dict) -> str:
    """The result of :func:`bench` as a plain-text table (times in ms, memory in MiB)."""
    short = {"virtual_forward": "vf", "virtual_backward": "vb", "meta_forward": "mf",
             "meta_backward": "mb", "actual_forward": "af", "actual_backward": "ab"}
    k = result.get("meta_every", 1)
    recipe = any("schedule" in row for row in result["engines"].values())
    amort = [f"k={k} ms", f"k={k} x ERM"] if k > 1 else ["amortized ms", "amortized x ERM"] if recipe else []
    head = ["engine", "iter ms", "x ERM", *amort, "vs exact", "cos", "rel err", "peak MiB"] + [short[s] for s in STAGES]
    rows = [head]
    for spec, row in result["engines"].items():
        if "error" in row:
            rows.append([spec, "n/a: " + row["error"]])
            continue
        mem = row["peak_memory_bytes"]
        rows.append([
            spec,
            _fmt(row["iteration_s"] * 1e3, ".0f"),
            _fmt(row["ratio_to_erm"], ".2f"),
            *([_fmt(row.get("amortized_s", math.nan) * 1e3, ".0f"), _fmt(row.get("amortized_ratio_to_erm"), ".2f")]
              if amort else []),
            _fmt(row["speedup_vs_exact"], ".2f") + ("x" if row["speedup_vs_exact"] else ""),
            _fmt(row["cosine_to_exact"], ".6f"),
            _fmt(row["rel_error_to_exact"], ".1e"),
            _fmt(None if mem is None else mem / 2**20, ".0f"),
            *(_fmt(row["stages"][s] * 1e3, ".0f") for s in STAGES),
        ])
    widths = [max(len(r[i]) for r in rows if len(r) > i and len(r) == len(head)) for i in range(len(head))]
    lines = []
    for r in rows:
        if len(r) != len(head):
            lines.append(f"{r[0]:<{widths[0]}}  {r[1]}")
        else:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    erm_mem = result.get("erm_peak_memory_bytes")
    title = (
        f"{result['model']} {'x'.join(map(str, result['input_shape']))}, batch {result['batch_size']}, "
        f"meta batch {result['meta_batch_size']}, {result['method']}, {result['device']} "
        f"({result['threads']} threads); ERM step {result['erm_step_s'] * 1e3:.0f} ms"
        + (f", {erm_mem / 2**20:.0f} MiB" if erm_mem is not None else "")
    )
    notes = [
        f"timing: {result['timing']}; stages (ms): " + ", ".join(f"{short[s]}={s}" for s in STAGES),
        f"memory: {result['memory_method']}",
        "cos / rel err: the engine's meta gradient against exact's, same state and batch (FaMUS: its sampled gates)",
    ]
    if k > 1:
        notes.append(f"k={k}: mean over {k} steps, one meta update and {k - 1} ordinary weighted steps "
                     f"({result['plain_step_s'] * 1e3:.0f} ms each, timed beside the others)")
    for spec, row in result["engines"].items():
        if "schedule" in row:
            sch = row["schedule"]
            notes.append(
                f"{spec}: famus train's default recipe, {sch['engine']} ({row.get('choice') or 'its choice'}); "
                f"over {sch['steps']} steps: {sch['warmup']} warm-up steps, meta updates on every step for "
                f"{sch['dense']} steps, then every {sch['every']}th ({sch['meta_steps']} meta steps, "
                f"{sch['plain_steps']} ordinary ones at {result['plain_step_s'] * 1e3:.0f} ms)")
    return "\n".join([title, *lines, *notes])


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``famus bench`` flags to ``parser``."""
    parser.add_argument("--model", default="resnet32", help="famus.models name or 'package.module:function'")
    parser.add_argument("--input-shape", default="3,32,32", help="C,H,W of one example")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--method", default="mwnet", choices=METHODS.names())
    parser.add_argument(
        "--engines", default=",".join(DEFAULT_ENGINES),
        help="comma-separated engine names, each optionally with +lagged or +noreuse and options in brackets: "
             "famus[lg_target=detached;gate_unit=tensor]",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per engine (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per engine first")
    parser.add_argument("--meta-batch-size", type=int, default=None, help="default: the batch size")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.1, help="base learning rate (alpha)")
    parser.add_argument("--meta-every", type=int, default=1,
                        help="also show each engine amortized over k steps (one meta update, k-1 ordinary steps)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help="the run length the 'default' recipe is amortized over (warm-up, dense, then every k)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """Run :func:`bench` from parsed arguments, print the table, write ``--json``; returns the exit code."""
    try:
        shape = tuple(int(s) for s in str(args.input_shape).split(","))
    except ValueError:
        print(f"famus bench: --input-shape must be integers like 3,32,32, got {args.input_shape!r}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    engines = split_specs(args.engines)
    try:
        result = bench(
            args.model, shape, args.batch_size, args.method, engines, repeats=args.repeats, warmup=args.warmup,
            meta_batch_size=args.meta_batch_size, num_classes=args.num_classes, device=args.device,
            seed=args.seed, lr=args.lr, meta_every=args.meta_every, steps=args.steps,
        )
    except (ValueError, TypeError, KeyError) as e:
        print(f"famus bench: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="famus bench", description=__doc__.split("\n")[0]))
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
