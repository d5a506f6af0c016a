"""Shared setup for kernel tests: a tiny model, a dictionary set at several sites, a sample."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import converters
from qlens_jax.dictionaries import Dictionary
from tiny_models import build_hf_model, padded_batch

N_FEATURES = 40
FEATURES = [0, 17, 39]  # requested features (same count as the self-check, one compilation)


def random_dictionary(d_model, layer, site_in, site_out, kind, seed, n=N_FEATURES):
    """A seeded ReLU dictionary `d_model` wide (the heads' width for `z`)."""
    rng = np.random.default_rng(seed)
    return Dictionary(
        W_enc=jnp.asarray(rng.normal(size=(d_model, n)), jnp.float32),
        b_enc=jnp.asarray(rng.normal(size=n), jnp.float32),
        W_dec=jnp.asarray(rng.normal(size=(n, d_model)), jnp.float32),
        b_dec=jnp.asarray(rng.normal(size=d_model), jnp.float32),
        layer=layer,
        site_in=site_in,
        site_out=site_out,
        kind=kind,
        name=f"{kind}-{site_in}",
        activation="relu",
    )


def module_output_dictionaries(config) -> list:
    """SAEs on `z` (layer 0), `attn_out` (layer 1) and `mlp_out` (layer 0)."""
    z_width = config.n_heads * config.head_dim
    return [
        random_dictionary(z_width, 0, "z", "z", "sae", 5),
        random_dictionary(config.d_model, 1, "attn_out", "attn_out", "sae", 6),
        random_dictionary(config.d_model, 0, "mlp_out", "mlp_out", "sae", 7),
    ]


def lenses_for(dictionary) -> tuple[str, ...]:
    """The lenses defined for `dictionary` (Logit Lens's key side is not, at `z`)."""
    import qlens_jax

    return tuple(lens for lens in qlens_jax.LENSES if not (dictionary.site_in == "z" and lens == "logit_lens_key"))


def dictionary_set(d_model: int, n_layers: int, parallel: bool = False) -> list:
    """SAEs at resid_pre / resid_mid / resid_post of different layers, and a transcoder. A
    parallel block has no resid_mid: there, a transcoder reading the MLP block's input
    (TransformerLens `hook_mlp_in`, which is resid_pre) takes the resid_mid SAE's place."""
    last = n_layers - 1
    mid = random_dictionary(d_model, 1, "resid_mid", "resid_mid", "sae", 2)
    if parallel:
        mid = random_dictionary(d_model, 1, "resid_mid", "mlp_out", "transcoder", 2)
    return [
        random_dictionary(d_model, 0, "resid_post", "resid_post", "sae", 1),
        mid,
        random_dictionary(d_model, last, "resid_pre", "resid_pre", "sae", 3),
        random_dictionary(d_model, 1, "mlp_in", "mlp_out", "transcoder", 4),
    ]


def reference_site(dictionary) -> tuple[str | None, str]:
    """(site, kind) as reference_torch names them."""
    if dictionary.kind == "transcoder":
        return None, "transcoder"
    return dictionary.site_in, "sae"


def setup(arch: str, seed: int = 0):
    hf = build_hf_model(arch, seed=seed)
    model = converters.load_model(hf)
    tokens, mask = padded_batch(model.config.vocab_size, batch=4, seq=11, seed=seed)
    c = model.config
    return hf, model, dictionary_set(c.d_model, c.n_layers, c.parallel_residual), tokens, mask
