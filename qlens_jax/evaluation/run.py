"""`evaluate`: input and output scores (and optionally a judge's rating) of every lens's signatures.

Both ground truths depend on the feature only, not on the lens, so they are computed once
per feature and every lens's token set `T` (its top-k ids) is scored against them:
- `A` (input side): the most-activated token of each of the feature's top active contexts in
  the corpus windows (`contexts.top_contexts`, all dictionaries in one streaming pass);
- `S` (output side): the tokens most promoted by steering after neutral prefixes
  (`output_score.promoted_tokens`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from qlens_jax.evaluation.contexts import TopContexts, top_contexts
from qlens_jax.evaluation.input_score import input_scores
from qlens_jax.evaluation.judge import JudgeConfig, judge_scores
from qlens_jax.evaluation.matching import MATCHES
from qlens_jax.evaluation.output_score import Promoted, output_scores, promoted_tokens
from qlens_jax.evaluation.sources import load_signatures
from qlens_jax.evaluation.stats import LayerStat, StratifiedStat, summarize
from qlens_jax.errors import InputError
from qlens_jax.numerics import applies_precision
from qlens_jax.progress import progress

SCORES = ("input_score", "output_score", "judge_score")


@dataclass(frozen=True)
class EvaluationOptions:
    """Options of `evaluate` (defaults: the paper's protocol, docs/definitions.md section 5)."""

    k: int = 25  # size of each lens's token set T (its top-k)
    min_contexts: int = 20  # active contexts a feature needs for I(T)
    n_top_contexts: int | None = None  # contexts kept per feature (default: min_contexts)
    kl_targets: tuple[float, ...] = (0.25, 0.5)
    top_s: int = 25  # |S|
    generate_tokens: int = 0  # the reference also averages over 20 sampled tokens
    temperature: float = 0.75
    match: str = "ids"  # or "strings" (normalized decoded strings)
    seed: int = 0
    sequences_per_chunk: int = 16
    feature_chunk: int = 64
    config_chunk: int = 8
    max_iter: int = 64
    rtol: float = 0.02
    judge_contexts: int = 5  # top contexts shown to the judge (0: tokens only)

    def __post_init__(self):
        if self.match not in MATCHES:
            raise InputError(f"--match {self.match!r}: choose from {', '.join(MATCHES)}")
        for name in ("k", "min_contexts", "top_s", "sequences_per_chunk", "feature_chunk", "config_chunk", "max_iter"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.kl_targets or any(t <= 0 for t in self.kl_targets):
            raise InputError(f"--kl-targets {self.kl_targets}: need positive targets")


@dataclass
class EvaluationResult:
    rows: list[dict]
    per_layer: list[LayerStat]
    overall: list[StratifiedStat]
    contexts: list[TopContexts] = field(default_factory=list)
    promoted: list[Promoted] = field(default_factory=list)
    options: dict = field(default_factory=dict)


def _context_text(tokens: np.ndarray, row: int, position: int, vocab: np.ndarray, width: int = 8) -> str:
    lo, hi = max(0, position - width), min(tokens.shape[1], position + 3)
    pieces = [str(vocab[t]) for t in tokens[row, lo:position]]
    return "".join(pieces) + "[[" + str(vocab[tokens[row, position]]) + "]]" + "".join(str(vocab[t]) for t in tokens[row, position + 1:hi])


@applies_precision
def evaluate(
    model,
    dictionaries,
    signatures,
    context_tokens: np.ndarray,
    context_mask: np.ndarray | None = None,
    *,
    prefix_tokens: np.ndarray,
    prefix_mask: np.ndarray,
    options: EvaluationOptions = EvaluationOptions(),
    vocab: np.ndarray | None = None,
    judge: JudgeConfig | None = None,
    precision: str = "float32",
    quiet: bool = True,
) -> EvaluationResult:
    """Score every (lens, feature) of `signatures` (see the module docstring).

    `dictionaries`: every dictionary the signatures name (matched by name and layer);
    `context_tokens [n, seq]`: corpus windows for the input score (non-overlapping windows are
    best); `prefix_tokens`/`prefix_mask`: the neutral prefixes (`prefixes.prefix_batch`);
    `vocab`: display strings per id (needed for `match="strings"` and the judge).
    `precision`: how the model's matrix products multiply (`qlens_jax.numerics`).
    """
    if judge is not None:
        judge.check()
        if vocab is None:
            raise InputError("the judge needs the vocabulary's strings (vocab)")
    sigs = load_signatures(signatures)
    if not len(sigs):
        raise InputError("no signatures to evaluate")
    items = list(dictionaries)
    index = {(d.name, d.layer): i for i, d in enumerate(items)}
    missing = sorted({(t.dictionary, t.layer) for t in sigs} - set(index))
    if missing:
        raise InputError(f"signatures name dictionaries that were not given: {missing}; pass them with --dictionary")
    for t in sigs:
        if t.top_ids.shape[1] < options.k:
            raise InputError(f"lens {t.lens} keeps {t.top_ids.shape[1]} tokens per feature, fewer than --k {options.k}")
    used = sorted({index[(t.dictionary, t.layer)] for t in sigs})
    features = {i: np.unique(np.concatenate([np.asarray(t.feature_ids) for t in sigs if index[(t.dictionary, t.layer)] == i])) for i in used}
    contexts = top_contexts(model, [items[i] for i in used], [features[i] for i in used], context_tokens, context_mask,
                            n_top=options.n_top_contexts or options.min_contexts, sequences_per_chunk=options.sequences_per_chunk, quiet=quiet)
    contexts_by = dict(zip(used, contexts))
    promoted_by = {}
    for i in progress(used, desc="steering", quiet=quiet, unit="dictionary"):
        promoted_by[i] = promoted_tokens(model, items[i], features[i], prefix_tokens, prefix_mask, targets=options.kl_targets,
                                         top_s=options.top_s, generate_tokens=options.generate_tokens, temperature=options.temperature,
                                         seed=options.seed, feature_chunk=options.feature_chunk, config_chunk=options.config_chunk,
                                         max_iter=options.max_iter, rtol=options.rtol)
    rows = []
    context_tokens = np.asarray(context_tokens)
    for table in sigs:
        i = index[(table.dictionary, table.layer)]
        d, top, promoted = items[i], contexts_by[i], promoted_by[i]
        where = np.searchsorted(features[i], np.asarray(table.feature_ids))
        token_sets = np.asarray(table.top_ids)[:, : options.k]
        sub_top = TopContexts(*(np.asarray(a)[where] for a in (top.features, top.values, top.contexts, top.positions, top.tokens)))
        sub_promoted = Promoted(promoted.features[where], promoted.targets, *(a[where] for a in (promoted.alphas, promoted.kl, promoted.reached, promoted.promoted, promoted.change)))
        scores_in = input_scores(sub_top, token_sets, min_contexts=options.min_contexts, match=options.match, vocab=vocab)
        scores_out = output_scores(sub_promoted, token_sets, match=options.match, vocab=vocab)
        judged = [float("nan")] * len(where)
        if judge is not None:
            token_lists = [[str(vocab[t]) for t in row] for row in token_sets]
            shown = [[_context_text(context_tokens, int(c), int(p), vocab) for c, p, a in zip(sub_top.contexts[f], sub_top.positions[f], sub_top.active[f]) if a][: options.judge_contexts]
                     for f in range(len(where))]
            judged = judge_scores(judge, token_lists, shown if options.judge_contexts else None)
        for f, feature in enumerate(np.asarray(table.feature_ids)):
            row = {"lens": table.lens, "family": d.name, "dictionary": d.name, "layer": d.layer, "feature": int(feature),
                   "feature_str": d.feature_str(int(feature)), "input_score": float(scores_in[f]), "output_score": float(scores_out[f]),
                   "judge_score": judged[f], "active_contexts": int(sub_top.n_active[f])}
            for t, target in enumerate(promoted.targets):
                row[f"alpha_kl{target:g}"] = float(sub_promoted.alphas[f, t])
                row[f"kl_at_alpha_kl{target:g}"] = float(sub_promoted.kl[f, t])
            row["alphas_reached"] = bool(sub_promoted.reached[f].all())
            rows.append(row)
    scores = SCORES if judge is not None else SCORES[:2]
    per_layer, overall = summarize(rows, scores)
    return EvaluationResult(rows, per_layer, overall, [contexts_by[i] for i in used], [promoted_by[i] for i in used], asdict(options))
