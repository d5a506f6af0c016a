"""Builders of what the benchmarks run on: randomly initialised `transformers` models of a shape
from `benchmarks.sizes`, their qlens-jax conversion, seeded token samples and synthetic
dictionaries (built block by block, so that a million-feature dictionary is never held twice).
"""

from __future__ import annotations

import functools


def hf_gpt2(overrides: dict, seed: int):
    """A randomly initialised `GPT2LMHeadModel` (float32, eval mode, eager attention)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(**overrides)
    config._attn_implementation = "eager"
    model = transformers.GPT2LMHeadModel(config).eval()
    return model


def gemma3_layer_types(n_layers: int) -> list[str]:
    """Gemma-3's pattern: every sixth layer global, the others sliding-window."""
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]


def hf_config(spec: dict):
    """The `transformers` config of a size's `hf` entry (GPT-2 when it names no family)."""
    import transformers

    spec = dict(spec)
    family = spec.pop("family", "gpt2")
    if family == "gpt2":
        return transformers.GPT2Config(**spec)
    if family in ("llama", "qwen3"):
        theta = spec.pop("rope_theta")
        config = transformers.LlamaConfig if family == "llama" else transformers.Qwen3Config
        return config(**spec, rope_parameters={"rope_type": "default", "rope_theta": theta})
    if family == "gemma3":
        theta, local = spec.pop("rope_theta"), spec.pop("rope_local_base_freq")
        rope = {
            "full_attention": {"rope_type": "default", "rope_theta": theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        }
        return transformers.Gemma3TextConfig(
            **spec, rope_parameters=rope, layer_types=gemma3_layer_types(spec["num_hidden_layers"])
        )
    raise ValueError(f"unknown model family {family!r} (gpt2, llama, qwen3, gemma3)")


def hf_model(spec: dict, seed: int):
    """A randomly initialised causal LM of `spec` (float32, eval mode, eager attention)."""
    if spec.get("family", "gpt2") == "gpt2":
        return hf_gpt2(spec, seed)
    import torch
    import transformers

    torch.manual_seed(seed)
    config = hf_config(spec)
    config._attn_implementation = "eager"
    classes = {
        "llama": transformers.LlamaForCausalLM,
        "qwen3": transformers.Qwen3ForCausalLM,
        "gemma3": transformers.Gemma3ForCausalLM,
    }
    return classes[spec["family"]](config).eval()


def sample_setting(cfg: dict):
    """The random model of `cfg["hf"]` (seeded), its width and a seeded token sample `[batch, seq]`."""
    hf = hf_model(cfg["hf"], cfg["seed"])
    d = hf.config.hidden_size
    tokens, mask = token_sample(hf.config.vocab_size, cfg["batch"], cfg["seq"], cfg["seed"])
    return hf, d, tokens, mask


def job_bounds(job_layers, n_layers: int) -> dict:
    """`transport_operators`' bounds for a whole-dictionary job on `resid_post` at `job_layers`:
    values transported from the first of them, keys up to the last."""
    from qlens_jax.lens.points import residual_point

    return dict(
        value_from_point=residual_point("resid_post", min(job_layers), n_layers),
        key_to_point=residual_point("resid_post", max(job_layers), n_layers),
    )


def gemma2_model_config(shape: dict, n_layers: int | None = None):
    """A qlens-jax `ModelConfig` of a Gemma-2 `shape` (`sizes.GEMMA2_2B`), built directly;
    `n_layers` cuts it to its first blocks (the pattern of local and global layers is kept)."""
    import math

    from qlens_jax.models import ModelConfig

    layers = n_layers or shape["n_layers"]
    half = shape["head_dim"] // 2
    inv_freq = tuple(1.0 / shape["rope_theta"] ** (2 * i / shape["head_dim"]) for i in range(half))
    return ModelConfig(
        model_type="gemma2",
        vocab_size=shape["vocab_size"],
        d_model=shape["d_model"],
        n_layers=layers,
        n_heads=shape["n_heads"],
        n_kv_heads=shape["n_kv_heads"],
        head_dim=shape["head_dim"],
        d_mlp=shape["d_mlp"],
        norm="rmsnorm",
        norm_eps=shape["norm_eps"],
        activation="gelu_pytorch_tanh",
        gated_mlp=True,
        positional="rope",
        max_positions=shape["max_positions"],
        tie_word_embeddings=True,
        norm_offset=1.0,
        post_norms=True,
        embed_scale=math.sqrt(shape["d_model"]),
        attn_logit_softcap=shape["attn_logit_softcap"],
        final_logit_softcap=shape["final_logit_softcap"],
        attn_scales=(shape["query_pre_attn_scalar"] ** -0.5,) * layers,
        sliding_windows=tuple(shape["sliding_window"] if i % 2 == 0 else 0 for i in range(layers)),
        rope_inv_freq=(inv_freq,) * layers,
        rope_scales=(1.0,) * layers,
    )


def jax_model(hf_model):
    """The converted qlens-jax model of an in-memory transformers model."""
    import converters

    return converters.load_model(hf_model)


def token_sample(vocab: int, batch: int, seq: int, seed: int):
    """Random token ids `[batch, seq]` (seeded) and an all-valid mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, size=(batch, seq)).astype(np.int32), np.ones((batch, seq), bool)


WEIGHT_BLOCK_BYTES = 64 * 2**20  # host memory for one block of synthetic weight rows


def _synthetic_weights(d_model: int, n_features: int, layer: int, seed: int, build):
    """`(W_enc, W_dec)`: unit-norm decoder rows, encoder = standard normal / sqrt(d_model).

    Both are drawn from one seeded generator, decoder first, in row blocks of about
    `WEIGHT_BLOCK_BYTES`: a generator's stream does not depend on how the draws are split, so
    the numbers are those of one draw per matrix. `build(shape, blocks)` assembles a matrix
    from its blocks (in order), so no more than one block is ever held beside it.
    """
    import numpy as np

    rng = np.random.default_rng([seed, layer, n_features])

    def blocks(shape, finish):
        rows = max(1, WEIGHT_BLOCK_BYTES // (4 * shape[1]))
        for start in range(0, shape[0], rows):
            block = rng.standard_normal((min(rows, shape[0] - start), shape[1]), dtype=np.float32)
            finish(block)
            yield block

    def unit_rows(block):
        block /= np.linalg.norm(block, axis=1, keepdims=True)

    def scaled(block):
        block *= np.float32(1.0 / np.sqrt(d_model))

    W_dec = build((n_features, d_model), blocks((n_features, d_model), unit_rows))
    W_enc = build((d_model, n_features), blocks((d_model, n_features), scaled))
    return W_enc, W_dec


def _host_matrix(shape, blocks):
    """A float32 numpy matrix filled with `blocks` of rows, in order."""
    import numpy as np

    out, start = np.empty(shape, np.float32), 0
    for block in blocks:
        out[start : start + len(block)] = block
        start += len(block)
    return out


@functools.cache
def _row_writer():
    """`out[start : start + len(block)] = block` on the device, in place (`out` is donated)."""
    import jax

    write = lambda out, block, start: jax.lax.dynamic_update_slice_in_dim(out, block, start, axis=0)
    return jax.jit(write, donate_argnums=0)


def _device_matrix(shape, blocks):
    """A float32 JAX matrix filled with `blocks` of rows, in order, written in place.

    Converting a whole host matrix instead (`jnp.asarray`) holds it two to three times over
    (the host array, a staging copy, the device buffer) and does so asynchronously: the copy
    goes on after the call returns, so a memory reading taken "after the dictionary" missed
    it and the next phase's peak got it (the million benchmark's readout "grew" with n).
    Here each block is copied and waited for: the peak is the matrix plus one block, and the
    matrix is complete when this returns.
    """
    import jax.numpy as jnp

    out, start = jnp.zeros(shape, jnp.float32), 0
    for block in blocks:
        out = _row_writer()(out, block, start).block_until_ready()
        start += len(block)
    return out


def dictionary_arrays(d_model: int, n_features: int, layer: int, seed: int):
    """Synthetic SAE weights as numpy arrays `(W_enc, W_dec)` (see `_synthetic_weights`)."""
    return _synthetic_weights(d_model, n_features, layer, seed, _host_matrix)


def synthetic_dictionary(d_model: int, n_features: int, layer: int, seed: int, name: str | None = None):
    """A `qlens_jax.dictionaries.Dictionary` SAE on resid_post[layer] with the weights of
    `dictionary_arrays`, built on the device block by block (see `_device_matrix`): ready, and
    never held twice, when this returns."""
    import jax.numpy as jnp

    from qlens_jax.dictionaries import Dictionary

    W_enc, W_dec = _synthetic_weights(d_model, n_features, layer, seed, _device_matrix)
    return Dictionary(
        W_enc=W_enc,
        b_enc=jnp.zeros(n_features, jnp.float32),
        W_dec=W_dec,
        b_dec=jnp.zeros(d_model, jnp.float32),
        layer=layer,
        site_in="resid_post",
        site_out="resid_post",
        kind="sae",
        name=name or f"resid-post-{n_features // 1024}k",
        activation="relu",
    )


def feature_picks(n_features: int, count: int) -> list[int]:
    """`count` feature indices spread over the dictionary (deterministic)."""
    import numpy as np

    return sorted({int(i) for i in np.linspace(0, n_features - 1, count + 2)[1:-1].round()})
