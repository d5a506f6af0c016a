"""The `Dictionary` module, its pure activation / normalization functions, `DictionarySet`,
hook-name parsing, validation against a model, and Hub resolution offline."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

from converters import load_dictionary
from dictionary_helpers import D_IN, D_SAE, TinyModelConfig, assert_close, inputs, np_topk
from qlens_jax.dictionaries import (
    Dictionary,
    DictionaryError,
    DictionarySet,
    activations as act,
    astype,
    estimate_input_scale,
    fold_input_scale,
    parse_hook_name,
    validate_dictionary,
)


def params(seed=0, d_in=D_IN, d_sae=D_SAE, d_out=D_IN):
    g = np.random.default_rng(seed)
    return dict(
        W_enc=jnp.asarray(g.normal(size=(d_in, d_sae)) * 0.3, jnp.float32),
        b_enc=jnp.asarray(g.normal(size=d_sae) * 0.5, jnp.float32),
        W_dec=jnp.asarray(g.normal(size=(d_sae, d_out)) * 0.3, jnp.float32),
        b_dec=jnp.asarray(g.normal(size=d_out) * 0.5, jnp.float32),
    )


def sae(**kw):
    base = dict(
        params(),
        layer=1,
        site_in="resid_post",
        site_out="resid_post",
        kind="sae",
        name="resid-post-48",
        activation="relu",
    )
    return Dictionary(**{**base, **kw})


# ---- activations --------------------------------------------------------------------------
def test_activations_match_numpy():
    pre = inputs((3, D_SAE), seed=1)
    thr = np.linspace(-0.5, 1.0, D_SAE).astype(np.float32)
    assert_close(act.relu(jnp.asarray(pre)), np.maximum(pre, 0))
    assert_close(act.jumprelu(jnp.asarray(pre), jnp.asarray(thr)), np.maximum(pre, 0) * (pre > thr))
    assert_close(act.jumprelu(jnp.asarray(pre), jnp.asarray(thr), rectify=False), pre * (pre > thr))
    assert_close(act.topk(jnp.asarray(pre), 4), np_topk(pre, 4))
    assert_close(act.topk(jnp.asarray(pre - 3), 4, rectify=False), np_topk(pre - 3, 4, rectify=False))
    idx = np.argsort(-np.abs(pre), -1)[:, :4]
    expected = np.zeros_like(pre)
    np.put_along_axis(expected, idx, np.take_along_axis(pre, idx, -1), -1)
    assert_close(act.abstopk(jnp.asarray(pre), 4), expected)
    groups = np.maximum(pre, 0).reshape(3, 6, 8)
    expected = (groups == groups.max(-1, keepdims=True)) * groups
    assert_close(act.groupmax(jnp.asarray(pre), 6), expected.reshape(3, D_SAE))
    mag = inputs((3, D_SAE), seed=2)
    assert_close(act.gated(jnp.asarray(pre), jnp.asarray(mag)), (pre > 0) * np.maximum(mag, 0))


# ---- the module ---------------------------------------------------------------------------
def test_vectors_shapes_and_feature_str():
    d = sae()
    assert (d.d_in, d.d_sae, d.d_out) == (D_IN, D_SAE, D_IN)
    assert d.key_vectors().shape == (D_SAE, D_IN) and d.value_vectors().shape == (D_SAE, D_IN)
    np.testing.assert_array_equal(d.key_vectors()[7], d.W_enc[:, 7])
    np.testing.assert_array_equal(d.value_vectors()[7], d.W_dec[7])
    assert d.feature_str(1234) == "Feature resid-post-48/1/1234"


def test_jit_vmap_and_key_gradient():
    d = sae(apply_b_dec_to_input=True, activation="topk", k=5)
    x = jnp.asarray(inputs((4, D_IN), seed=3))
    eager = d.reconstruct(x)
    assert_close(eqx.filter_jit(lambda m, v: m.reconstruct(v))(d, x), eager)
    assert_close(jax.vmap(d.reconstruct)(x), eager)
    # without input normalization the pre-activation's gradient is exactly the key vector
    jac = jax.jacfwd(d.pre_activation)(x[0])  # [d_sae, d_in]
    assert_close(jac, d.key_vectors())


def test_decode_needs_the_input_for_per_token_normalization():
    d = sae(input_norm="layer_norm")
    x = jnp.asarray(inputs((2, D_IN), seed=4))
    with pytest.raises(DictionaryError, match="pass the input x"):
        d.decode(d.encode(x))
    scaled = sae(input_norm="scale", input_scale=jnp.float32(0.5))
    assert_close(scaled.decode(scaled.encode(x)), scaled.reconstruct(x))


def test_fold_input_scale_keeps_the_function():
    d = sae(input_norm="scale", input_scale=jnp.float32(2.5), apply_b_dec_to_input=True)
    folded = fold_input_scale(d)
    x = jnp.asarray(inputs(seed=5))
    assert folded.input_norm == "none" and folded.input_scale is None
    assert_close(folded.encode(x), d.encode(x))
    assert_close(folded.reconstruct(x), d.reconstruct(x))
    with pytest.raises(DictionaryError, match="no constant input scale"):
        fold_input_scale(folded)


def test_estimate_input_scale():
    acts = inputs((100, D_IN), seed=6)
    expected = np.sqrt(D_IN) / np.linalg.norm(acts, axis=-1).mean()
    assert estimate_input_scale(acts) == pytest.approx(expected)
    d = sae(input_norm="scale", input_scale=jnp.float32(estimate_input_scale(acts)))
    assert d.reconstruct(acts).shape == acts.shape


def test_astype():
    d = astype(sae(threshold=jnp.ones(D_SAE), activation="jumprelu"), jnp.bfloat16)
    assert d.W_enc.dtype == jnp.bfloat16 and d.threshold.dtype == jnp.bfloat16
    assert d.encode(inputs((D_IN,))).dtype == jnp.float32  # math runs in float32


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"activation": "jumprelu"}, "needs threshold"),
        ({"activation": "topk", "k": D_SAE + 1}, "integer k"),
        ({"activation": "groupmax", "k": 5}, "divisible"),
        ({"activation": "softmax"}, "unknown activation"),
        ({"site_out": "resid_pre"}, "an SAE reads and writes"),
        ({"site_in": "mlp_in", "site_out": "mlp_in"}, "an SAE reads and writes"),
        ({"kind": "transcoder"}, "a transcoder reads"),
        ({"kind": "crosscoder"}, "unknown kind"),
        ({"layer": -1}, "non-negative"),
        ({"input_norm": "scale"}, "go together"),
    ],
)
def test_invalid_modules(kw, match):
    with pytest.raises(DictionaryError, match=match):
        sae(**kw)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"b_enc": jnp.zeros(3)}, "b_enc"),
        ({"W_skip": jnp.zeros((D_IN, D_IN + 1))}, "W_skip"),
    ],
)
def test_wrong_shapes_are_refused(kw, match):
    # with jaxtyping's runtime checks on, its TypeCheckError comes first; without, ours does
    with pytest.raises((DictionaryError, TypeCheckError), match=match):
        sae(**kw)


def test_transcoder_with_different_widths():
    p = params(d_out=D_IN + 8)
    d = Dictionary(
        **p,
        layer=0,
        site_in="mlp_in",
        site_out="mlp_out",
        kind="transcoder",
        name="transcoder-48",
        activation="relu",
        W_skip=jnp.ones((D_IN + 8, D_IN)),
    )
    assert d.reconstruct(inputs((D_IN,))).shape == (D_IN + 8,)
    with pytest.raises(DictionaryError, match="apply_b_dec_to_input needs d_in == d_out"):
        dataclasses.replace(d, apply_b_dec_to_input=True)


# ---- sets and validation ------------------------------------------------------------------
def test_dictionary_set():
    a, b = sae(), sae(layer=3, name="resid-post-48")
    c = sae(layer=3, name="other")
    s = DictionarySet([a, b, c], TinyModelConfig())
    assert len(s) == 3 and s.layers == (1, 3, 3) and s.names == ("resid-post-48", "resid-post-48", "other")
    assert s[1] is b and s.at_layer(3) == (b, c) and s.get("other", 3) is c
    with pytest.raises(KeyError):
        s.get("other", 1)
    # the kernel can take it whole through jit
    x = jnp.asarray(inputs((D_IN,)))
    out = eqx.filter_jit(lambda ds, v: [d.encode(v) for d in ds])(s, x)
    assert_close(out[2], c.encode(x))
    with pytest.raises(DictionaryError, match="at least one"):
        DictionarySet([])
    with pytest.raises((DictionaryError, TypeCheckError), match="(not a Dictionary|DictionarySet.__init__)"):
        DictionarySet([a, "b"])
    with pytest.raises(DictionaryError, match="d_model=32"):
        s.validate(TinyModelConfig(d_model=32))


def test_validation_accepts_real_config_and_model_like_objects():
    from qlens_jax.models import ModelConfig

    n = 4
    config = ModelConfig(
        model_type="gpt2",
        vocab_size=10,
        d_model=D_IN,
        n_layers=n,
        n_heads=2,
        n_kv_heads=2,
        head_dim=8,
        d_mlp=32,
        norm="layernorm",
        norm_eps=1e-5,
        activation="gelu",
        gated_mlp=False,
        positional="learned",
        max_positions=8,
        tie_word_embeddings=True,
        attn_scales=(1.0,) * n,
        sliding_windows=(0,) * n,
        rope_scales=(1.0,) * n,
    )
    d = sae()
    validate_dictionary(d, config)

    @dataclasses.dataclass
    class FakeTransformer:
        config: object

    validate_dictionary(d, FakeTransformer(config))
    with pytest.raises(DictionaryError, match="layer 1 but the model has layers 0..0"):
        validate_dictionary(
            d, dataclasses.replace(config, n_layers=1, attn_scales=(1.0,), sliding_windows=(0,), rope_scales=(1.0,))
        )
    with pytest.raises(TypeError, match="expected a qlens_jax Transformer or ModelConfig"):
        validate_dictionary(d, object())


def test_recorded_hook_is_rechecked():
    from qlens_jax.dictionaries import DictionaryInfo

    d = sae(info=DictionaryInfo(hook_name="blocks.2.hook_resid_post"))
    with pytest.raises(
        DictionaryError,
        match="'blocks.2.hook_resid_post' is layer 2 site resid_post, but the dictionary is placed at layer 1",
    ):
        validate_dictionary(d, TinyModelConfig())


@pytest.mark.parametrize("site,hook", [("resid_mid", None), ("resid_mid", "blocks.1.hook_resid_mid")])
def test_resid_mid_of_a_parallel_block_is_refused(site, hook):
    """GPT-NeoX's parallel blocks have no resid_mid (docs/definitions.md section 1c): an SAE placed there,
    by site or by hook name, is refused naming the sites the block has; a transcoder reading
    the MLP block input (TransformerLens `hook_mlp_in`, a copy of resid_pre there) is not."""
    from qlens_jax.dictionaries import DictionaryInfo
    from qlens_jax.dictionaries.validation import ModelFacts

    parallel = ModelFacts(D_IN, 4, "gpt_neox", 2, D_IN // 2, parallel_residual=True)
    d = sae(site_in=site, site_out=site, info=DictionaryInfo(hook_name=hook))
    validate_dictionary(d, dataclasses.replace(parallel, parallel_residual=False))
    with pytest.raises(
        DictionaryError,
        match="placed at resid_mid, but the blocks of this gpt_neox model are parallel"
        ".*resid_pre, resid_post, attn_out, z, mlp_out",
    ):
        validate_dictionary(d, parallel)
    validate_dictionary(
        sae(
            site_in="resid_mid",
            site_out="mlp_out",
            kind="transcoder",
            info=DictionaryInfo(hook_name="blocks.1.hook_mlp_in"),
        ),
        parallel,
    )


@pytest.mark.parametrize(
    "name,model_type,expected",
    [
        ("blocks.3.hook_resid_pre", None, (3, "resid_pre")),
        ("blocks.3.hook_resid_mid", None, (3, "resid_mid")),
        ("blocks.3.hook_resid_post", None, (3, "resid_post")),
        ("blocks.3.ln2.hook_normalized", None, (3, "mlp_in")),
        ("blocks.3.mlp.hook_in", None, (3, "mlp_in")),
        ("blocks.3.hook_mlp_in", None, (3, "resid_mid")),
        ("blocks.3.hook_mlp_out", None, (3, "mlp_out")),
        ("model.layers.3", None, (3, "resid_post")),
        ("model.layers.3.output", None, (3, "resid_post")),
        ("layers.3", None, (3, "resid_post")),
        ("model.layers.3.pre_feedforward_layernorm.output", None, (3, "mlp_in")),
        ("model.layers.3.post_feedforward_layernorm.output", None, (3, "mlp_out")),
        ("model.layers.3.post_attention_layernorm.output", "qwen3", (3, "mlp_in")),
        ("model.layers.3.mlp.output", "llama", (3, "mlp_out")),
        ("blocks.3.attn.hook_z", None, (3, "z")),
        ("blocks.3.hook_attn_out", None, (3, "attn_out")),
        ("model.layers.3.self_attn.o_proj.input", None, (3, "z")),
        ("model.language_model.layers.3.self_attn.o_proj.input", "gemma3", (3, "z")),
        ("transformer.h.3.attn.c_proj.input", None, (3, "z")),
        ("transformer.h.3.attn.output", None, (3, "attn_out")),
        ("transformer.h.3.attn.c_proj.output", None, (3, "attn_out")),
        ("model.layers.3.self_attn.output", "llama", (3, "attn_out")),
        ("model.layers.3.self_attn.o_proj.output", "qwen3", (3, "attn_out")),
        ("model.layers.3.post_attention_layernorm.output", "gemma3_text", (3, "attn_out")),
        ("model.layers.3.post_attention_layernorm.output", "gemma2", (3, "attn_out")),
        ("model.layers.3.post_attention_layernorm.output", "gemma", (3, "mlp_in")),  # Gemma-1: the MLP's pre-norm
        ("model.layers.3.post_attention_layernorm.output", "mistral", (3, "mlp_in")),
        ("model.layers.3.mlp.output", "gemma", (3, "mlp_out")),
        ("model.layers.3.post_feedforward_layernorm.output", "gemma2", (3, "mlp_out")),
        ("model.layers.3.post_feedforward_layernorm.output", "gemma3_text", (3, "mlp_out")),
        ("model.layers.3.mlp.down_proj.output", "llama", (3, "mlp_out")),
        ("transformer.h.3.mlp.output", "gpt2", (3, "mlp_out")),
        # GPT-NeoX (Pythia): no post-norms; post_attention_layernorm is the MLP's pre-norm (ln2)
        ("gpt_neox.layers.3", "gpt_neox", (3, "resid_post")),
        ("gpt_neox.layers.3.attention.dense.input", "gpt_neox", (3, "z")),
        ("gpt_neox.layers.3.attention.output", "gpt_neox", (3, "attn_out")),
        ("gpt_neox.layers.3.attention.dense.output", "gpt_neox", (3, "attn_out")),
        ("gpt_neox.layers.3.mlp.output", "gpt_neox", (3, "mlp_out")),
        ("gpt_neox.layers.3.mlp.dense_4h_to_h.output", "gpt_neox", (3, "mlp_out")),
        ("gpt_neox.layers.3.post_attention_layernorm.output", "gpt_neox", (3, "mlp_in")),
        # Qwen3.5 (Qwen-Scope: residual SAEs at the layer output): DeltaNet layers' z and attn_out
        ("model.language_model.layers.3", "qwen3_5_text", (3, "resid_post")),
        ("model.layers.3.linear_attn.out_proj.input", "qwen3_5_text", (3, "z")),
        ("model.layers.3.linear_attn.output", "qwen3_5_moe_text", (3, "attn_out")),
        ("model.layers.3.linear_attn.out_proj.output", None, (3, "attn_out")),
        ("model.layers.3.post_attention_layernorm.output", "qwen3_5_text", (3, "mlp_in")),
        ("model.layers.3.mlp.output", "qwen3_5_moe_text", (3, "mlp_out")),
    ],
)
def test_parse_hook_name(name, model_type, expected):
    assert tuple(parse_hook_name(name, model_type)) == expected


@pytest.mark.parametrize(
    "name,model_type,why",
    [
        ("blocks.3.attn.hook_result", None, "attention/MLP-internal point"),
        ("blocks.3.hook_attn_in", None, "attention/MLP-internal point"),
        ("hook_embed", None, "neither a TransformerLens"),
        ("model.layers.3.self_attn.q_proj.output", None, "not a dictionary site"),
        ("model.layers.3.post_attention_layernorm.output", None, "pass the model"),
        # module outputs that Gemma 2/3 normalize before the residual add
        ("model.layers.3.mlp.output", "gemma3_text", "MLP output BEFORE gemma3_text's post_feedforward_layernorm"),
        ("model.layers.3.mlp.down_proj.output", "gemma2", "BEFORE gemma2's post_feedforward_layernorm"),
        (
            "model.layers.3.self_attn.o_proj.output",
            "gemma3_text",
            "attention output BEFORE gemma3_text's post_attention_layernorm.*'post_attention_layernorm.output'",
        ),
        ("model.layers.3.self_attn.output", "gemma3", "BEFORE gemma3's post_attention_layernorm"),
        ("model.layers.3.self_attn.o_proj.output", None, "attn_out except in Gemma 2/3.*pass the model"),
        ("model.layers.3.mlp.output", None, "mlp_out except in Gemma 2/3.*pass the model"),
    ],
)
def test_parse_hook_name_refuses(name, model_type, why):
    with pytest.raises(DictionaryError, match=name.replace(".", r"\.") + ".*" + why):
        parse_hook_name(name, model_type)


# ---- the Hub ------------------------------------------------------------------------------
def test_hub_offline_says_to_download(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for args, kwargs in [
        (("qlens-test/not-cached/blocks.0.hook_resid_post",), {}),
        (("qlens-test/not-cached",), {"path": "layer_3/width_16k/average_l0_9"}),
    ]:
        with pytest.raises(DictionaryError) as err:
            load_dictionary(*args, TinyModelConfig(), cache_dir=tmp_path, **kwargs)
        message = str(err.value)
        assert "qlens-test/not-cached" in message
        assert "Download it first" in message and "pass the local directory" in message
