"""The paper's Table 8 (appendix E) and its relative-variance plot, from `evaluate`'s rows.

Table 8 asks whether the full transport earns its cost over its linearization. Per dictionary
family (stratified over layers, mean ± 95 % CI, `stats.summarize`):
- O(T) of the three value-side lenses that differ only in the stream transition: Logit Lens
  (identity), first order and Query Lens (full);
- the per-feature oracle: for each feature, the best O(T) of those three, i.e. the score of a
  reader who picks the transition per feature after seeing the output score;
- the relative variance `E||g - mean g||^2 / E||g||^2` of the per-position transported vectors
  of both transitions (first order and full; docs/definitions.md, computed by `qlens signatures
  --stats`): 0 when the transport is the same at every position, so that a single linear map
  explains it, near 1 when it varies strongly with context.

The plot (`relative_variance_<family>.png`) is the authors' `plot_rel_var` notebook: per layer
the mean relative variance of first order and of the full transport, one panel for the key
side and one for the value side, here with 95 % CI bars.
"""

from __future__ import annotations

import math
from pathlib import Path

from qlens_jax.evaluation.report import _fmt, _slug, write_csv
from qlens_jax.evaluation.stats import LayerStat, StratifiedStat, as_dicts, summarize

TRANSITION_LENSES = ("logit_lens_value", "first_order_value", "query_lens_value")
ORACLE = "oracle"
# (column, lens, score) of Table 8, in the paper's order.
COLUMNS = (
    ("O(T) Logit Lens", "logit_lens_value", "output_score"),
    ("O(T) first order", "first_order_value", "output_score"),
    ("O(T) Query Lens", "query_lens_value", "output_score"),
    ("O(T) oracle", ORACLE, "output_score"),
    ("rel. var. first order", "first_order_value", "relative_variance"),
    ("rel. var. Query Lens", "query_lens_value", "relative_variance"),
)
# The lenses of the relative-variance plot: per side, (first order, full).
VARIANCE_SIDES = {
    "key": ("first_order_key", "query_lens_key"),
    "value": ("first_order_value", "query_lens_value"),
}


def oracle_rows(rows: list[dict]) -> list[dict]:
    """One row per (family, layer, feature) scored by all three `TRANSITION_LENSES`, with lens
    `oracle` and the best of their three O(T) (a NaN among them leaves the oracle NaN)."""
    scores: dict[tuple, dict[str, float]] = {}
    for row in rows:
        if row["lens"] in TRANSITION_LENSES:
            key = (row["family"], int(row["layer"]), int(row["feature"]))
            scores.setdefault(key, {})[row["lens"]] = float(row["output_score"])
    return [
        {"family": family, "lens": ORACLE, "layer": layer, "feature": feature, "output_score": max(by.values())}
        for (family, layer, feature), by in scores.items()
        if len(by) == len(TRANSITION_LENSES)
    ]


def table8_stats(rows: list[dict]) -> tuple[list[LayerStat], list[StratifiedStat]]:
    """Per-layer and stratified statistics of every column of Table 8 (empty when the rows hold
    none of the three transition lenses)."""
    used = [r for r in rows if r["lens"] in TRANSITION_LENSES or r["lens"] in VARIANCE_SIDES["key"]]
    if not any(r["lens"] in TRANSITION_LENSES for r in used):
        return [], []
    per_layer, overall = summarize(used + oracle_rows(used), ("output_score", "relative_variance"))
    wanted = {(lens, score) for _, lens, score in COLUMNS} | {
        (lens, "relative_variance") for lens in VARIANCE_SIDES["key"]
    }
    keep = lambda s: (s.lens, s.score) in wanted and s.n > 0
    return [s for s in per_layer if keep(s)], [s for s in overall if keep(s)]


def table8_markdown(overall: list[StratifiedStat]) -> str:
    """Table 8's layout: one row per dictionary family, the columns of `COLUMNS` as `mean ± CI`."""
    lookup = {(s.family, s.lens, s.score): s for s in overall}
    lines = [
        "Table 8: O(T) by stream transition, the per-feature oracle (the best of the three per "
        "feature), and the relative variance of the transported vectors (stratified over layers; "
        "mean ± 95 % CI; – where the run has no such column, e.g. signatures without --stats).",
        "",
        "| dictionary | " + " | ".join(name for name, _, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for family in dict.fromkeys(s.family for s in overall):
        cells = []
        for _, lens, score in COLUMNS:
            stat = lookup.get((family, lens, score))
            cells.append("–" if stat is None or stat.n == 0 else f"{_fmt(stat.mean)} ± {_fmt(stat.ci95)}")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_relative_variance_figures(out: Path, per_layer: list[LayerStat]) -> list[Path]:
    """One PNG per family with relative variances: per layer the mean with 95 % CI bars, a panel
    per side (key, value), a line per transition (first order, full)."""
    stats = [s for s in per_layer if s.score == "relative_variance" and s.n > 0]
    if not stats:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for family in dict.fromkeys(s.family for s in stats):
        sides = [side for side, lenses in VARIANCE_SIDES.items() if any(s.lens in lenses for s in stats)]
        fig, axes = plt.subplots(1, len(sides), figsize=(5.2 * len(sides), 3.6), squeeze=False, sharey=True)
        for ax, side in zip(axes[0], sides):
            for lens, label, marker in zip(VARIANCE_SIDES[side], ("first order", "full (Query Lens)"), "os"):
                mine = sorted((s for s in stats if s.family == family and s.lens == lens), key=lambda s: s.layer)
                if mine:
                    ax.errorbar(
                        [s.layer for s in mine],
                        [s.mean for s in mine],
                        yerr=[0.0 if math.isnan(s.ci95) else s.ci95 for s in mine],
                        marker=marker,
                        markersize=4,
                        capsize=2,
                        lw=1,
                        label=label,
                    )
            ax.set_xlabel("layer")
            ax.set_ylabel("mean relative variance")
            ax.set_title(f"{family}: {side}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(out) / f"relative_variance_{_slug(family)}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def write_table8(out: Path, rows: list[dict]) -> dict[str, Path | list[Path]]:
    """Write `table8.md`, `table8.csv` (every stratified statistic) and the relative-variance
    plots into `out`; nothing when the rows hold none of the transition lenses."""
    per_layer, overall = table8_stats(rows)
    if not overall:
        return {}
    out = Path(out)
    (out / "table8.md").write_text(table8_markdown(overall))
    return {
        "table8_md": out / "table8.md",
        "table8_csv": write_csv(out / "table8.csv", as_dicts(overall)),
        "relative_variance_figures": write_relative_variance_figures(out, per_layer),
    }
