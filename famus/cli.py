"""The ``famus`` command line: ``train``, ``demo``, ``bench``, ``compare``, ``report``, ``issues``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from famus.log import command_logging
from famus.registry import UnknownNameError
from famus.yamlload import safe_load

# flag -> (config key, type, help)
TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--dataset", "dataset", str, "dataset name (folder, arrays, listfile, fashion-mnist, cifar10, cifar100, digits)"),
    ("--data-dir", "data_dir", str, "folder (or file) of the dataset"),
    ("--noise", "noise", str,
     "label noise to inject: none (default), symmetric, pair, asymmetric, instance, matrix, file"),
    ("--noise-rate", "noise_rate", float, "noise rate R in [0, 1] (symmetric, pair, asymmetric, instance)"),
    ("--imbalance", "imbalance", float, "long-tail imbalance factor IF (1 = balanced)"),
    ("--meta-per-class", "meta_per_class", int, "clean meta examples per class k, held out of training"),
    ("--meta-data", "meta_data", str, "the trusted meta set from a folder or file (then none is drawn from training)"),
    ("--val-per-class", "val_per_class", int, "validation examples per class held out of the trusted set"),
    ("--meta-set", "meta_set", str, "clean (held-out trusted set) or pseudo (GMM split, two nets)"),
    ("--train-subset", "train_subset", int, "keep this many training examples (stratified)"),
    ("--model", "model", str, "model name, or package.module:function"),
    ("--method", "method", str, "erm; a meta method: mwnet, l2r, mlc; a baseline: coteaching, prune "
                                "(options: --set method_options.KEY=VALUE) (default: the recommended recipe: mwnet "
                                "with a trusted set, erm with --loss sce without one, docs/versus.md)"),
    ("--loss", "loss", str, "training loss: ce, gce, sce, ldam, focal or cb (options: --set loss_options.KEY=VALUE) "
                            "(default: ce, or the recommended recipe's with no --method)"),
    ("--meta-grad", "meta_grad", str, "meta-gradient engine: auto (exact or fd, the faster), exact, fd, famus, jvp, "
                                      "block, ...; +lagged (default: the recipe's, auto+lagged; L2R auto)"),
    ("--meta-every", "meta_every", int, "after the dense phase, update the meta model every k-th step (the others: "
                                        "ordinary weighted steps) (default: the recipe's, 5; L2R 1)"),
    ("--meta-dense", "meta_dense", int, "after the warm-up, update the meta model on every step for this many "
                                        "steps (default: the recipe's, 200; L2R 0)"),
    ("--meta-warmup", "meta_warmup", int, "ordinary, uniformly weighted steps before the first meta update "
                                          "(default: min(25, a quarter of an epoch))"),
    ("--epochs", "epochs", int, "epochs"),
    ("--batch-size", "batch_size", int, "training batch size"),
    ("--meta-batch-size", "meta_batch_size", int, "meta batch size (default: batch size)"),
    ("--lr", "lr", float, "base learning rate"),
    ("--optimizer", "optimizer", str, "sgd or adamw (the virtual step follows it: Adam's preconditioner)"),
    ("--schedule", "schedule", str, "learning-rate schedule: step (milestones, gamma) or cosine"),
    ("--lr-warmup-epochs", "lr_warmup_epochs", float, "linear learning-rate warm-up over this many epochs"),
    ("--amp", "amp", str, "mixed precision: bf16, or fp16 (CUDA, with a GradScaler) (default: none, float32)"),
    ("--seed", "seed", int, "seed of data, noise, model init and training"),
    ("--out", "out", str, "run folder"),
    ("--device", "device", str, "cpu, cuda or auto"),
    ("--threads", "threads", int, "torch CPU threads (default: torch's choice)"),
    ("--metrics-format", "metrics_format", str, "jsonl, or csv (written beside metrics.jsonl)"),
    ("--track-every", "track_every", int, "every N steps record meta-gradient fidelity, gates, weights"),
]


class CLIError(Exception):
    """A user error with a one-line message."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in ``--help``, except where there is none to show (``None``, an off
    switch, an empty list) or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "(default:" in text or default is None or default is False or default == [] or default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def config_defaults() -> dict[str, Any]:
    """Each :class:`~famus.train.config.TrainConfig` key's default (what a flag left out means)."""
    from famus.train.config import TrainConfig

    out = {}
    for f in dataclasses.fields(TrainConfig):
        out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def _with_default(help_: str, default: Any) -> str:
    """``help_`` with the config's default appended (``%`` escaped for argparse); a help text that says
    ``(default: ...)`` itself explains what an unset (``None``) value does."""
    if "(default:" not in help_:
        shown = "none" if default is None else default
        help_ = f"{help_} (default: {shown})"
    return help_.replace("%", "%%")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (values are YAML); bad items are CLIErrors."""
    from famus.train.config import yaml_error

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise CLIError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            parsed = safe_load(value) if value else None
        except yaml.YAMLError as e:
            raise CLIError(f"--set {item!r}: the value is not valid YAML ({yaml_error(e)})") from None
        parts = key.replace("-", "_").split(".")
        if not all(parts):
            raise CLIError(f"--set expects KEY=VALUE or KEY.OPTION=VALUE, got {item!r}")
        d = out
        for p in parts[:-1]:
            if not isinstance(d.get(p, {}), dict):
                raise CLIError(f"--set {item!r}: {p!r} was set to a value before, not to options")
            d = d.setdefault(p, {})
        d[parts[-1]] = parsed
    return out


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """``famus train``'s flags; each flag's help shows the :class:`TrainConfig` default it overrides."""
    defaults = config_defaults()
    p.add_argument("--config", help="YAML config file; flags override it")
    for flag, key, typ, help_ in TRAIN_FLAGS:
        p.add_argument(flag, type=typ, default=None, help=_with_default(help_, defaults[key]))
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --out from its config.yaml and checkpoint (none yet: start it)")
    p.add_argument("--tensorboard", action="store_true", default=None, help="also log to TensorBoard (if installed)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress (else a bar on a terminal, one line per log window in a file or pipe)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config key, e.g. --set engine_options.k=6 (YAML value)")


def config_from_args(args: argparse.Namespace):
    """The run's config: the defaults (with ``--resume``: the run folder's ``config.yaml``), then
    ``--config``, the flags and ``--set``."""
    from famus.train.config import from_dict, load_config

    cfg = _resume_base(args)
    cfg = load_config(args.config, cfg) if args.config else cfg
    over: dict[str, Any] = {
        key: getattr(args, key) for _f, key, _t, _h in TRAIN_FLAGS if getattr(args, key) is not None
    }
    for key in ("resume", "tensorboard"):
        if getattr(args, key):
            over[key] = True
    if args.no_progress or getattr(args, "quiet", False):
        over["progress"] = False
    extra = _parse_set(args.set)
    for k, v in extra.items():
        if isinstance(v, dict) and cfg is not None and isinstance(getattr(cfg, k, None), dict):
            v = {**getattr(cfg, k), **v}
        over[k] = v
    return from_dict(over, cfg)


def _resume_base(args: argparse.Namespace):
    """With ``--resume``, the config in the run folder (``--out``, else the config file's ``out``), if any.

    A folder that holds no run yet (missing, empty, or killed before its ``config.yaml``) is started only with
    the run's settings: a ``--config``, or a flag or ``--set`` beyond where, how long and how it runs (not only
    ``--out``, ``--epochs``, ``--threads``, ``--device``, logging); else nothing says what to train: refused.
    """
    if not args.resume:
        return None
    from famus.train.config import TrainConfig, load_config
    from famus.train.resume import SAFE_ON_RESUME, run_config

    out = args.out or (load_config(args.config).out if args.config else TrainConfig().out)
    saved = run_config(out)
    given = [key for _f, key, _t, _h in TRAIN_FLAGS if getattr(args, key) is not None]
    given += [item.split("=", 1)[0].replace("-", "_").split(".")[0] for item in args.set]
    # epochs too: "--resume --epochs 20" in the wrong folder would otherwise start a default run there
    if saved is None and not args.config and all(key in SAFE_ON_RESUME or key == "epochs" for key in given):
        raise CLIError(f"--resume: {out!r} holds no run yet (no config.yaml), so nothing says what to train; pass "
                       "the run's settings (--config FILE, or the flags it was started with) to start it there, or "
                       "drop --resume")
    return saved


def _main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resume_hint(out: str) -> str:
    """What to do after an interrupted ``famus train --out OUT``, on one line."""
    from famus.train.checkpoint import CHECKPOINT
    from famus.train.resume import CONFIG_FILE

    run_dir, command = Path(out), f"famus train --out {shlex.quote(out)} --resume"
    if (run_dir / CHECKPOINT).is_file():
        return f"the last checkpoint is kept in {run_dir / CHECKPOINT}; resume with: {command}"
    if (run_dir / CONFIG_FILE).is_file():
        return f"no checkpoint yet; start the run again from its {CONFIG_FILE} with: {command}"
    return "nothing was written yet; run the same command again"


def cmd_train(args: argparse.Namespace) -> int:
    from famus.train import train

    cfg = config_from_args(args)
    try:
        summary = train(cfg)
    except KeyboardInterrupt:  # checkpoints are written atomically: the last one is whole
        if _main_rank():
            print(f"famus train: interrupted; {resume_hint(cfg.out)}", file=sys.stderr)
        return 130
    if not _main_rank():  # several processes: rank 0 reports
        return 0
    print(summary_lines(summary))
    if "group_acc" in summary:
        parts = ", ".join(f"{g}-shot {'-' if a is None else f'{a:.4f}'}" for g, a in summary["group_acc"].items())
        print(f"last epoch by group: {parts} (groups by {summary['group_rule']} of training class counts; "
              "per-class accuracy in metrics.jsonl)")
    return 0


def _acc(v: float | None) -> str:
    return "n/a (no test set)" if v is None else f"{v:.4f}"


def summary_lines(summary: dict[str, Any]) -> str:
    """What ``famus train`` prints at the end: the three accuracies, labelled, and the label-issue scores."""
    chosen = f"epoch {summary['val_chosen_epoch']}, {summary['selection']}"
    lines = [f"test accuracy of the chosen model {_acc(summary['val_chosen_acc'])} ({chosen}); last "
             f"{_acc(summary['last_test_acc'])}; best test accuracy {_acc(summary['best_test_acc'])} (the paper's "
             f"metric: chosen on the test labels); {summary['time_per_iter_s'] * 1000:.1f} ms/iteration"]
    issues = summary.get("label_issues")
    if issues and issues.get("auroc") is not None:
        lines.append(f"label issues ({summary['clean_score']}) against the injected noise: AUROC "
                     f"{issues['auroc']:.4f}, precision@{issues['n_noisy']} {issues['precision_at_n']:.4f}")
    lines.append(f"run folder {summary['run_dir']} (likely mislabeled examples: famus issues {summary['run_dir']})")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from famus.demo import run_demo

    return run_demo(out=args.out, quick=args.quick, data_dir=args.data_dir, threads=args.threads,
                    progress=not args.quiet)


def version() -> str:
    """``famus --version``: famus's version and the torch it runs on."""
    import torch

    from famus import __version__

    return f"famus {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


class _Version(argparse.Action):
    """``--version``: print :func:`version` and exit (torch is imported only then)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version())  # on stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="famus", description="Noise-robust training by meta-learning, made fast.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action=_Version, help="print famus's and torch's versions and exit")
    common = argparse.ArgumentParser(add_help=False)  # every command's own flags
    common.add_argument("-q", "--quiet", action="store_true",
                        help="only warnings and errors on stderr (no progress, no info messages)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, parents=[common], formatter_class=HelpFormatter, **kwargs)

    p = command("train", "train one run", description="Train one run; see configs/ for examples. A flag overrides "
                "--config, which overrides the defaults shown.")
    add_train_arguments(p)
    p.set_defaults(fn=cmd_train)
    p = command("demo", "ERM vs MW-Net (exact, default engine, FaMUS) on noisy Fashion-MNIST")
    p.add_argument("--out", default="runs/demo", help="folder for the four runs")
    p.add_argument("--data-dir", default=None,
                   help="Fashion-MNIST folder (default: Debian's, /usr/share/datasets/fashion-mnist)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="a tiny version for smoke tests")
    p.set_defaults(fn=cmd_demo)
    for name, module, help_ in (("bench", "famus.bench", "time every meta-gradient engine side by side"),
                                ("compare", "famus.compare", "weight quality, accuracy and speed over seeds"),
                                ("report", "famus.report", "plots, HTML page and summary table of runs"),
                                ("issues", "famus.issues", "the likeliest mislabeled examples of a run")):
        mod = importlib.import_module(module)
        p = command(name, help_)
        mod.add_arguments(p)
        for action in p._actions:  # an option without help text would hide its default
            if action.help is None and action.option_strings and action.default is not None:
                action.help = "(default: %(default)s)"
        p.set_defaults(fn=mod.run_cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with command_logging("famus", quiet=args.quiet):  # messages read "famus: ...", as the library's loggers
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from famus.data import DataError
    from famus.train import TrainingError

    try:
        return args.fn(args)
    except (CLIError, DataError, TrainingError, UnknownNameError, ValueError, TypeError, OSError) as e:
        where = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        message = " ".join(str(e).splitlines())  # one line, whatever the exception says
        print(f"famus {args.command}{where}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"famus {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
