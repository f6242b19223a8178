"""Training history on disk: JSON lines (one object per epoch) and a PNG of the curves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(path: str | os.PathLike, history: list[dict]) -> None:
    """Rewrite ``path`` atomically with one JSON object per epoch (so a resumed run never duplicates lines)."""
    _atomic_write_text(Path(path), "".join(json.dumps(row, sort_keys=True) + "\n" for row in history))


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Parse a metrics file written by :func:`write_metrics`."""
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_curves(path: str | os.PathLike, history: list[dict]) -> None:
    """Loss and accuracy per epoch (train and val) as a PNG, written atomically.

    Uses a bare ``Figure`` (no pyplot), so the caller's matplotlib backend is left alone.
    """
    from matplotlib.figure import Figure

    epochs = np.array([row["epoch"] for row in history])
    fig = Figure(figsize=(9, 3.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in (("train", "-o"), ("val", "--s")):
        if f"{split}_loss" in history[0]:
            ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], style, label=split, ms=3)
            ax_acc.plot(epochs, [row[f"{split}_accuracy"] for row in history], style, label=split, ms=3)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
