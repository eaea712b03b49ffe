"""Curves over training for every run: accuracy (test and validation) and losses (training, meta, validation)."""

from __future__ import annotations

from famus.report.figure import Plot, legend, new_figure, run_color, series
from famus.report.runs import Run


def plot_accuracy(runs: list[Run]) -> Plot | None:
    """Test (solid) and validation (dashed) accuracy (%) against training step and wall-clock time, all runs.

    Runs without a test split (your own data) show their validation accuracy alone.
    """
    fig = new_figure(11, 4.2)
    ax_step, ax_time = fig.subplots(1, 2, sharey=True)
    left_out, drawn, kinds = [], 0, set()
    for i, run in enumerate(runs):
        if not run.metrics:
            continue
        labelled = False
        for ax, x in ((ax_step, "step"), (ax_time, "wall_time_s")):
            got = False
            for key, style, what in (("test_acc", "-", "test"), ("val_acc", "--", "validation")):
                xs, ys = series(run.metrics, x, key)
                if len(xs):
                    ax.plot(xs, ys * 100, style, marker="o", markersize=3, color=run_color(i),
                            label=None if labelled else run.label)
                    drawn, got, labelled = drawn + 1, True, True
                    kinds.add(what)
            if not got:
                left_out.append(f"{run.name}: no {x}/test_acc or val_acc numbers (against {x})")
    if not drawn:
        return None
    what = " and ".join(k for k in ("test", "validation") if k in kinds)
    ax_step.set(xlabel="training step (iterations)", ylabel="accuracy (%)", title=f"Accuracy ({what}) vs step")
    ax_time.set(xlabel="wall-clock training time (s)", title=f"Accuracy ({what}) vs wall-clock time")
    for ax in (ax_step, ax_time):
        ax.grid(alpha=0.3)
    legend(ax_step, loc="best")
    return Plot(fig, "Accuracy",
                "Accuracy after each epoch on the test split (solid) and on the validation data (dashed), against "
                "training steps (left) and wall-clock training time, evaluation excluded (right).", left_out)


LOSSES = (("train_loss", "training loss (noisy labels)", "Training loss"),
          ("meta_loss", "meta loss (trusted batch, after the virtual step)", "Meta loss"),
          ("val_loss", "validation loss (trusted labels)", "Validation loss"))


def plot_losses(runs: list[Run]) -> Plot | None:
    """Training, meta and validation loss (cross-entropy) per epoch, one panel each, one line per run.

    The validation panel also shows the test loss (dotted) where the run has a test split.
    """
    fig = new_figure(13, 4.0)
    axes = fig.subplots(1, 3)
    left_out, drawn = [], 0
    for i, run in enumerate(runs):
        if not run.metrics:
            continue
        missing = []
        for ax, (key, _label, _title) in zip(axes, LOSSES):
            xs, ys = series(run.metrics, "epoch", key)
            if len(xs):
                ax.plot(xs, ys, marker="o", markersize=3, color=run_color(i), label=run.label)
                drawn += 1
            else:
                missing.append(key)
        xs, ys = series(run.metrics, "epoch", "test_loss")
        if len(xs):
            axes[2].plot(xs, ys, ":", color=run_color(i), label=f"{run.name}: test")
        if missing and run.method != "erm" or [m for m in missing if m != "meta_loss"]:
            left_out.append(f"{run.name}: no {', '.join(missing)} (ERM has no meta loss; validation loss: runs "
                            "with validation data, famus after issue 24)")
    if not drawn:
        return None
    for ax, (_key, label, title) in zip(axes, LOSSES):
        ax.set(xlabel="epoch", ylabel=label, title=title)
        ax.grid(alpha=0.3)
    legend(axes[0], loc="best")
    legend(axes[2], loc="best")
    return Plot(fig, "Losses",
                "Mean cross-entropy per epoch: the training loss on the (possibly noisy) labels as weighted by the "
                "method, the meta loss on trusted batches after the virtual step (meta methods), and the loss on "
                "the validation data (trusted, never trained on; dotted: test). A validation loss that rises while "
                "the training loss falls is the model memorising wrong labels.", left_out)
