"""Bad module-output dictionaries: a `z` width that is not `n_heads x head_dim` of the model, a
hook naming a block the model does not have, a hook whose site cannot be told, and malformed
Llama Scope folders. Each error names the file and the expected shape or site."""

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

from converters import load_dictionary
from dictionary_helpers import D_IN, D_SAE, D_Z, TinyModelConfig
from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionaryInfo, validate_dictionary
from test_dictionary_errors import saelens_dir
from test_format_parity import gemma_scope_params, write_gemma_scope_2
from test_module_output_sites import write_llama_scope

Z_SHAPE = re.escape("[n_heads x head_dim] = [4 x 6] = 24")


def _z_saelens_tensors(d: int) -> dict:
    g = np.random.default_rng(1)
    return {
        "W_enc": g.normal(size=(d, D_SAE)).astype(np.float32),
        "W_dec": g.normal(size=(D_SAE, d)).astype(np.float32),
        "b_enc": np.zeros(D_SAE, np.float32),
        "b_dec": np.zeros(d, np.float32),
    }


# ---- z width ------------------------------------------------------------------------------------
def test_z_width_must_be_heads_times_head_dim(tmp_path, model):
    folder = tmp_path / "blocks.2.attn.hook_z"
    saelens_dir(folder, hook="blocks.2.attn.hook_z")  # d_model wide, not n_heads x head_dim
    with pytest.raises(DictionaryError) as err:
        load_dictionary(folder, model)
    message = str(err.value)
    assert str(folder) in message and "reads z" in message
    assert re.search(f"d_in must be {Z_SHAPE} of the model, but it is {D_IN}", message), message


def test_z_width_checked_for_gemma_scope_files(tmp_path):
    gemma = TinyModelConfig(model_type="gemma3_text")
    folder = tmp_path / "attn_out" / "layer_1_width_48_l0_small"
    write_gemma_scope_2(folder, kind="sae", hook_in="model.layers.1.self_attn.o_proj.input")  # d_model wide
    with pytest.raises(DictionaryError, match=re.escape(str(folder)) + f".*reads z.*{Z_SHAPE}"):
        load_dictionary(folder, gemma)
    att = tmp_path / "gemma-scope-2b-pt-att" / "layer_1" / "width_48" / "average_l0_5"
    att.mkdir(parents=True)
    np.savez(att / "params.npz", **gemma_scope_params(0, d_in=D_Z + 8))
    with pytest.raises(DictionaryError, match=re.escape(str(att)) + f".*{Z_SHAPE}.*but it is {D_Z + 8}"):
        load_dictionary(att, TinyModelConfig())


def test_z_needs_the_head_shape_of_the_model(tmp_path):
    folder = tmp_path / "z"
    saelens_dir(folder, hook="blocks.1.attn.hook_z", tensors=_z_saelens_tensors(D_Z), d_in=D_Z)

    class NoHeads:
        d_model, n_layers, model_type = D_IN, 4, "gpt2"

    assert load_dictionary(folder, TinyModelConfig()).site_in == "z"
    with pytest.raises(DictionaryError, match="reads z.*does not say n_heads and head_dim"):
        load_dictionary(folder, NoHeads())


def test_z_validation_with_a_real_model_config():
    from qlens_jax.models import ModelConfig

    n = 2
    config = ModelConfig(
        model_type="gpt2",
        vocab_size=10,
        d_model=D_IN,
        n_layers=n,
        n_heads=4,
        n_kv_heads=4,
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

    def z_dictionary(width):
        g = np.random.default_rng(0)
        return Dictionary(
            W_enc=jnp.asarray(g.normal(size=(width, D_SAE))),
            b_enc=jnp.zeros(D_SAE),
            W_dec=jnp.asarray(g.normal(size=(D_SAE, width))),
            b_dec=jnp.zeros(width),
            layer=1,
            site_in="z",
            site_out="z",
            kind="sae",
            name="z-48",
            activation="relu",
            info=DictionaryInfo(source="z.safetensors"),
        )

    validate_dictionary(z_dictionary(32), config)
    expected = "'z-48' .*from z.safetensors.*" + re.escape("[n_heads x head_dim] = [4 x 8] = 32")
    with pytest.raises(DictionaryError, match=expected):
        validate_dictionary(z_dictionary(D_IN), config)


# ---- blocks the model does not have -------------------------------------------------------------
def test_hook_naming_a_missing_block(tmp_path, model):
    folder = tmp_path / "sae"
    saelens_dir(folder, hook="blocks.6.hook_attn_out")
    expected = (
        re.escape(str(folder)) + r".* is at layer 6 but the model has layers 0\.\.3 "
        r"\(its hook 'blocks\.6\.hook_attn_out' names a block this model does not have\)"
    )
    with pytest.raises(DictionaryError, match=expected):
        load_dictionary(folder, model)
    gemma = TinyModelConfig(model_type="gemma3_text")
    mlp = tmp_path / "mlp_out" / "layer_7_width_48_l0_small"
    write_gemma_scope_2(mlp, kind="sae", hook_in="model.layers.7.post_feedforward_layernorm.output")
    with pytest.raises(DictionaryError, match="layer 7 but the model has layers 0..3.*post_feedforward_layernorm"):
        load_dictionary(mlp, gemma)


# ---- hooks that cannot be placed unambiguously --------------------------------------------------
def test_attn_out_hook_on_the_o_proj_input_is_ambiguous(tmp_path, model):
    """Older sae_lens conversions of Gemma Scope 2 'attn_out' SAEs: TransformerLens hook
    `hook_attn_out`, Hugging Face hook `o_proj.input` (z), width n_heads x head_dim."""
    folder = tmp_path / "both"
    saelens_dir(folder, hook="blocks.2.hook_attn_out", tensors=_z_saelens_tensors(D_Z), d_in=D_Z)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"]["hf_hook_name"] = "model.layers.2.self_attn.o_proj.input"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(DictionaryError) as err:
        load_dictionary(folder, model)
    message = str(err.value)
    for part in (
        str(folder / "cfg.json"),
        "cannot place this dictionary unambiguously",
        "hook_name 'blocks.2.hook_attn_out' says attn_out",
        "hf_hook_name 'model.layers.2.self_attn.o_proj.input' says z",
        f"d_in={D_Z}",
    ):
        assert part in message, (part, message)


def test_attn_out_hook_with_the_width_of_z_is_ambiguous(tmp_path, model):
    folder = tmp_path / "attn_out_z_wide"
    saelens_dir(folder, hook="blocks.2.hook_attn_out", tensors=_z_saelens_tensors(D_Z), d_in=D_Z)
    with pytest.raises(DictionaryError) as err:
        load_dictionary(folder, model)
    message = str(err.value)
    for part in (
        str(folder),
        "cannot be placed unambiguously",
        "'blocks.2.hook_attn_out' says attn_out",
        f"width d_model={D_IN}",
        f"its width {D_Z} is n_heads x head_dim = [4 x 6]",
        "width of z",
    ):
        assert part in message, (part, message)


@pytest.mark.parametrize(
    "hook,model_type,match",
    [
        (
            "model.layers.1.self_attn.o_proj.output",
            "gemma3_text",
            "attention output BEFORE gemma3_text's post_attention_layernorm",
        ),
        ("model.layers.1.mlp.output", "gemma3_text", "MLP output BEFORE gemma3_text's post_feedforward_layernorm"),
        (
            "model.layers.1.self_attn.o_proj.output",
            "gemma2",
            "attention output BEFORE gemma2's post_attention_layernorm",
        ),
        ("model.layers.1.mlp.down_proj.output", "gemma2", "MLP output BEFORE gemma2's post_feedforward_layernorm"),
        ("model.layers.1.self_attn.o_proj.output", None, "attn_out except in Gemma 2/3.*pass the model"),
    ],
)
def test_hf_module_outputs_before_a_post_norm_are_refused(tmp_path, hook, model_type, match):
    saelens_dir(tmp_path, hook=hook)
    model = TinyModelConfig(model_type=model_type) if model_type else None
    with pytest.raises(DictionaryError, match=re.escape(hook) + ".*" + match):
        load_dictionary(tmp_path, model)


@pytest.mark.parametrize(
    "hook,model_type",
    [
        ("model.layers.1.self_attn.o_proj.output", "llama"),  # no post-norm: added straight to the residual
        ("model.layers.1.post_attention_layernorm.output", "gemma3_text"),  # Gemma: after the post-norm
        ("model.layers.1.post_attention_layernorm.output", "gemma2"),
        ("model.layers.1.self_attn.o_proj.output", "gemma"),  # Gemma-1 has no post-norms
        ("model.layers.1.self_attn.output", "mistral"),
    ],
)
def test_hf_attention_output_after_any_post_norm_is_attn_out(tmp_path, hook, model_type):
    saelens_dir(tmp_path, hook=hook)
    d = load_dictionary(tmp_path, TinyModelConfig(model_type=model_type))
    assert (d.layer, d.site_in, d.site_out, d.name) == (1, "attn_out", "attn_out", "attn-out-48")


# ---- Llama Scope ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "folder,hook,cfg,match",
    [
        (
            "Llama3_1-8B-Base-L2TC-8x",
            "blocks.2.ln2.hook_normalized",
            {"hook_point_out": "blocks.2.hook_mlp_out"},
            "hook_point_in 'blocks.2.ln2.hook_normalized' and hook_point_out 'blocks.2.hook_mlp_out' differ",
        ),
        (
            "Llama3_1-8B-Base-L2A-8x",
            "blocks.2.hook_attn_out",
            {"dataset_average_activation_norm": {"in": 1.0, "out": 2.0}},
            "dataset_average_activation_norm in=1.0 and out=2.0 differ",
        ),
        ("Llama3_1-8B-Base-L2A-8x", "blocks.2.hook_attn_out", {"act_fn": "topk"}, "act_fn 'topk' is not supported"),
        (
            "Llama3_1-8B-Base-L2A-8x",
            "blocks.2.hook_attn_out",
            {"apply_decoder_bias_to_pre_encoder": True},
            "apply_decoder_bias_to_pre_encoder=true is not supported",
        ),
        (
            "Llama3_1-8B-Base-L2A-8x",
            "blocks.2.hook_attn_out",
            {"norm_activation": "token-wise"},
            "norm_activation 'token-wise' is not supported",
        ),
        (
            "Llama3_1-8B-Base-L3A-8x",
            "blocks.2.hook_attn_out",
            {},
            "hook_point_in 'blocks.2.hook_attn_out' gives layer 2, but the folder name 'Llama3_1-8B-Base-L3A-8x'",
        ),
        (
            "Llama3_1-8B-Base-L2M-8x",
            "blocks.2.hook_attn_out",
            {},
            "hook_point_in 'blocks.2.hook_attn_out' gives site 'attn_out', but the folder name .* gives site 'mlp_out'",
        ),
    ],
)
def test_llama_scope_refusals(tmp_path, model, folder, hook, cfg, match):
    write_llama_scope(tmp_path / folder, hook_in=hook, **cfg)
    with pytest.raises(DictionaryError, match=re.escape(str(tmp_path / folder)) + ".*" + match):
        load_dictionary(tmp_path / folder, model)


def test_llama_scope_file_checks(tmp_path, model):
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "Llama3_1-8B-Base-L1A-8x"
    write_llama_scope(folder, hook_in="blocks.1.hook_attn_out")
    weights = folder / "checkpoints" / "final.safetensors"
    p = load_file(weights)
    save_file({**p, "encoder.weight": p["encoder.weight"].T.copy()}, weights)
    with pytest.raises(DictionaryError, match=r"final\.safetensors: key 'encoder\.weight'.*transposed"):
        load_dictionary(folder, model)
    weights.unlink()
    with pytest.raises(DictionaryError, match="has hyperparams.json but no checkpoints/final.safetensors"):
        load_dictionary(folder, model)
