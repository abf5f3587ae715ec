"""PNG figures for run reports, drawn with matplotlib's object API.

Each figure is a `matplotlib.figure.Figure` written straight to its PNG (Agg canvas); pyplot and
the process-wide backend are never touched, so a notebook's own backend and open figures stay as
they were.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from reprlearn.metrics.verification import roc_curve


def _figure(rows: int = 1, cols: int = 1, figsize=(6, 4), squeeze: bool = True):
    """A new Figure outside pyplot, and its axes (as `plt.subplots` returns them)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=squeeze)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)  # a Figure without a canvas gets an Agg one to save with


def project_2d(embeddings: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D coordinates of embeddings by t-SNE or PCA."""
    if method == "tsne" and len(embeddings) > 5:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(embeddings) - 1) / 3.0)
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(embeddings)
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(embeddings)


def plot_projection(coords: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path, title: str) -> None:
    fig, ax = _figure(figsize=(7, 6))
    cmap = matplotlib.colormaps.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for i, c in enumerate(np.unique(labels)):
        sel = labels == c
        ax.scatter(coords[sel, 0], coords[sel, 1], s=4, color=cmap(i % cmap.N), label=class_names[c])
    ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    _save(fig, path)


def plot_distance_histograms(distances: np.ndarray, match: np.ndarray, threshold: float | None, path: Path) -> None:
    """Test-pair distance histograms by class agreement, with the threshold calibrated on validation pairs."""
    fig, ax = _figure(figsize=(7, 4))
    bins = np.linspace(distances.min(), distances.max(), 60)
    ax.hist(distances[match], bins=bins, alpha=0.6, density=True, label="same class (positive)")
    ax.hist(distances[~match], bins=bins, alpha=0.6, density=True, label="different class (negative)")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f} (fit on validation pairs)")
    ax.set_xlabel("distance")
    ax.set_ylabel("density")
    ax.legend()
    _save(fig, path)


def plot_roc(distances: np.ndarray, match: np.ndarray, eer: float, auc: float, path: Path) -> None:
    far, tar, _ = roc_curve(distances, match)
    fig, ax = _figure(figsize=(5, 5))
    ax.plot(np.maximum(far, 1e-5), tar, label=f"ROC (AUC {auc:.4f})")
    ax.plot([eer], [1 - eer], "o", label=f"EER {eer:.4f}")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_retrieval_grid(images: np.ndarray, labels: np.ndarray, queries: np.ndarray, neighbours: np.ndarray,
                        path: Path, title: str) -> None:
    """One row per query: the query, then its nearest neighbours framed green (same class) or red."""
    rows, cols = len(queries), neighbours.shape[1] + 1
    fig, axes = _figure(rows, cols, figsize=(1.2 * cols, 1.25 * rows), squeeze=False)
    cmap = "gray" if images.shape[-1] == 1 else None
    for r, q in enumerate(queries):
        for c in range(cols):
            index = q if c == 0 else neighbours[r, c - 1]
            ax = axes[r, c]
            ax.imshow(images[index].squeeze(), cmap=cmap, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            color = "blue" if c == 0 else ("green" if labels[index] == labels[q] else "red")
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3)
        axes[r, 0].set_ylabel("query", fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def plot_history(history: list[dict], path: Path) -> None:
    epochs = np.arange(1, len(history) + 1)
    keys = [k for k in ("loss", "reconstruction", "kl", "active_fraction", "mean_positive_distance",
                        "mean_negative_distance", "val_map_at_r", "val_precision_at_1") if history and k in history[0]]
    fig, axes = _figure(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o")
        ax.set_title(key)
        ax.set_xlabel("epoch")
    _save(fig, path)


def plot_image_grid(grid: np.ndarray, path: Path, title: str, row_labels: list[str] | None = None) -> None:
    """Shows `grid` `[rows, cols, H, W, C]` of images in [0, 1] as one figure."""
    rows, cols = grid.shape[:2]
    fig, axes = _figure(rows, cols, figsize=(0.9 * cols + 0.6, 0.9 * rows + 0.5), squeeze=False)
    cmap = "gray" if grid.shape[-1] == 1 else None
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(np.clip(grid[r, c].squeeze(), 0.0, 1.0), cmap=cmap, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        if row_labels:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def plot_objective(rows: list[dict], hyperparameter: str, objective: str, path: Path) -> None:
    """Each finished trial's objective against one hyperparameter (log axis for margins), coloured by loss."""
    fig, ax = _figure(figsize=(5, 3.5))
    losses = sorted({str(r.get("loss")) for r in rows})
    for loss in losses:
        points = [(r[hyperparameter], r["objective"]) for r in rows if str(r.get("loss")) == loss]
        ax.scatter(*zip(*points), label=loss if loss != "None" else None, alpha=0.8)
    if hyperparameter in ("margin", "learning_rate"):
        ax.set_xscale("log")
    if hyperparameter == "embedding_dim":
        ax.set_xscale("log", base=2)
    ax.set_xlabel(hyperparameter)
    ax.set_ylabel(objective)
    if len(losses) > 1:
        ax.legend(fontsize=7)
    ax.set_title(f"{objective} per trial")
    _save(fig, path)
