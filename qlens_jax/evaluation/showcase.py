"""What an evaluated run shows per feature: `evaluated_features.json`, read by Fig. 4 and `qlens serve`.

Per evaluated feature: its top activating contexts as token strings with the position of the
maximal token, the prefixes continued under steering at each calibrated KL target (alpha and
KL with them), and every lens's top tokens with its scores. Written by `qlens evaluate` next to
`scores.csv`; token strings are the model's, so whoever shows them must escape them.

    {"model": NAME, "k": K, "features": [
      {"dictionary", "layer", "feature", "feature_str", "active_contexts",
       "contexts": [{"tokens": [str], "marked": i, "activation": a}],
       "steering": [{"kl_target", "alpha", "kl", "generations": [{"prefix": [str], "continuation": [str]}]}],
       "lenses": [{"lens", "tokens": [str], "input_score", "output_score", "output_score_lo95",
                   "output_score_hi95", "judge_score"}]}]}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

FILE_NAME = "evaluated_features.json"
CONTEXT_BEFORE, CONTEXT_AFTER = 12, 4  # tokens shown around a context's maximal token
MAX_CONTEXTS = 5  # contexts kept per feature


def _number(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _contexts(top, f: int, windows: np.ndarray, vocab) -> list[dict]:
    out = []
    for row, position, value, active in zip(top.contexts[f], top.positions[f], top.values[f], top.active[f]):
        if not active or len(out) == MAX_CONTEXTS:
            continue
        lo = max(0, int(position) - CONTEXT_BEFORE)
        hi = min(windows.shape[1], int(position) + CONTEXT_AFTER + 1)
        out.append(
            {
                "tokens": [str(vocab[t]) for t in windows[int(row), lo:hi]],
                "marked": int(position) - lo,
                "activation": _number(value),
            }
        )
    return out


def _steering(promoted, generated, starts, f: int, n_tokens: int, prefix_tokens, vocab) -> list[dict]:
    out = []
    for t, target in enumerate(promoted.targets):
        generations = []
        if generated is not None:
            for p, start in enumerate(starts):
                generations.append(
                    {
                        "prefix": [str(vocab[x]) for x in prefix_tokens[p, :start]],
                        "continuation": [str(vocab[x]) for x in generated[f, t, p, start : start + n_tokens]],
                    }
                )
        out.append(
            {
                "kl_target": float(target),
                "alpha": _number(promoted.alphas[f, t]),
                "kl": _number(promoted.kl[f, t]),
                "generations": generations,
            }
        )
    return out


def feature_records(result, signatures, windows, prefix_tokens, vocab, dictionaries, k: int) -> list[dict]:
    """One record (see the module docstring) per feature of `result` (an `EvaluationResult`),
    with the lenses of `signatures` (the tables `evaluate` scored) in their order."""
    windows, prefix_tokens = np.asarray(windows), np.asarray(prefix_tokens)
    scores = {(r["lens"], r["dictionary"], r["layer"], r["feature"]): r for r in result.rows}
    tables = {}
    for table in signatures:
        tables.setdefault((table.dictionary, table.layer), []).append(table)
    n_tokens = result.options.get("showcase_tokens", 0)
    items = {(d.name, d.layer): d for d in dictionaries}
    records = []
    generations = result.generations or [None] * len(result.contexts)
    for key, top, promoted, generated in zip(result.dictionaries, result.contexts, result.promoted, generations):
        dictionary = items[key]
        for f, feature in enumerate(np.asarray(promoted.features)):
            feature = int(feature)
            lenses = []
            for table in tables.get(key, []):
                row = scores.get((table.lens, dictionary.name, dictionary.layer, feature))
                if row is None:
                    continue
                position = int(np.flatnonzero(np.asarray(table.feature_ids) == feature)[0])
                lenses.append(
                    {
                        "lens": table.lens,
                        "tokens": [str(vocab[t]) for t in np.asarray(table.top_ids)[position, :k]],
                        **{
                            name: _number(row.get(name, float("nan")))
                            for name in (
                                "input_score",
                                "output_score",
                                "output_score_lo95",
                                "output_score_hi95",
                                "judge_score",
                            )
                        },
                    }
                )
            records.append(
                {
                    "dictionary": dictionary.name,
                    "layer": int(dictionary.layer),
                    "feature": feature,
                    "feature_str": dictionary.feature_str(feature),
                    "active_contexts": int(top.n_active[f]),
                    "contexts": _contexts(top, f, windows, vocab),
                    "steering": _steering(
                        promoted, generated, result.generation_starts, f, n_tokens, prefix_tokens, vocab
                    ),
                    "lenses": lenses,
                }
            )
    return records


def write_feature_records(out: Path, model_name: str, k: int, records: list[dict]) -> Path:
    """Write `evaluated_features.json` into `out`."""
    path = Path(out) / FILE_NAME
    path.write_text(json.dumps({"model": model_name, "k": k, "features": records}, allow_nan=False))
    return path


def model_display_name(source: str | None, folder: str | Path | None = None) -> str:
    """A name for the model that is not a local path: a Hugging Face id as given, else the last
    component of the folder (a page or report must not show where files lie on a machine)."""
    if source and not source.startswith(("/", ".", "~")) and not Path(source).expanduser().exists():
        return source
    name = Path(str(source or folder or "")).expanduser().name
    return name or "model"
