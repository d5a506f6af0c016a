"""Figures of a channel analysis (PNG, matplotlib's Agg backend), in the spirit of the paper's Figure 5.

- `overlap_matrix.png`: the overlap matrix of each family of maps, maps ordered by destination
  then source, lines between destinations.
- `overlap_groups.png`: per family, the overlaps of same- and different-destination pairs
  (points and box), and the permutation null of the gap of means with the observed gap.
- `overlap_distance.png`: per family, overlap against destination distance for pairs with the
  same source, with the mean per distance.
- `fit_quality.png`: validation explained energy and row cosine per (source, destination).
- `training_curves.png` (with training): train / validation MSE per epoch and the closed form's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qlens_jax.channels.analysis import ChannelResults
from qlens_jax.channels.labels import map_labels

SHORT = {
    "closed_form": "closed form",
    "trained": "Adam",
    "shuffled_control": "shuffled control",
    "response_subspace": "response subspace",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def overlap_matrix_figure(results: ChannelResults, path: Path) -> Path:
    plt = _pyplot()
    labels = np.asarray(map_labels(results))
    dest = np.asarray([p.destination for p in results.data.pairs])
    order = np.lexsort(([p.source_layer for p in results.data.pairs], dest))
    methods = list(results.fits)
    n = len(labels)
    size = max(3.5, 0.32 * n + 2)
    fig, axes = plt.subplots(1, len(methods), figsize=(size * len(methods), size), squeeze=False)
    for ax, method in zip(axes[0], methods):
        ol = results.fits[method].overlap[np.ix_(order, order)]
        image = ax.imshow(ol, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(n), labels[order], rotation=90, fontsize=7 if n > 20 else 9)
        ax.set_yticks(range(n), labels[order], fontsize=7 if n > 20 else 9)
        for k in np.flatnonzero(np.diff(dest[order])) + 0.5:
            ax.axhline(k, color="white", lw=0.8)
            ax.axvline(k, color="white", lw=0.8)
        ax.set_title(f"{SHORT[method]}: OL(W_i, W_j)")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def overlap_groups_figure(results: ChannelResults, path: Path) -> Path:
    plt = _pyplot()
    methods = list(results.fits)
    fig, axes = plt.subplots(2, len(methods), figsize=(4.2 * len(methods), 7), squeeze=False)
    i, j = np.triu_indices(len(results.data.pairs), 1)
    dest = np.asarray([p.destination for p in results.data.pairs])
    same = dest[i] == dest[j]
    rng = np.random.default_rng(0)
    for col, method in enumerate(methods):
        fits = results.fits[method]
        values = fits.overlap[i, j]
        test = fits.destination
        ax = axes[0, col]
        groups = [values[same], values[~same]]
        ax.boxplot(groups, widths=0.5, showfliers=False)
        ax.set_xticks([1, 2], [f"same t\n(n={same.sum()})", f"different t\n(n={(~same).sum()})"])
        for k, g in enumerate(groups, 1):
            ax.scatter(k + rng.uniform(-0.15, 0.15, g.size), g, s=10, alpha=0.6, color="C0" if k == 1 else "C1")
        ax.axhline(results.rank / results.data.d_model, ls=":", color="gray", label="random r/d")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("overlap")
        ax.set_title(f"{SHORT[method]}\nAUC {test.auc:.3f}, p {test.p_auc:.2g}")
        ax.legend(loc="upper right", fontsize=8)
        ax = axes[1, col]
        null = test.null_gap[np.isfinite(test.null_gap)]
        if null.size:
            ax.hist(null, bins=40, color="gray", alpha=0.7, label="shuffled labels")
        ax.axvline(test.gap, color="C3", lw=2, label=f"observed {test.gap:.3f}")
        ax.set_xlabel("mean OL(same t) - mean OL(different t)")
        ax.set_title(f"permutation null, p = {test.p_gap:.2g}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def overlap_distance_figure(results: ChannelResults, path: Path) -> Path:
    plt = _pyplot()
    methods = list(results.fits)
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.8), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, method in zip(axes[0], methods):
        t = results.fits[method].distance
        for source in np.unique(t.pair_sources):
            keep = t.pair_sources == source
            ax.scatter(
                t.distances[keep] + rng.uniform(-0.12, 0.12, keep.sum()),
                t.overlaps[keep],
                s=14,
                alpha=0.7,
                label=f"source L{results.data.sources[int(source)].layer}",
            )
        means = t.mean_by_distance()
        if means:
            ax.plot(list(means), [v for v, _ in means.values()], "k-o", lw=1.5, ms=4, label="mean")
        ax.set_xlabel("|t_i - t_j| (same source)")
        ax.set_ylabel("overlap")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{SHORT[method]}: rho {t.rho:.2f}, p {t.p_negative:.2g}")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def fit_quality_figure(results: ChannelResults, path: Path) -> Path:
    plt = _pyplot()
    methods = [m for m in ("closed_form", "trained") if m in results.fits]
    layers = sorted({p.source_layer for p in results.data.pairs})
    dests = sorted({p.destination for p in results.data.pairs})
    metrics = [("val_explained_energy", "validation explained energy"), ("val_cosine", "validation row cosine")]
    fig, axes = plt.subplots(len(methods), 2, figsize=(9, 3.6 * len(methods)), squeeze=False)
    for row, method in enumerate(methods):
        for col, (key, title) in enumerate(metrics):
            grid = np.full((len(layers), len(dests)), np.nan)
            for pair, m in zip(results.data.pairs, results.fits[method].metrics):
                grid[layers.index(pair.source_layer), dests.index(pair.destination)] = m[key]
            ax = axes[row, col]
            image = ax.imshow(grid, vmin=min(0.0, np.nanmin(grid)), vmax=1, cmap="magma")
            for a in range(len(layers)):
                for b in range(len(dests)):
                    if np.isfinite(grid[a, b]):
                        ax.text(
                            b,
                            a,
                            f"{grid[a, b]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="w" if grid[a, b] < 0.6 else "k",
                        )
            ax.set_xticks(range(len(dests)), dests)
            ax.set_yticks(range(len(layers)), layers)
            ax.set_xlabel("destination block t")
            ax.set_ylabel("source layer s")
            ax.set_title(f"{SHORT[method]}: {title}", fontsize=10)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def training_curves_figure(results: ChannelResults, path: Path) -> Path:
    plt = _pyplot()
    trained, closed = results.fits["trained"], results.fits["closed_form"]
    labels = map_labels(results)
    n = len(labels)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.7 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        train, val = trained.histories[k]
        epochs = np.arange(1, train.size + 1)
        ax.semilogy(epochs, train, label="Adam train")
        ax.semilogy(epochs, val, label="Adam val")
        ax.axhline(closed.metrics[k]["train_mse"], color="C0", ls="--", lw=1, label="closed form train")
        ax.axhline(closed.metrics[k]["val_mse"], color="C1", ls="--", lw=1, label="closed form val")
        ax.axvline(trained.best_epochs[k], color="gray", ls=":", lw=1)
        ax.set_title(labels[k], fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        if k == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(results: ChannelResults, out: Path) -> dict[str, Path]:
    out = Path(out)
    figures = {
        "overlap_matrix": overlap_matrix_figure(results, out / "overlap_matrix.png"),
        "overlap_groups": overlap_groups_figure(results, out / "overlap_groups.png"),
        "overlap_distance": overlap_distance_figure(results, out / "overlap_distance.png"),
        "fit_quality": fit_quality_figure(results, out / "fit_quality.png"),
    }
    if "trained" in results.fits and results.fits["trained"].histories:
        figures["training_curves"] = training_curves_figure(results, out / "training_curves.png")
    return figures
