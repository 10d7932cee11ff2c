"""Metrics CSV (rewritten atomically each epoch) and learning-curve plot of a training run."""

import csv
import io
import os
from typing import List

from ..atomic import atomic_write


def write_history(out_dir: str, history: List[dict], plot: bool = True) -> None:
    """metrics.csv, and with ``plot`` learning_curve.png (a plot costs ~0.3 s: the training
    loop draws it at most once a minute and at the end)."""
    if not history:
        return
    columns = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            f.write(buffer.getvalue())

    atomic_write(os.path.join(out_dir, "metrics.csv"), write_csv)
    if plot:
        plot_learning_curve(os.path.join(out_dir, "learning_curve.png"), history)


def plot_learning_curve(path: str, history: List[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    panels = [("train_loss", "valid_loss", "loss")]
    for key, label in (("valid_energy_per_atom_rmse", "E RMSE (meV/atom)"),
                       ("valid_forces_rmse", "F RMSE (meV/Å)"), ("valid_stress_rmse", "S RMSE (meV/Å³)")):
        if key in history[-1]:
            panels.append((key, None, label))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    axes = axes if len(panels) > 1 else [axes]
    stage_two = [row["epoch"] for row in history if row.get("stage") == 2]  # training.stage_two
    for ax, (a, b, label) in zip(axes, panels):
        if stage_two:  # its loss has other weights: a step in the loss curves
            ax.axvline(stage_two[0] - 0.5, color="0.6", linestyle=":", linewidth=1)
        nan = float("nan")
        ax.plot(epochs, [row.get(a, nan) for row in history], label=a.replace("_", " "))
        if b:
            ax.plot(epochs, [row.get(b, nan) for row in history], label=b.replace("_", " "))
            ax.legend()
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
