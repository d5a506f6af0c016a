"""`baseline_signatures`: the paper's other baselines, in the kernel's output format.

Lenses (docs/definitions.md section 1):
- `zero_out`: mean over valid positions of logits(clean) - logits(feature set to 0).
- `token_change_{a}` (`a` = 1, 5, 10 in the paper; any number is accepted): mean of
  logits(feature clamped to a) - logits(clean).
- `tuned_lens`: `W_U^T LN_final(T_p(v_i))`, `T_p(v) = A_p v + b_p` the tuned-lens translator
  at the point `p` where the dictionary writes (identity at the final residual), as docs/definitions.md
  defines it.
- `tuned_lens_linear` (an option, not in the paper's list): `W_U^T LN_final(A_p v_i)`. The bias
  `b_p` is fitted to whole residual streams and is the same for every feature; next to a value
  vector of small norm it can dominate the readout, while the change a feature makes to a
  hidden state, `T_p(h + v) - T_p(h) = A_p v`, has no bias.
All value-side; each returns a `SignatureTable` per dictionary with the same fields as
`query_lens` (no statistics, no per-layer lists).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from qlens_jax import memory
from qlens_jax.baselines.secant import config_chunk_for, is_secant, mean_differences, secant_spec, sums_logits
from qlens_jax.baselines.splice import write_point
from qlens_jax.baselines.tuned_lens import TUNED_LENS_HINT, TunedLens, final_row, library_points, point_name
from qlens_jax.lens.chunks import plan_chunks
from qlens_jax.lens.options import ExecutionOptions, LensOptions
from qlens_jax.lens.plan import dictionary_list, feature_ids
from qlens_jax.lens.signatures import Signatures, SignatureTable
from qlens_jax.lens.validation import LensRequestError, check_tokens
from qlens_jax.models import Transformer
from qlens_jax.numerics import cast_model, check_precision, matmul_precision
from qlens_jax.progress import progress
from qlens_jax.readout import (
    Layout,
    ReadoutContext,
    check_finite_scores,
    feature_chunk_for,
    identity_scores,
    read_topk,
    unembedding_score_fn,
)

BASELINE_LENSES = ("zero_out", "token_change_1", "token_change_5", "token_change_10", "tuned_lens")
TUNED_LENSES = ("tuned_lens", "tuned_lens_linear")
# Which translator the tuned lenses apply to a dictionary at layer `l`: the one of the residual
# point the dictionary writes ("written", the default), or the library's translator `l`,
# i.e. that of resid_pre[l], with the identity at the last layer ("layer": the authors' code).
TUNED_LENS_POINTS = ("written", "layer")


def tuned_lens_point(dictionary, n_layers: int, choice: str = "written", parallel: bool = False) -> int:
    """The residual point (`points.row`) whose translator the tuned lenses apply to `dictionary`
    (`parallel`: the model's blocks are parallel, GPT-NeoX)."""
    if choice == "layer":
        if dictionary.layer == n_layers - 1:
            return final_row(n_layers)
        return library_points(n_layers)[dictionary.layer]
    return write_point(dictionary, n_layers, parallel)


def _validate(model, dictionaries, lenses, k, translators, point_choice: str = "written"):
    from qlens_jax.dictionaries import refuse_cross_layer, validate_dictionary

    if not lenses:
        raise LensRequestError("no lenses requested")
    refuse_cross_layer(dictionaries, "splicing a dictionary (zero_out, token_change) and the tuned lens")
    unknown = [lens for lens in lenses if lens not in TUNED_LENSES and not is_secant(lens)]
    if unknown:
        raise LensRequestError(
            f"unknown baseline lens(es) {unknown}; choose from {', '.join(BASELINE_LENSES)} "
            "(or token_change_<a>, tuned_lens_linear)"
        )
    if len(set(lenses)) != len(lenses):
        raise LensRequestError(f"a lens is named twice in {list(lenses)}")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= model.config.vocab_size:
        raise LensRequestError(f"k={k} must be an integer in [1, vocab size {model.config.vocab_size}]")
    items = dictionary_list(dictionaries)
    for d in items:
        validate_dictionary(d, model)
    if set(lenses) & set(TUNED_LENSES):
        if translators is None:
            raise LensRequestError(
                "the tuned_lens baselines need translators: train them with train_tuned_lens(...) or "
                "load them with load_tuned_lens(...) / load_tuned_lens_library(...)"
            )
        if not isinstance(translators, TunedLens):
            raise LensRequestError(f"translators must be a TunedLens, got {type(translators).__name__}")
        c = model.config
        if (translators.n_layers, translators.d_model) != (c.n_layers, c.d_model):
            raise LensRequestError(
                f"the tuned lens fits {translators.n_layers} layers of width {translators.d_model}; "
                f"the model has {c.n_layers} of width {c.d_model}"
            )
        if point_choice not in TUNED_LENS_POINTS:
            raise LensRequestError(f"tuned_lens_point {point_choice!r}: choose from {', '.join(TUNED_LENS_POINTS)}")
        for d in items:
            point = tuned_lens_point(d, c.n_layers, point_choice, c.parallel_residual)
            if not translators.has(point):
                raise LensRequestError(
                    f"dictionary {d.name!r} (layer {d.layer}) writes at {point_name(point, c.n_layers)}, where the "
                    f"tuned lens has no translator. {TUNED_LENS_HINT}"
                )
    return items


def _table(lens: str, dictionary, ids: np.ndarray, result: dict) -> SignatureTable:
    """A baseline's `SignatureTable`, once no score of it is NaN or infinite (`NonFiniteScoreError`)."""
    check_finite_scores(result, ids, lens=lens, side="value", dictionary=dictionary.name, layer=dictionary.layer)
    return SignatureTable(lens=lens, dictionary=dictionary.name, layer=dictionary.layer, feature_ids=ids, **result)


def baseline_signatures(
    model: Transformer,
    dictionaries,
    tokens,
    mask=None,
    *,
    lenses: Sequence[str] = BASELINE_LENSES,
    features=None,
    options: LensOptions = LensOptions(),
    execution: ExecutionOptions = ExecutionOptions(),
    translators: TunedLens | None = None,
    config_chunk: int | None = None,
    tuned_lens_point_choice: str = "written",
) -> Signatures:
    """Top-k and bottom-k tokens of each feature under each baseline lens.

    Args mirror `query_lens`: `dictionaries` (a `Dictionary`, a `DictionarySet` or a list),
    `tokens`/`mask` the token sample `[batch, seq]` (right padding; the secant lenses take their
    means over its valid positions), `features` None (all) / indices for every dictionary / a
    dict from dictionary position or `(name, layer)` to indices, and the two option groups:
    from `options` (`LensOptions`) the baselines read `k`, `dtype` (the model is cast to it),
    `precision` (how matrix products multiply, `qlens_jax.numerics`) and
    `remove_final_norm_bias` (applied to `tuned_lens` only: in the secant differences the bias
    cancels); the other fields concern transported lenses and are ignored. From `execution`
    (`ExecutionOptions`) they read `memory_budget_gb`, `sequences_per_chunk`, `feature_chunk`
    and `quiet`. Their own: `translators`, a `TunedLens` (needed for `tuned_lens`);
    `config_chunk`, the secant configurations vmapped at once; `tuned_lens_point_choice`:
    "written" (the translator of the point the dictionary writes) or "layer" (the authors'
    code: translator `layer`, the identity at the last layer; see `TUNED_LENS_POINTS`).

    Cost: the secant lenses run the model from each dictionary's write point once per
    (feature, lens) over the whole sample (the quantity is a finite difference; there is no
    shared operator). Configs are vmapped in chunks of `config_chunk` inside one jitted call per
    token chunk.
    """
    options.check(model.config.vocab_size)
    execution.check()
    check_precision(options.precision)
    model = cast_model(model, options.dtype) if options.dtype != "float32" else model
    with matmul_precision(options.precision):
        return _baseline_signatures(
            model,
            dictionaries,
            tokens,
            mask,
            lenses,
            features,
            options,
            execution,
            translators,
            config_chunk,
            tuned_lens_point_choice,
        )


def _baseline_signatures(
    model, dictionaries, tokens, mask, lenses, features, options, execution, translators, config_chunk, point_choice
) -> Signatures:
    k, memory_budget_gb, sequences_per_chunk = options.k, execution.memory_budget_gb, execution.sequences_per_chunk
    feature_chunk, quiet, tuned_lens_point_choice = execution.feature_chunk, execution.quiet, point_choice
    remove_final_norm_bias = options.remove_final_norm_bias
    lenses = tuple(lenses)
    items = _validate(model, dictionaries, lenses, k, translators, tuned_lens_point_choice)
    tokens, mask = check_tokens(model, tokens, mask)
    budget = memory.budget_bytes(memory_budget_gb)
    plan = plan_chunks(model, tokens.shape, memory_budget_gb, sequences_per_chunk)
    if sequences_per_chunk is None:  # the clean activations of a chunk ([b, s, d_sae]) must fit too
        widest = max(d.d_sae for d in items)
        fit = int(max(1, (0.125 * budget) // (tokens.shape[1] * widest * 4)))
        plan = dataclasses.replace(plan, sequences_per_chunk=min(plan.sequences_per_chunk, fit))
    logits = sums_logits(model)
    chunk = config_chunk or config_chunk_for(model, plan.sequences_per_chunk, tokens.shape[1], budget, logits)
    readout_chunk = feature_chunk or feature_chunk_for(model.config.vocab_size, 0.25 * budget)
    secants = [lens for lens in lenses if is_secant(lens)]
    tables: dict[tuple[str, int], SignatureTable] = {}
    for index, dictionary in enumerate(progress(items, desc="baselines", quiet=quiet, unit="dictionary")):
        ids = feature_ids(features, index, dictionary)
        if len(ids) == 0:
            continue
        if secants:
            specs = [secant_spec(lens) for lens in secants]
            values = np.concatenate([np.full(len(ids), value, np.float32) for value, _ in specs])
            signs = np.concatenate([np.full(len(ids), sign, np.float32) for _, sign in specs])
            group = max(1, int(0.25 * budget // (model.config.vocab_size * 4 * 2))) if logits else None
            diffs = mean_differences(
                model,
                dictionary,
                tokens,
                mask,
                np.tile(ids, len(secants)),
                values,
                signs,
                sequences_per_chunk=plan.sequences_per_chunk,
                config_chunk=chunk,
                group_size=group,
            )
            # differences of mean logits are scores already; of mean final-norm outputs, read by W_U
            score_fn = identity_scores if logits else unembedding_score_fn(model)
            layout = Layout(model.config.vocab_size)
            for j, lens in enumerate(secants):
                result = read_topk(score_fn, diffs[j * len(ids) : (j + 1) * len(ids)], k, readout_chunk, layout)
                tables[(lens, index)] = _table(lens, dictionary, ids, result)
        for lens in (lens for lens in lenses if lens in TUNED_LENSES):
            point = tuned_lens_point(
                dictionary, model.config.n_layers, tuned_lens_point_choice, model.config.parallel_residual
            )
            values = jnp.asarray(dictionary.value_vectors())[jnp.asarray(ids)].astype(jnp.float32)
            vectors = translators.translate(values, point, bias=lens == "tuned_lens")
            context = ReadoutContext(
                model=model,
                key_matrix=model.W_E,
                remove_final_norm_bias=remove_final_norm_bias,
                k=k,
                feature_chunk=readout_chunk,
            )
            result = context.read("value", vectors)
            tables[(lens, index)] = _table(lens, dictionary, ids, result)
    # Same order as query_lens: lens-major, dictionaries in order.
    return Signatures(tables[(lens, i)] for lens in lenses for i in range(len(items)) if (lens, i) in tables)
