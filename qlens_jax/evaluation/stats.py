"""Aggregates of per-feature scores (docs/definitions.md section 5; the paper's Table 1 and Figure 2).

Scores are grouped by (dictionary family, lens, score); layers are the strata. A family is
the dictionary name (the same name at several layers is one family, e.g. `resid-post-32k`).
Per layer: n, mean, sample standard deviation (ddof 1), SE = s / sqrt(n), 95 % CI = 1.96 SE.
Across layers: the stratified mean (the average of the L' layer means) with
SE = sqrt(sum_c s_c^2 / n_c) / L' and the same CI; a layer with a single feature has no sample
standard deviation, which leaves the stratified SE undefined (NaN). NaN scores (features without
enough active contexts) are left out and counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.96


@dataclass(frozen=True)
class LayerStat:
    family: str
    lens: str
    score: str
    layer: int
    n: int
    n_missing: int
    mean: float
    std: float
    se: float
    ci95: float


@dataclass(frozen=True)
class StratifiedStat:
    family: str
    lens: str
    score: str
    layers: int
    n: int
    n_missing: int
    mean: float
    se: float
    ci95: float


def layer_stat(values: np.ndarray, key: tuple[str, str, str, int]) -> LayerStat:
    values = np.asarray(values, np.float64)
    kept = values[~np.isnan(values)]
    n = kept.size
    mean = float(kept.mean()) if n else float("nan")
    std = float(kept.std(ddof=1)) if n > 1 else float("nan")
    se = std / np.sqrt(n) if n > 1 else float("nan")
    return LayerStat(*key, n=n, n_missing=int(values.size - n), mean=mean, std=std, se=se, ci95=Z95 * se)


def stratified(layers: list[LayerStat]) -> StratifiedStat:
    used = [s for s in layers if s.n > 0]
    first = layers[0]
    count = len(used)
    mean = float(np.mean([s.mean for s in used])) if count else float("nan")
    variance = sum(s.std**2 / s.n for s in used) if count else float("nan")
    se = float(np.sqrt(variance) / count) if count else float("nan")
    return StratifiedStat(
        first.family,
        first.lens,
        first.score,
        layers=count,
        n=sum(s.n for s in used),
        n_missing=sum(s.n_missing for s in layers),
        mean=mean,
        se=se,
        ci95=Z95 * se,
    )


def summarize(rows: list[dict], scores: tuple[str, ...]) -> tuple[list[LayerStat], list[StratifiedStat]]:
    """Per-layer and stratified statistics of `rows` (dicts with `family`, `lens`, `layer` and
    one value per name in `scores`), in first-seen order of (family, lens)."""
    groups: dict[tuple[str, str], dict[int, list[dict]]] = {}
    for row in rows:
        groups.setdefault((row["family"], row["lens"]), {}).setdefault(int(row["layer"]), []).append(row)
    per_layer, overall = [], []
    for (family, lens), by_layer in groups.items():
        for score in scores:
            stats = [
                layer_stat(
                    np.asarray([r.get(score, np.nan) for r in by_layer[layer]], np.float64),
                    (family, lens, score, layer),
                )
                for layer in sorted(by_layer)
            ]
            if all(s.n == 0 and s.n_missing == 0 for s in stats):
                continue
            per_layer.extend(stats)
            overall.append(stratified(stats))
    return per_layer, overall


def as_dicts(stats) -> list[dict]:
    return [asdict(s) for s in stats]


def layer_groups(layers: Iterable[int]) -> dict[str, list[int]]:
    """The authors' layer groups (their Fig. 2): with more than six layers, thirds of
    `0 .. max(layers)` ("Early [0, 4)", "Middle [4, 8)", "Late [8, 12)" for GPT-2 small's 12,
    the first groups one layer longer when it does not divide), else one group per layer."""
    layers = sorted(set(layers))
    if len(layers) <= 6:
        return {f"Layer {layer}": [layer] for layer in layers}
    size, extra = divmod(max(layers) + 1, 3)
    groups, start = {}, 0
    for i, label in enumerate(("Early", "Middle", "Late")):
        stop = start + size + (1 if i < extra else 0)
        inside = [layer for layer in layers if start <= layer < stop]
        if inside:
            groups[f"{label} [{start}, {stop})"] = inside
        start = stop
    return groups


def group_stats(per_layer: list[LayerStat]) -> list[tuple[str, StratifiedStat]]:
    """Per (family, lens, score) and layer group (`layer_groups` of the family's layers), the
    stratified statistics of the group's layers."""
    out = []
    for family in dict.fromkeys(s.family for s in per_layer):
        mine = [s for s in per_layer if s.family == family]
        groups = layer_groups([s.layer for s in mine])
        for lens, score in dict.fromkeys((s.lens, s.score) for s in mine):
            for name, layers in groups.items():
                inside = [s for s in mine if (s.lens, s.score) == (lens, score) and s.layer in layers]
                if inside:
                    out.append((name, stratified(inside)))
    return out
