"""PNG plots for `dvc plots` and MLflow: learning curves, attention heat maps, perplexity by
document length. Matplotlib with the non-interactive Agg backend."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from components.artifacts import atomic_file  # noqa: E402


def learning_curves(history_csv: Path, out: Path) -> None:
    with history_csv.open() as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "val_loss"):
        ax.plot(epochs, [float(r[key]) for r in rows], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="cross-entropy (nats/token)", title="Learning curves")
    ax.legend()
    _save(fig, out)


def attention_maps(maps: list[tuple[list[str], np.ndarray]], out: Path) -> None:
    """One heat map per sentence: row t = α_t over the positions i ≤ t it attends to."""
    fig, axes = plt.subplots(1, len(maps), figsize=(6 * len(maps), 5.5), squeeze=False)
    for ax, (tokens, alpha) in zip(axes[0], maps, strict=True):
        ax.imshow(alpha, cmap="viridis", vmin=0.0)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
        ax.set(xlabel="attended position i", ylabel="query position t")
    fig.suptitle("Causal attention α_ti = softmax_i(h_i·h_t/√H)")
    _save(fig, out)


def perplexity_by_length(lengths: np.ndarray, perplexities: np.ndarray, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(lengths, perplexities, s=8, alpha=0.6)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="document length (tokens)",
        ylabel="perplexity",
        title="Test perplexity by document length",
    )
    _save(fig, out)


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
