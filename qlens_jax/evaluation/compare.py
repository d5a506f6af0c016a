"""How stable signatures are across runs (the paper's Table 9: three token samples, three seeds).

For every (lens, dictionary, layer) that all runs computed, and every feature they share, the
Jaccard index of the top-k token-id sets: `|A ∩ B| / |A ∪ B|` for each pair of runs, and
`|A_1 ∩ ... ∩ A_n| / |A_1 ∪ ... ∪ A_n|` across all of them when there are more than two. Each
is summarized over the features by its mean, sample standard deviation and 95 % interval
(1.96 standard errors), as the evaluation's other tables.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Float, Int

from qlens_jax.errors import InputError
from qlens_jax.evaluation.sources import load_signatures


def jaccard(sets: list[Int[np.ndarray, "features k"]]) -> Float[np.ndarray, " features"]:
    """Per feature (row), the Jaccard index of the id sets of every array in `sets`."""
    out = np.empty(sets[0].shape[0])
    for f in range(len(out)):
        rows = [set(s[f].tolist()) for s in sets]
        union = set.union(*rows)
        out[f] = len(set.intersection(*rows)) / len(union) if union else 1.0
    return out


@dataclass(frozen=True)
class Agreement:
    """The Jaccard indices of one (lens, dictionary, layer) between the runs `runs` (indices)."""

    lens: str
    dictionary: str
    layer: int
    runs: tuple[int, ...]
    n_features: int
    mean: float
    std: float
    ci95: float

    def row(self, labels: list[str]) -> dict:
        return {
            "lens": self.lens,
            "dictionary": self.dictionary,
            "layer": self.layer,
            "runs": " & ".join(labels[i] for i in self.runs),
            "n_features": self.n_features,
            "jaccard_mean": self.mean,
            "jaccard_std": self.std,
            "jaccard_ci95": self.ci95,
        }


def _summary(values: np.ndarray) -> tuple[float, float, float]:
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std, 1.96 * std / np.sqrt(len(values))


def compare_runs(sources: list, k: int = 25) -> list[Agreement]:
    """Agreement of the top-`k` lists of `sources` (runs, signature files or `Signatures`; at least
    two): every pair, and all of them together when there are more than two."""
    if len(sources) < 2:
        raise InputError(f"comparing needs at least two runs, got {len(sources)}")
    runs = [load_signatures(s) for s in sources]
    tables = [{(t.lens, t.dictionary, t.layer): t for t in run} for run in runs]
    shared = [key for key in tables[0] if all(key in other for other in tables[1:])]
    if not shared:
        raise InputError("the runs have no (lens, dictionary, layer) in common")
    groups = list(itertools.combinations(range(len(runs)), 2))
    if len(runs) > 2:
        groups.append(tuple(range(len(runs))))
    out = []
    for key in shared:
        features = set.intersection(*(set(np.asarray(t[key].feature_ids).tolist()) for t in tables))
        if not features:
            continue
        ids = sorted(features)
        tops = []
        for t in tables:
            table = t[key]
            if np.asarray(table.top_ids).shape[1] < k:
                raise InputError(
                    f"lens {key[0]} of {key[1]}/{key[2]} keeps {np.asarray(table.top_ids).shape[1]} tokens, fewer than --k {k}"
                )
            rows = {int(f): i for i, f in enumerate(np.asarray(table.feature_ids))}
            tops.append(np.asarray(table.top_ids)[[rows[f] for f in ids], :k])
        for group in groups:
            out.append(Agreement(*key, group, len(ids), *_summary(jaccard([tops[i] for i in group]))))
    if not out:
        raise InputError("the runs have no feature in common")
    return out


def write_comparison(out: Path, agreements: list[Agreement], labels: list[str]) -> dict[str, Path]:
    """`compare.csv` (one row per lens, dictionary, layer and group of runs) and `compare.md`."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    rows = [a.row(labels) for a in agreements]
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| lens | dictionary | layer | runs | features | Jaccard (mean ± 95 % CI) |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['lens']} | {r['dictionary']} | {r['layer']} | {r['runs']} | {r['n_features']} | "
        f"{r['jaccard_mean']:.3f} ± {r['jaccard_ci95']:.3f} |"
        for r in rows
    ]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    return {"csv": out / "compare.csv", "md": out / "compare.md"}
