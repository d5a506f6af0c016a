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

import jax
import jax.numpy as jnp
import numpy as np

from qlens_jax.errors import InputError
from qlens_jax.evaluation.contexts import TopContexts, top_contexts
from qlens_jax.evaluation.input_score import input_scores, input_scores_from_strings
from qlens_jax.evaluation.judge import JudgeConfig, JudgeError, judge_scores
from qlens_jax.evaluation.matching import MATCHES
from qlens_jax.evaluation.output_score import Promoted, output_score_intervals, output_scores, promoted_tokens
from qlens_jax.evaluation.sources import load_signatures
from qlens_jax.evaluation.stats import LayerStat, StratifiedStat, summarize
from qlens_jax.evaluation.steering import ALPHA_SEARCHES, KL_POSITIONS, steered_generations
from qlens_jax.numerics import applies_precision
from qlens_jax.progress import progress

SCORES = ("input_score", "output_score", "judge_score")


@dataclass(frozen=True)
class EvaluationOptions:
    """Options of `evaluate` (defaults: the paper's protocol, docs/definitions.md section 5)."""

    k: int = 25  # size of each lens's token set T (its top-k)
    min_contexts: int = 20  # active contexts a feature needs for I(T)
    n_top_contexts: int | None = None  # contexts kept per feature (default: min_contexts)
    kl_targets: tuple[float, ...] = (0.25, 0.5)  # negative targets steer the other way; S uses the positive ones
    top_s: int | None = None  # |S| (None: |T| = k, as the paper)
    generate_tokens: int = 0  # the reference also averages over 20 sampled tokens
    temperature: float = 0.75  # of that sampling; 0 decodes greedily
    kl_positions: str = "last"  # or "all": the authors' KL, averaged over every prefix position
    alpha_search: str = "bisection"  # or "integer": the authors' integer search in [1, 1000]
    error_term: bool = True  # False: clean runs and calibration use the reconstruction (the authors' code)
    require_contexts: bool = False  # drop features with fewer than min_contexts active contexts (the authors' sampler)
    max_features: int | None = None  # with require_contexts: keep the first N that pass, in `feature_order`
    match: str = "ids"  # or "strings" (decoded strings, the authors' normalize_token) or "stripped" (also stripped)
    seed: int = 0
    sequences_per_chunk: int = 16
    feature_chunk: int = 64
    config_chunk: int = 8
    max_iter: int = 64
    rtol: float = 0.02
    judge_contexts: int = 5  # top contexts shown to the judge (0: tokens only)
    output_resamples: int = 200  # bootstrap draws of the prefixes for O(T)'s interval when continuations are sampled
    showcase_prefixes: int = 3  # prefixes continued under steering at each alpha, to show (Fig. 4, serve); 0: none
    showcase_tokens: int = 20  # tokens generated after each of them (at `temperature`)

    def __post_init__(self):
        if self.match not in MATCHES:
            raise InputError(f"--match {self.match!r}: choose from {', '.join(MATCHES)}")
        for name in (
            "k",
            "min_contexts",
            "top_s",
            "sequences_per_chunk",
            "feature_chunk",
            "config_chunk",
            "max_iter",
            "max_features",
            "showcase_tokens",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not any(t > 0 for t in self.kl_targets) or any(t == 0 for t in self.kl_targets):
            raise InputError(
                f"--kl-targets {self.kl_targets}: need at least one positive target, and none zero "
                "(negative targets steer the other way)"
            )
        if self.kl_positions not in KL_POSITIONS:
            raise InputError(f"--kl-positions {self.kl_positions!r}: choose from {', '.join(KL_POSITIONS)}")
        if self.alpha_search not in ALPHA_SEARCHES:
            raise InputError(f"--alpha-search {self.alpha_search!r}: choose from {', '.join(ALPHA_SEARCHES)}")
        if self.showcase_prefixes < 0:
            raise InputError(f"--showcase-prefixes {self.showcase_prefixes}: must be at least 0 (0: none)")
        if self.output_resamples < 0:
            raise InputError(f"--output-resamples {self.output_resamples}: must be at least 0 (0: no interval)")
        if self.temperature < 0:
            raise InputError(f"--temperature {self.temperature}: must be at least 0 (0 decodes greedily)")

    @classmethod
    def for_protocol(cls, protocol, **overrides) -> "EvaluationOptions":
        """The options of `protocol` (`Protocol.PAPER`: the paper's; see `qlens_jax.protocol`), with
        `overrides` that do not contradict it."""
        from qlens_jax.protocol import PAPER_EVALUATION_OPTIONS, protocol_values

        return cls(**protocol_values(protocol, PAPER_EVALUATION_OPTIONS, overrides))

    @property
    def s_size(self) -> int:
        """|S|: `top_s`, else |T| = `k`."""
        return self.k if self.top_s is None else self.top_s


@dataclass
class EvaluationResult:
    rows: list[dict]
    per_layer: list[LayerStat]
    overall: list[StratifiedStat]
    contexts: list[TopContexts] = field(default_factory=list)
    promoted: list[Promoted] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    judge_error: str | None = None  # the judge's failure; the scores finished before it are kept
    # per entry of `contexts`: `[F, T, P, L]` prefixes continued under steering at each alpha
    # (`steering.steered_generations`), and the P prefixes' lengths
    generations: list[np.ndarray] = field(default_factory=list)
    generation_starts: np.ndarray | None = None
    dictionaries: list[tuple[str, int]] = field(default_factory=list)  # (name, layer) of each entry of `contexts`


def _context_text(tokens: np.ndarray, row: int, position: int, vocab: np.ndarray, width: int = 8) -> str:
    lo, hi = max(0, position - width), min(tokens.shape[1], position + 3)
    pieces = [str(vocab[t]) for t in tokens[row, lo:position]]
    return (
        "".join(pieces)
        + "[["
        + str(vocab[tokens[row, position]])
        + "]]"
        + "".join(str(vocab[t]) for t in tokens[row, position + 1 : hi])
    )


def _kept_features(top: TopContexts, options: EvaluationOptions, order: np.ndarray | None) -> np.ndarray:
    """Indices into `top.features` (sorted ids) of the features the authors' sampler keeps."""
    passing = np.flatnonzero(top.n_active >= options.min_contexts)
    if options.max_features is None:
        return passing
    ids = np.asarray(top.features)
    ranked = (
        passing if order is None else passing[np.argsort([list(order).index(f) for f in ids[passing]], kind="stable")]
    )
    return np.sort(ranked[: options.max_features])


def _pickled_input_scores(activating, layer: int, feature_ids: np.ndarray, token_sets: np.ndarray, vocab) -> np.ndarray:
    """I(T) of the features of one table from their pickled activating tokens (NaN where none are listed)."""
    if vocab is None:
        raise InputError("I(T) from pickled activations compares strings: it needs the vocabulary's strings (vocab)")
    listed = [(int(f), row) for f, row in zip(feature_ids, token_sets) if (layer, int(f)) in activating]
    scores = np.full(len(feature_ids), np.nan)
    if listed:
        found = input_scores_from_strings(
            [activating[(layer, f)] for f, _ in listed], [[str(vocab[t]) for t in row] for _, row in listed]
        )
        scores[[i for i, f in enumerate(feature_ids) if (layer, int(f)) in activating]] = found
    return scores


def _table_rows(table, ids: np.ndarray):
    """`table` restricted to the feature ids `ids`."""
    rows = np.flatnonzero(np.isin(np.asarray(table.feature_ids), ids))
    take = lambda a: np.asarray(a)[rows]
    return type(table)(
        table.lens,
        table.dictionary,
        table.layer,
        take(table.feature_ids),
        take(table.top_ids),
        take(table.top_scores),
        take(table.bottom_ids),
        take(table.bottom_scores),
        stats={name: take(values) for name, values in table.stats.items()},
    )


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
    feature_order: dict[tuple[str, int], np.ndarray] | None = None,
    activating_tokens: dict[tuple[int, int], list[str]] | None = None,
) -> EvaluationResult:
    """Score every (lens, feature) of `signatures` (see the module docstring).

    `dictionaries`: every dictionary the signatures name (matched by name and layer);
    `context_tokens [n, seq]`: corpus windows for the input score (non-overlapping windows are
    best); `prefix_tokens`/`prefix_mask`: the neutral prefixes (`prefixes.prefix_batch`);
    `vocab`: display strings per id (needed for `match="strings"` and the judge).
    `precision`: how the model's matrix products multiply (`qlens_jax.numerics`).
    With `options.require_contexts`, features with fewer than `min_contexts` active contexts are
    left out (no row), as the authors' feature sampler leaves them out; with
    `options.max_features` too, only the first that many of the rest are kept per dictionary, in
    the order `feature_order[(name, layer)]` lists them (else by id).
    `activating_tokens[(layer, feature)]`: the feature's `A` as strings (the authors' feature
    pickles, `io.reference_features.read_activating_tokens`); I(T) is then computed from them as
    the authors' `input_score.py` does (`vocab` needed), NaN for features they do not list.
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
    features = {
        i: np.unique(np.concatenate([np.asarray(t.feature_ids) for t in sigs if index[(t.dictionary, t.layer)] == i]))
        for i in used
    }
    contexts = top_contexts(
        model,
        [items[i] for i in used],
        [features[i] for i in used],
        context_tokens,
        context_mask,
        n_top=options.n_top_contexts or options.min_contexts,
        sequences_per_chunk=options.sequences_per_chunk,
        quiet=quiet,
    )
    contexts_by = dict(zip(used, contexts))
    if options.require_contexts:
        for i in used:
            keep = _kept_features(contexts_by[i], options, (feature_order or {}).get((items[i].name, items[i].layer)))
            features[i] = features[i][keep]
            contexts_by[i] = TopContexts(
                *(
                    np.asarray(a)[keep]
                    for a in (
                        contexts_by[i].features,
                        contexts_by[i].values,
                        contexts_by[i].contexts,
                        contexts_by[i].positions,
                        contexts_by[i].tokens,
                    )
                )
            )
        used = [i for i in used if len(features[i])]
        sigs = [
            _table_rows(t, features[index[(t.dictionary, t.layer)]])
            for t in sigs
            if index[(t.dictionary, t.layer)] in used
        ]
        if not sigs:
            raise InputError(
                f"no feature has {options.min_contexts} active contexts in the corpus windows (--require-contexts)"
            )
    promoted_by = {}
    for i in progress(used, desc="steering", quiet=quiet, unit="dictionary"):
        promoted_by[i] = promoted_tokens(
            model,
            items[i],
            features[i],
            prefix_tokens,
            prefix_mask,
            targets=options.kl_targets,
            top_s=options.s_size,
            generate_tokens=options.generate_tokens,
            temperature=options.temperature,
            seed=options.seed,
            feature_chunk=options.feature_chunk,
            config_chunk=options.config_chunk,
            max_iter=options.max_iter,
            rtol=options.rtol,
            kl_positions=options.kl_positions,
            alpha_search=options.alpha_search,
            error_term=options.error_term,
            resamples=options.output_resamples,
        )
    generations = _showcase_generations(model, items, used, promoted_by, prefix_tokens, prefix_mask, options)
    rows = []
    judge_error = None
    context_tokens = np.asarray(context_tokens)
    for table in sigs:
        i = index[(table.dictionary, table.layer)]
        d, top, promoted = items[i], contexts_by[i], promoted_by[i]
        where = np.searchsorted(features[i], np.asarray(table.feature_ids))
        token_sets = np.asarray(table.top_ids)[:, : options.k]
        sub_top = TopContexts(
            *(np.asarray(a)[where] for a in (top.features, top.values, top.contexts, top.positions, top.tokens))
        )
        sub_promoted = promoted.take(where)
        if activating_tokens is None:
            scores_in = input_scores(
                sub_top, token_sets, min_contexts=options.min_contexts, match=options.match, vocab=vocab
            )
        else:
            scores_in = _pickled_input_scores(
                activating_tokens, table.layer, np.asarray(table.feature_ids), token_sets, vocab
            )
        scores_out = output_scores(sub_promoted, token_sets, match=options.match, vocab=vocab)
        out_lo, out_hi = output_score_intervals(sub_promoted, token_sets, match=options.match, vocab=vocab)
        judged = [float("nan")] * len(where)
        if judge is not None:
            token_lists = [[str(vocab[t]) for t in row] for row in token_sets]
            shown = [
                [
                    _context_text(context_tokens, int(c), int(p), vocab)
                    for c, p, a in zip(sub_top.contexts[f], sub_top.positions[f], sub_top.active[f])
                    if a
                ][: options.judge_contexts]
                for f in range(len(where))
            ]
            if judge_error is None:
                try:
                    judged = judge_scores(judge, token_lists, shown if options.judge_contexts else None)
                except JudgeError as err:
                    if err.scores is None:
                        raise
                    judged, judge_error = err.scores, str(err)
        for f, feature in enumerate(np.asarray(table.feature_ids)):
            row = {
                "lens": table.lens,
                "family": d.name,
                "dictionary": d.name,
                "layer": d.layer,
                "feature": int(feature),
                "feature_str": d.feature_str(int(feature)),
                "input_score": float(scores_in[f]),
                "output_score": float(scores_out[f]),
                "output_score_lo95": float(out_lo[f]),
                "output_score_hi95": float(out_hi[f]),
                "judge_score": judged[f],
                "active_contexts": int(sub_top.n_active[f]),
                "relative_variance": float(table.stats["relative_variance"][f])
                if "relative_variance" in table.stats
                else float("nan"),
            }
            for t, target in enumerate(promoted.targets):
                row[f"alpha_kl{target:g}"] = float(sub_promoted.alphas[f, t])
                row[f"kl_at_alpha_kl{target:g}"] = float(sub_promoted.kl[f, t])
            row["alphas_reached"] = bool(sub_promoted.reached[f].all())
            rows.append(row)
    scores = SCORES if judge is not None else SCORES[:2]
    per_layer, overall = summarize(rows, scores)
    return EvaluationResult(
        rows,
        per_layer,
        overall,
        [contexts_by[i] for i in used],
        [promoted_by[i] for i in used],
        asdict(options),
        judge_error,
        generations,
        np.asarray(prefix_mask)[: options.showcase_prefixes].sum(1) if generations else None,
        [(items[i].name, items[i].layer) for i in used],
    )


def _showcase_generations(model, items, used, promoted_by, prefix_tokens, prefix_mask, options) -> list[np.ndarray]:
    """Per dictionary in `used`, the first `showcase_prefixes` prefixes continued under steering at
    every calibrated alpha (`steering.steered_generations`); empty when there are none to show."""
    if not options.showcase_prefixes:
        return []
    tokens = jnp.asarray(np.asarray(prefix_tokens)[: options.showcase_prefixes], jnp.int32)
    mask = jnp.asarray(np.asarray(prefix_mask)[: options.showcase_prefixes], bool)
    key = jax.random.fold_in(jax.random.key(options.seed), 1)
    out = []
    for i in used:
        parts = [
            np.asarray(
                steered_generations(
                    model,
                    items[i],
                    tokens,
                    mask,
                    jnp.asarray(promoted_by[i].features[start : start + options.feature_chunk]),
                    jnp.asarray(promoted_by[i].alphas[start : start + options.feature_chunk]),
                    jax.random.fold_in(key, start),
                    generate_tokens=options.showcase_tokens,
                    temperature=options.temperature,
                    config_chunk=options.config_chunk,
                )
            )
            for start in range(0, len(promoted_by[i].features), options.feature_chunk)
        ]
        out.append(np.concatenate(parts))
    return out
