"""Tables (Markdown and CSV) and a JSON summary of a channel analysis; `write_outputs` writes
them with the figures (`plots`) and the maps' checkpoint (`checkpoint`)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from qlens_jax.channels.analysis import ChannelResults
from qlens_jax.channels.fit import METRICS
from qlens_jax.channels.labels import map_labels
from qlens_jax.channels.overlap import random_subspace_overlap

METHOD_TITLES = {
    "closed_form": "closed form (reduced-rank regression)",
    "trained": "Adam training (paper's recipe)",
    "shuffled_control": "control: closed form on shuffled responses",
    "response_subspace": "baseline: top-r subspace of the responses (no map)",
}
CAVEAT = (
    "Responses are exact linear images of the queries, `y = R_t v`, so every map with destination `t` "
    "approximates the same operator `R_t` (on its own source's query distribution) and its column space "
    "is close to the top response directions of `R_t`. High overlap within a destination therefore partly "
    "follows from the construction, not only from learned channels. Two controls measure how much: the "
    "shuffled control (responses paired with the wrong queries: same response distribution, no "
    "query-response relation) and the top-r principal subspace of each pair's responses, with no map at "
    "all. When the training queries have full column rank (at least d_model features per source) the "
    "closed-form map's column space equals that principal subspace exactly (column `OL with response "
    "subspace` below)."
)


def fit_rows(results: ChannelResults, method: str) -> list[dict]:
    data, fits = results.data, results.fits[method]
    rows = []
    for k, (pair, metrics) in enumerate(zip(data.pairs, fits.metrics)):
        train, val = results.splits[pair.source]
        row = {
            "method": method,
            "map": k,
            "source": data.sources[pair.source].name,
            "source_layer": pair.source_layer,
            "destination": pair.destination,
            "rank": fits.maps[k].rank,
            "n_train": len(train),
            "n_val": len(val),
        }
        row.update(metrics)
        row["response_overlap"] = float(fits.response_overlap[k])
        if fits.best_epochs is not None:
            row["best_epoch"] = fits.best_epochs[k]
        rows.append(row)
    return rows


def overlap_rows(results: ChannelResults) -> list[dict]:
    """One row per pair of maps with every method's overlap."""
    data, labels = results.data, map_labels(results)
    rows = []
    for i in range(len(data.pairs)):
        for j in range(i + 1, len(data.pairs)):
            a, b = data.pairs[i], data.pairs[j]
            row = {
                "map_i": labels[i],
                "map_j": labels[j],
                "same_destination": a.destination == b.destination,
                "same_source": a.source == b.source,
                "destination_distance": abs(a.destination - b.destination),
            }
            row.update({f"overlap_{m}": float(f.overlap[i, j]) for m, f in results.fits.items()})
            rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _fmt(x, digits: int = 3) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.{digits}g}" if abs(x) >= 1e4 else f"{x:.2e}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _p(p: float, n: int) -> str:
    return "n/a" if p != p else f"{p:.4g}" + (" (smallest possible)" if abs(p - 1 / (n + 1)) < 1e-12 else "")


def _json_ready(x):
    """Plain JSON values: numpy scalars to Python, nan and inf to None."""
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    return x


def summary(results: ChannelResults) -> dict:
    """Everything the Markdown report says, as JSON-ready numbers."""
    data, config = results.data, results.config
    out = {
        "d_model": data.d_model,
        "n_layers": data.n_layers,
        "rank": results.rank,
        "n_tokens": data.n_tokens,
        "random_subspace_overlap": random_subspace_overlap(results.rank, data.d_model),
        "sources": [{"name": s.name, "layer": s.layer, "n_features": len(s.feature_ids)} for s in data.sources],
        "maps": map_labels(results),
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "methods": {},
    }
    for method, fits in results.fits.items():
        entry = {
            "mean_metrics": fits.mean_metrics(),
            "mean_response_overlap": float(np.mean(fits.response_overlap)),
            "destination_test": fits.destination.summary(),
            "distance_test": {
                **fits.distance.summary(),
                "mean_overlap_by_distance": {str(k): v for k, v in fits.distance.mean_by_distance().items()},
            },
        }
        if fits.best_epochs is not None:
            entry["best_epochs"] = list(map(int, fits.best_epochs))
        out["methods"][method] = entry
    return out


METRIC_TITLES = {
    "mse": "MSE",
    "rel_frobenius": "rel. Frobenius",
    "cosine": "cosine",
    "explained_energy": "expl. energy",
}


def markdown_report(results: ChannelResults, figures: dict[str, str] | None = None, header: str = "") -> str:
    data, config, rank = results.data, results.config, results.rank
    lines = ["# Subspace channels", ""]
    if header:
        lines += [header, ""]
    sources = ", ".join(f"{s.name} (layer {s.layer}, {len(s.feature_ids)} features)" for s in data.sources)
    lines += [
        f"- model: d_model {data.d_model}, {data.n_layers} blocks; token sample: {data.n_tokens} valid tokens",
        f"- sources: {sources}",
        f"- maps: {len(data.pairs)} (source, destination) pairs, rank r = {rank}; split {1 - config.validation_fraction:.0%} / "
        f"{config.validation_fraction:.0%} per source; seed {config.seed}",
        f"- training: {f'Adam, lr {config.learning_rate:g}, {config.epochs:d} full-batch epochs, A ~ N(0, {config.init_scale:g}^2), B = 0, best validation epoch' if config.train else 'not run (--train)'}",
        f"- permutation tests: {config.n_permutations} shuffles; random-subspace overlap r/d = {random_subspace_overlap(rank, data.d_model):.3f}",
        "",
        "## Fit quality (mean over maps; the paper's Table 12)",
        "",
    ]
    rows = []
    for method, fits in results.fits.items():
        if fits.metrics:
            rows.append(
                {
                    "method": METHOD_TITLES[method],
                    **fits.mean_metrics(),
                    "response_overlap": float(np.mean(fits.response_overlap)),
                }
            )
    columns = [("method", "maps")] + [(f"train_{m}", f"train {METRIC_TITLES[m]}") for m in ("mse", "explained_energy")]
    columns += [(f"val_{m}", f"val {METRIC_TITLES[m]}") for m in METRICS] + [
        ("response_overlap", "OL with response subspace")
    ]
    lines += [markdown_table(rows, columns), ""]
    if "shuffled_control" in results.fits:
        lines += [
            "The control's training columns are measured against the shuffled targets it was fitted to; its validation "
            "columns against the true responses.",
            "",
        ]
    lines += ["## Overlap: same versus different destination", ""]
    rows = []
    for method, fits in results.fits.items():
        t = fits.destination
        rows.append(
            {
                "method": METHOD_TITLES[method],
                "within": f"{_fmt(t.within_mean)} ± {_fmt(t.within_std)} (n={t.n_within})",
                "between": f"{_fmt(t.between_mean)} ± {_fmt(t.between_std)} (n={t.n_between})",
                "gap": t.gap,
                "auc": t.auc,
                "p_gap": _p(t.p_gap, t.n_permutations),
                "p_auc": _p(t.p_auc, t.n_permutations),
            }
        )
    lines += [
        markdown_table(
            rows,
            [
                ("method", "maps"),
                ("within", "same destination"),
                ("between", "different"),
                ("gap", "gap"),
                ("auc", "AUC"),
                ("p_gap", "p (gap)"),
                ("p_auc", "p (AUC)"),
            ],
        ),
        "",
    ]
    lines += [
        "Mean ± sample standard deviation over pairs of maps. One-sided permutation p-values, destination labels "
        "shuffled over maps: p = (#{perm >= obs} + 1) / (n + 1). With few maps the number of distinct labelings "
        "bounds the smallest reachable p.",
        "",
    ]
    lines += ["## Overlap versus destination distance (pairs with the same source)", ""]
    rows = []
    for method, fits in results.fits.items():
        t = fits.distance
        by = ", ".join(f"{k}: {v:.3f} (n={n})" for k, (v, n) in t.mean_by_distance().items())
        rows.append(
            {
                "method": METHOD_TITLES[method],
                "n": t.n_pairs,
                "rho": t.rho,
                "p_neg": _p(t.p_negative, t.n_permutations),
                "p_two": _p(t.p_two_sided, t.n_permutations),
                "by": by or "n/a",
            }
        )
    lines += [
        markdown_table(
            rows,
            [
                ("method", "maps"),
                ("n", "pairs"),
                ("rho", "Spearman rho"),
                ("p_neg", "p (rho < 0)"),
                ("p_two", "p (two-sided)"),
                ("by", "mean OL by |t_i - t_j|"),
            ],
        ),
        "",
    ]
    lines += ["Null: destination labels shuffled within each source.", "", "## Caveat", "", CAVEAT, ""]
    lines += ["## Per map", ""]
    per_map = [
        ("source", "source"),
        ("source_layer", "s"),
        ("destination", "t"),
        ("n_train", "train"),
        ("n_val", "val"),
        ("train_explained_energy", "train expl. energy"),
    ] + [(f"val_{m}", f"val {METRIC_TITLES[m]}") for m in METRICS]
    per_map.append(("response_overlap", "OL with response subspace"))
    for method in (m for m in results.fits if results.fits[m].metrics):
        extra = [("best_epoch", "best epoch")] if method == "trained" else []
        lines += [f"### {METHOD_TITLES[method]}", "", markdown_table(fit_rows(results, method), per_map + extra), ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{name}]({path})" for name, path in figures.items()]
        lines.append("")
    return "\n".join(lines)


def write_outputs(
    results: ChannelResults, out: str | Path, *, plots: bool = True, header: str = "", figure_prefix: str = ""
) -> dict[str, Path]:
    """Write `channels.md`, `fit_metrics.csv`, `overlaps.csv`, `summary.json`, the figures and `maps/` into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    figures = {}
    if plots:
        from qlens_jax.channels.plots import write_figures

        for name, path in write_figures(results, out).items():
            figures[name] = figure_prefix + path.name
            written[name] = path
    written["fit_metrics"] = write_csv(
        out / "fit_metrics.csv", [r for m in results.fits if results.fits[m].metrics for r in fit_rows(results, m)]
    )
    written["overlaps"] = write_csv(out / "overlaps.csv", overlap_rows(results))
    written["summary"] = out / "summary.json"
    written["summary"].write_text(json.dumps(_json_ready(summary(results)), indent=1))
    written["report"] = out / "channels.md"
    written["report"].write_text(markdown_report(results, figures, header))
    from qlens_jax.channels.checkpoint import save_maps

    written["maps"] = save_maps(results, out / "maps")
    return written
