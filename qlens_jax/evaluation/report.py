"""Writing evaluation results: per-feature CSV, Table-1-style Markdown/CSV, Figure-2-style PNGs.

Files (in `out`):
- `scores.csv`: one row per (lens, dictionary, feature): scores and diagnostics.
- `table.md` / `table.csv`: per (family, lens) the stratified mean of each score with its 95 % CI
  (Markdown: `mean ± ci95`), and per-layer mean / sample std / n.
- `per_layer.csv`: the per-layer statistics.
- `figure_<family>.png`: per score a panel of per-layer means with 95 % CI error bars, one line
  per lens (matplotlib, Agg backend; skipped with a note when matplotlib is missing).
- `figure_groups_<family>.png`: the paper's Fig. 2: per score, bars of every lens in each layer
  group of the authors (early / middle / late thirds with more than six layers, else one group
  per layer), the stratified mean over the group's layers with its 95 % interval.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from qlens_jax.evaluation.stats import LayerStat, StratifiedStat, as_dicts, group_stats

SCORE_TITLES = {"input_score": "I(T)", "output_score": "O(T)", "judge_score": "judge (1-5)"}


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def write_csv(path: Path, rows: list[dict]) -> Path:
    path = Path(path)
    fields = list(rows[0]) if rows else []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown_table(overall: list[StratifiedStat], per_layer: list[LayerStat], scores: tuple[str, ...]) -> str:
    """The Table-1 layout: rows (family, lens), columns scores as `mean ± 95% CI`; then per layer."""
    lines = []
    families = list(dict.fromkeys(s.family for s in overall))
    for family in families:
        rows = [s for s in overall if s.family == family]
        lenses = list(dict.fromkeys(s.lens for s in rows))
        present = [score for score in scores if any(s.score == score for s in rows)]
        n_layers = max(s.layers for s in rows)
        lines += [
            f"**{family}** (stratified over {n_layers} layer{'s' if n_layers != 1 else ''}; mean ± 95 % CI; "
            "n: features with a score (+ features without one))",
            "",
            "| lens | " + " | ".join(f"{SCORE_TITLES.get(s, s)} | n" for s in present) + " |",
            "|---|" + "---|---|" * len(present),
        ]
        for lens in lenses:
            cells = []
            for score in present:
                stat = next((s for s in rows if s.lens == lens and s.score == score), None)
                if stat is None:
                    cells += ["–", "–"]
                else:
                    cells += [
                        f"{_fmt(stat.mean)} ± {_fmt(stat.ci95)}",
                        f"{stat.n}" + (f" (+{stat.n_missing} none)" if stat.n_missing else ""),
                    ]
            lines.append(f"| {lens} | " + " | ".join(cells) + " |")
        lines.append("")
        layers = sorted({s.layer for s in per_layer if s.family == family})
        if len(layers) > 1:
            for score in present:
                lines += [
                    f"Per layer, {SCORE_TITLES.get(score, score)} (mean / sample std / n):",
                    "",
                    "| lens | " + " | ".join(f"layer {layer}" for layer in layers) + " |",
                    "|---|" + "---|" * len(layers),
                ]
                for lens in lenses:
                    cells = []
                    for layer in layers:
                        s = next(
                            (
                                x
                                for x in per_layer
                                if (x.family, x.lens, x.score, x.layer) == (family, lens, score, layer)
                            ),
                            None,
                        )
                        cells.append("–" if s is None else f"{_fmt(s.mean)} / {_fmt(s.std)} / {s.n}")
                    lines.append(f"| {lens} | " + " | ".join(cells) + " |")
                lines.append("")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "dictionary"


def write_figures(out: Path, per_layer: list[LayerStat], scores: tuple[str, ...]) -> list[Path]:
    """One PNG per family: per-layer means with 95 % CI bars, a panel per score."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    colors, markers = plt.get_cmap("tab20").colors, "osD^v<>pPX*h"
    for family in dict.fromkeys(s.family for s in per_layer):
        present = [score for score in scores if any(s.family == family and s.score == score for s in per_layer)]
        lenses = list(dict.fromkeys(s.lens for s in per_layer if s.family == family))
        fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present) + 1.8, 3.6), squeeze=False)
        for ax, score in zip(axes[0], present):
            stats = [s for s in per_layer if s.family == family and s.score == score]
            for j, lens in enumerate(lenses):
                mine = sorted((s for s in stats if s.lens == lens), key=lambda s: s.layer)
                offset = 0.3 * (j / max(len(lenses) - 1, 1) - 0.5)  # side by side, so the CI bars stay readable
                ax.errorbar(
                    [s.layer + offset for s in mine],
                    [s.mean for s in mine],
                    yerr=[0.0 if math.isnan(s.ci95) else s.ci95 for s in mine],
                    marker=markers[j % len(markers)],
                    color=colors[(2 * j) % 20 if j < 10 else (2 * j + 1) % 20],
                    markersize=4,
                    capsize=2,
                    lw=1,
                    label=lens,
                )
            layers = sorted({s.layer for s in stats})
            ax.set_xticks(layers)
            ax.set_xlabel("layer")
            ax.set_ylabel(SCORE_TITLES.get(score, score))
            ax.set_title(f"{family}: {SCORE_TITLES.get(score, score)}")
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        fig.tight_layout()
        path = Path(out) / f"figure_{_slug(family)}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def write_group_figures(out: Path, per_layer: list[LayerStat], scores: tuple[str, ...]) -> list[Path]:
    """One PNG per family: the paper's Fig. 2 (`group_stats`), a panel per score."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    grouped = group_stats(per_layer)
    for family in dict.fromkeys(s.family for s in per_layer):
        mine = [(name, s) for name, s in grouped if s.family == family]
        present = [score for score in scores if any(s.score == score for _, s in mine)]
        lenses = list(dict.fromkeys(s.lens for _, s in mine))
        groups = list(dict.fromkeys(name for name, _ in mine))
        fig, axes = plt.subplots(
            1,
            len(present),
            figsize=(max(4.0, 1.2 * len(groups) * max(len(lenses), 2) / 2) * len(present), 3.6),
            squeeze=False,
        )
        width = 0.8 / max(len(lenses), 1)
        for ax, score in zip(axes[0], present):
            for j, lens in enumerate(lenses):
                stats = {name: s for name, s in mine if s.lens == lens and s.score == score}
                xs = [g + (j - (len(lenses) - 1) / 2) * width for g in range(len(groups))]
                means = [stats[g].mean if g in stats else float("nan") for g in groups]
                errs = [0.0 if g not in stats or math.isnan(stats[g].ci95) else stats[g].ci95 for g in groups]
                ax.bar(xs, means, width, yerr=errs, capsize=2, label=lens, edgecolor="black", linewidth=0.6)
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels(groups, fontsize=8)
            ax.set_ylabel(SCORE_TITLES.get(score, score))
            ax.set_title(f"{family}: {SCORE_TITLES.get(score, score)}")
            ax.grid(axis="y", alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        fig.tight_layout()
        path = Path(out) / f"figure_groups_{_slug(family)}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def write_report(
    out: Path,
    rows: list[dict],
    per_layer: list[LayerStat],
    overall: list[StratifiedStat],
    scores: tuple[str, ...],
    preamble: str = "",
) -> dict[str, Path | list[Path]]:
    """Write every file listed in the module docstring; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(overall, per_layer, scores)
    (out / "table.md").write_text((preamble + "\n\n" if preamble else "") + table + "\n")
    return {
        "scores": write_csv(out / "scores.csv", rows),
        "table_md": out / "table.md",
        "table_csv": write_csv(out / "table.csv", as_dicts(overall)),
        "per_layer_csv": write_csv(out / "per_layer.csv", as_dicts(per_layer)),
        "figures": write_figures(out, per_layer, scores) + write_group_figures(out, per_layer, scores),
    }
