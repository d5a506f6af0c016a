"""Secant baselines: zero-out and token change (docs/definitions.md section 1, the paper's Table 1).

With the dictionary spliced in (`splice`), one feature's post-activation is set to a value
at every valid position of the token sample and the model is run on:

    zero_out:          mean_p logits(clean) - mean_p logits(feature := 0)
    token_change_{a}:  mean_p logits(feature := a) - mean_p logits(clean)

means over all valid positions of the sample. Each (feature, value) pair is a *config*; all
configs of a dictionary are mapped over inside one jitted call per token chunk (`lax.map`
with `batch_size`, i.e. vmapped config chunks), and position sums are accumulated over token
chunks. Only the final norm's output is summed when the model has no logit soft-capping
(`mean_p logits = (mean_p LN_final(h_p)) @ W_U` exactly); with soft-capping the logits
themselves are summed. The final norm's bias cancels in every difference.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.baselines.splice import set_feature, splice_point
from qlens_jax.dictionaries import Dictionary
from qlens_jax.lens.chunks import iter_token_chunks
from qlens_jax.lens.transport import run_from
from qlens_jax.models import Transformer

_TOKEN_CHANGE = re.compile(r"^token_change_(\d+(?:\.\d+)?)$")


def is_secant(lens: str) -> bool:
    return lens == "zero_out" or bool(_TOKEN_CHANGE.match(lens))


def secant_spec(lens: str) -> tuple[float, float]:
    """(value the feature is set to, sign of `logits(modified) - logits(clean)`)."""
    if lens == "zero_out":
        return 0.0, -1.0
    match = _TOKEN_CHANGE.match(lens)
    if not match:
        raise ValueError(f"{lens!r} is not a secant lens (zero_out or token_change_<a>)")
    return float(match.group(1)), 1.0


def sums_logits(model: Transformer) -> bool:
    """Whether position sums must be taken over logits (soft-capped models) or the normed residual."""
    return model.config.final_logit_softcap is not None


def _position_sum(
    model: Transformer, final: Float[Array, "b s d"], mask: Bool[Array, "b s"], logits: bool
) -> Float[Array, " D"]:
    y = model.unembed(final) if logits else model.final_norm_fn(final)
    return jnp.einsum("bsd,bs->d", y.astype(jnp.float32), mask.astype(jnp.float32))


@eqx.filter_jit
def secant_sums(
    model: Transformer,
    dictionary: Dictionary,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    features: Int[Array, " n"],
    values: Float[Array, " n"],
    logits: bool,
    config_chunk: int,
) -> tuple[Float[Array, "n D"], Float[Array, " D"]]:
    """Per config, the sum over the chunk's valid positions of `LN_final(final)` (or of the
    logits when `logits`), and the same sum for the clean run."""
    site = splice_point(model, dictionary, tokens, mask)
    clean = _position_sum(model, run_from(model, site.h, mask, site.point), mask, logits)

    def one(args):
        feature, value = args
        return _position_sum(model, set_feature(model, dictionary, site, mask, feature, value), mask, logits)

    return jax.lax.map(one, (features, values), batch_size=config_chunk), clean


def config_chunk_for(model: Transformer, sequences: int, seq: int, budget_bytes: float, logits: bool) -> int:
    """Configs per vmapped chunk so that their forward activations fit a quarter of the budget."""
    c = model.config
    per_token = 10 * c.d_model + 3 * c.d_mlp + 3 * c.n_heads * seq + (c.vocab_size if logits else 0)
    per_config = sequences * seq * per_token * 4
    return int(max(1, min(64, (0.25 * budget_bytes) // per_config)))


def mean_differences(
    model: Transformer,
    dictionary: Dictionary,
    tokens: np.ndarray,
    mask: np.ndarray,
    features: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    signs: Sequence[float] | np.ndarray,
    *,
    sequences_per_chunk: int,
    config_chunk: int,
    group_size: int | None = None,
) -> jax.Array:
    """`sign * (mean_p y(modified) - mean_p y(clean))` per config, `[n, D]` on device, with
    `y` the final norm's output (D = d_model) or, for soft-capped models, the logits (D = vocab).

    Configs are processed in groups of `group_size` (bounds the accumulators); within a group
    every token chunk is one jitted call over all its configs.
    """
    logits = sums_logits(model)
    features = jnp.asarray(np.asarray(features, np.int32))
    values = jnp.asarray(np.asarray(values, np.float32))
    signs = jnp.asarray(np.asarray(signs, np.float32))
    n = int(features.shape[0])
    group_size = group_size or n
    count = float(np.asarray(mask).sum())
    out = []
    for start in range(0, n, group_size):
        group = slice(start, min(n, start + group_size))
        sums, clean = 0.0, 0.0
        for chunk_tokens, chunk_mask in iter_token_chunks(tokens, mask, sequences_per_chunk):
            s, c = secant_sums(
                model,
                dictionary,
                jnp.asarray(chunk_tokens),
                jnp.asarray(chunk_mask),
                features[group],
                values[group],
                logits,
                config_chunk,
            )
            sums, clean = sums + s, clean + c
        out.append(signs[group, None] * (sums - clean[None]) / count)
    return jnp.concatenate(out)
