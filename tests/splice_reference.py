"""Test helpers (baselines and evaluation): dictionaries with varied options, and the splice written out by hand.

`spliced_logits` is the literal definition (docs/definitions.md section 1): a plain forward pass, block
by block, where the dictionary's site value is replaced by
`decode(a', x) + skip(x) + (value - reconstruct(x))` with `a'` the *full* activation vector
with one entry replaced. Every site is a tensor of the pass written out: the residual points,
the MLP's normalized input and output, and the attention's heads' outputs `z` (before the
output projection and any post-norm) and output `attn_out` (after them). In a parallel block
(GPT-NeoX) the MLP reads the block input and both outputs are added to it. It shares only the model's per-block functions with the code under
test, not its splice (`feature_change`, `run_from`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from qlens_jax.dictionaries import Dictionary
from qlens_jax.models import attention_output, attention_z, mlp_input, mlp_residual


def make_dictionary(d_model, layer, site_in, site_out, kind, seed, n=24, **options) -> Dictionary:
    """A seeded random dictionary `d_model` wide (for `z`: n_heads x head_dim)."""
    rng = np.random.default_rng(seed)
    arrays = dict(
        W_enc=jnp.asarray(rng.normal(size=(d_model, n)) / np.sqrt(d_model), jnp.float32),
        b_enc=jnp.asarray(0.3 * rng.normal(size=n), jnp.float32),
        W_dec=jnp.asarray(rng.normal(size=(n, d_model)) / np.sqrt(d_model), jnp.float32),
        b_dec=jnp.asarray(0.1 * rng.normal(size=d_model), jnp.float32),
    )
    if options.get("activation") == "jumprelu":
        arrays["threshold"] = jnp.asarray(np.abs(0.2 * rng.normal(size=n)), jnp.float32)
    if options.pop("skip", False):
        arrays["W_skip"] = jnp.asarray(0.1 * rng.normal(size=(d_model, d_model)), jnp.float32)
    options.setdefault("activation", "relu")
    return Dictionary(
        **arrays, layer=layer, site_in=site_in, site_out=site_out, kind=kind, name=f"{kind}-{site_in}-{seed}", **options
    )


def _splice(dictionary, x, value, feature, new_value):
    acts = dictionary.encode(x)
    error = value - dictionary.reconstruct(x)
    modified = acts.at[..., feature].set(new_value)
    return dictionary.decode(modified, x) + dictionary.skip(x) + error


@eqx.filter_jit
def spliced_logits(model, tokens, mask, dictionary, feature, new_value):
    """Logits `[b, s, V]` of the forward pass with the dictionary spliced in by hand."""
    d, tokens, mask = dictionary, jnp.asarray(tokens), jnp.asarray(mask)

    def at(site, value):
        """`value` of module-output site `site` in the dictionary's block, spliced if the SAE is there."""
        return _splice(d, value, value, feature, new_value) if d.kind == "sae" and site == d.site_out else value

    parallel = model.config.parallel_residual  # the MLP reads h; both outputs are added to it

    def one(seq, m):
        h = model.embed(seq)
        for b in range(model.config.n_layers):
            block, meta = model.block(b)
            here = d.layer == b
            if here and d.site_in == "resid_pre":
                h = _splice(d, h, h, feature, new_value)
            z = attention_z(block, meta, h, m)  # [s, n_heads * head_dim]
            if here:
                z = at("z", z)
            attn = attention_output(block, z)
            if here:
                attn = at("attn_out", attn)
            mid = h if parallel else h + attn
            if here and d.site_in == "resid_mid" and d.kind == "sae":
                mid = _splice(d, mid, mid, feature, new_value)
            out = mlp_residual(block, mid)
            if here and d.kind == "transcoder":
                x = mlp_input(block, mid) if d.site_in == "mlp_in" else mid
                out = _splice(d, x, out, feature, new_value)
            elif here:
                out = at("mlp_out", out)
            h = mid + attn + out if parallel else mid + out
            if here and d.site_in == "resid_post":
                h = _splice(d, h, h, feature, new_value)
        return model.unembed(h)

    return jax.vmap(one)(tokens, mask)


def mean_over_valid(logits, mask) -> np.ndarray:
    m = np.asarray(mask, np.float64)[..., None]
    return (np.asarray(logits, np.float64) * m).sum((0, 1)) / m.sum()


@eqx.filter_jit
def clean_logits(model, tokens, mask):
    return model(tokens, mask)


def direct_secant(model, tokens, mask, dictionary, feature, lens) -> np.ndarray:
    """The secant lens's score vector over the vocabulary, from two hand-spliced passes."""
    clean = mean_over_valid(clean_logits(model, jnp.asarray(tokens), jnp.asarray(mask)), mask)
    if lens == "zero_out":
        return clean - mean_over_valid(
            spliced_logits(model, tokens, mask, dictionary, jnp.asarray(feature), jnp.float32(0.0)), mask
        )
    value = jnp.float32(float(lens.rsplit("_", 1)[1]))
    return mean_over_valid(spliced_logits(model, tokens, mask, dictionary, jnp.asarray(feature), value), mask) - clean
