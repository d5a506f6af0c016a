"""Every bad input to `load_model` fails early with an error naming the offending thing."""

import json
import os
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import converters
from converters import ConversionError, UnsupportedOptionError
from tiny_models import build_hf_model, gemma3_multimodal_config, save_hf_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_hf_model(build_hf_model("gpt2", seed=5), tmp_path_factory.mktemp("gpt2"))


def _copy(saved, tmp_path, edit_config=None, edit_weights=None):
    target = tmp_path / "model"
    target.mkdir()
    config = json.loads((saved / "config.json").read_text())
    if edit_config:
        edit_config(config)
    (target / "config.json").write_text(json.dumps(config))
    weights = load_file(saved / "model.safetensors")
    if edit_weights:
        edit_weights(weights)
    save_file(weights, target / "model.safetensors")
    return target


def test_missing_weight_file(saved, tmp_path):
    target = _copy(saved, tmp_path)
    (target / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match="no weights in"):
        converters.load_model(target)


def test_missing_config(tmp_path):
    with pytest.raises(ConversionError, match="no config.json"):
        converters.load_model(tmp_path)


def test_truncated_weight_file(saved, tmp_path):
    target = _copy(saved, tmp_path)
    path = target / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="model.safetensors"):
        converters.load_model(target)


def test_unknown_model_type(saved, tmp_path):
    target = _copy(saved, tmp_path, edit_config=lambda c: c.update(model_type="mamba"))
    with pytest.raises(UnsupportedOptionError, match="unknown model_type 'mamba'"):
        converters.load_model(target)


@pytest.mark.parametrize(
    "key, value",
    [("add_cross_attention", True), ("some_new_option", 3), ("activation_function", "swiglu_v9")],
)
def test_unsupported_option_is_named(saved, tmp_path, key, value):
    target = _copy(saved, tmp_path, edit_config=lambda c: c.update({key: value}))
    with pytest.raises(UnsupportedOptionError, match=key if key != "activation_function" else "swiglu_v9"):
        converters.load_model(target)


def test_unsupported_rope_type():
    raw = build_hf_model("llama-mha-tied-linear").config.to_dict()
    raw["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(UnsupportedOptionError, match="dynamic"):
        converters.model_config_from_hf(raw)


def test_gemma_attention_softcap_refused():
    raw = build_hf_model("gemma3-softcap").config.to_dict()
    raw["attn_logit_softcapping"] = 50.0
    with pytest.raises(UnsupportedOptionError, match="attn_logit_softcapping"):
        converters.model_config_from_hf(raw)


@pytest.mark.parametrize(
    "key, value", [("some_new_option", 3), ("use_bidirectional_attention", True), ("hidden_activation", "swiglu_v9")]
)
def test_gemma3_multimodal_text_config_option_is_named(key, value):
    raw = gemma3_multimodal_config().to_dict()
    raw["text_config"][key] = value
    with pytest.raises(UnsupportedOptionError, match=key if key != "hidden_activation" else "swiglu_v9") as err:
        converters.model_config_from_hf(raw)
    if key != "hidden_activation":
        assert "gemma3 (multimodal) text_config" in str(err.value)


def test_gemma3_multimodal_top_level_option_is_named():
    raw = gemma3_multimodal_config().to_dict()
    raw["audio_config"] = {"hidden_size": 8}
    with pytest.raises(UnsupportedOptionError, match="gemma3 \\(multimodal\\) config option.*audio_config"):
        converters.model_config_from_hf(raw)


def test_gemma3_multimodal_final_softcap_refused():
    # Gemma3ForConditionalGeneration never applies it, unlike Gemma3ForCausalLM.
    raw = gemma3_multimodal_config(final_logit_softcapping=30.0).to_dict()
    with pytest.raises(UnsupportedOptionError, match="final_logit_softcapping"):
        converters.model_config_from_hf(raw)


def test_gemma3_multimodal_needs_a_gemma3_text_config():
    raw = gemma3_multimodal_config().to_dict()
    raw["text_config"]["model_type"] = "gemma3n_text"
    with pytest.raises(UnsupportedOptionError, match="'gemma3n_text'"):
        converters.model_config_from_hf(raw)
    del raw["text_config"]
    with pytest.raises(ConversionError, match="no text_config"):
        converters.model_config_from_hf(raw)


# Pythia-70m-deduped's config.json, shrunk: the legacy rotary keys transformers 5 still reads.
PYTHIA_CONFIG = {
    "architectures": ["GPTNeoXForCausalLM"],
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "gelu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 80,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "gpt_neox",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "rotary_emb_base": 10000,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.24.0",
    "use_cache": True,
    "use_parallel_residual": True,
    "vocab_size": 113,
}


def test_pythia_legacy_config_converts_as_transformers_reads_it():
    """`rotary_pct` / `rotary_emb_base` give what transformers 5 makes of them (`rope_parameters`)."""
    import transformers

    legacy = converters.model_config_from_hf(PYTHIA_CONFIG)
    as_read = transformers.GPTNeoXConfig(**{k: v for k, v in PYTHIA_CONFIG.items() if k != "model_type"}).to_dict()
    assert "rotary_pct" not in as_read and as_read["rope_parameters"]["partial_rotary_factor"] == 0.25
    assert converters.model_config_from_hf(as_read) == legacy
    assert (legacy.parallel_residual, legacy.rotary_dim, legacy.head_dim) == (True, 4, 16)


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("head_dim", 16, "head_dim"),  # transformers' GPT-NeoX rotary reads it, its attention does not
        ("rotary_pct", 0.2, "rotary_pct / partial_rotary_factor=0.2"),  # 3.2 -> 3 rotary dimensions: odd
        ("rope_scaling", {"type": "dynamic", "factor": 2.0}, "rope_type 'dynamic'"),
        ("rope_parameters", {"rope_type": "default", "rope_theta": 1e4, "beta_fast": 4}, "beta_fast"),
        ("hidden_act", "swiglu_v9", "swiglu_v9"),
        ("rope_theta", 500.0, "rope_theta"),
    ],
)
def test_gpt_neox_unsupported_option_is_named(key, value, named):
    with pytest.raises(UnsupportedOptionError, match=re.escape(named)):
        converters.model_config_from_hf({**PYTHIA_CONFIG, key: value})


def test_shapes_disagree_with_config(saved, tmp_path):
    target = _copy(saved, tmp_path, edit_config=lambda c: c.update(n_inner=64))
    with pytest.raises(ConversionError, match=r"mlp\.c_fc\.weight.*shape"):
        converters.load_model(target)


def test_missing_tensor(saved, tmp_path):
    target = _copy(saved, tmp_path, edit_weights=lambda w: w.pop("transformer.h.1.ln_2.bias"))
    with pytest.raises(ConversionError, match=r"missing weight 'transformer\.h\.1\.ln_2\.bias'"):
        converters.load_model(target)


def test_unexpected_tensor(saved, tmp_path):
    def add(w):
        w["transformer.h.7.ln_1.weight"] = np.ones(48, np.float32)

    target = _copy(saved, tmp_path, edit_weights=add)
    with pytest.raises(ConversionError, match="does not account for"):
        converters.load_model(target)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights(saved, tmp_path, bad):
    def poison(w):
        w["transformer.h.0.attn.c_proj.weight"][3, 4] = bad

    target = _copy(saved, tmp_path, edit_weights=poison)
    with pytest.raises(ConversionError, match=r"attn\.c_proj\.weight.*NaN or Inf"):
        converters.load_model(target)


def test_hub_id_offline_says_pass_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConversionError, match="pass the local directory"):
        converters.load_model("qlens-test-org/no-such-model")


def test_not_a_path_nor_hub_id():
    with pytest.raises(ConversionError, match="neither an existing path"):
        converters.load_model(os.path.join("no", "such", "dir"))


def test_unknown_dtype(saved):
    with pytest.raises(ConversionError, match="unknown dtype 'float8'"):
        converters.load_model(saved, dtype="float8")


def test_model_config_errors_are_input_errors(saved):
    """A config describing no buildable model is bad input (`InputError`, exit code 2), naming the field."""
    import dataclasses

    from qlens_jax.errors import InputError
    from qlens_jax.models import ModelConfig, ModelConfigError

    config = converters.load_model(saved).config
    with pytest.raises(ModelConfigError, match="ModelConfig.norm must be one of .* got 'batchnorm'") as err:
        dataclasses.replace(config, norm="batchnorm")
    assert isinstance(err.value, InputError)
    with pytest.raises(ModelConfigError, match=r"unknown ModelConfig fields in saved config: \['colour'\]"):
        ModelConfig.from_json(json.dumps({**json.loads(config.to_json()), "colour": 1}))


@pytest.mark.parametrize(
    "arch, key, value, match",
    [
        ("gemma2-softcaps", "use_bidirectional_attention", True, "use_bidirectional_attention=True is not supported"),
        ("gemma2-softcaps", "layer_types", ["chunked_attention"] * 4, "layer type 'chunked_attention'"),
        ("gemma2-softcaps", "rope_parameters", {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}, "dynamic"),
        ("gemma2-softcaps", "sliding_window_pattern", 3, "not supported by the converter: sliding_window_pattern"),
        ("gemma-geglu", "use_bidirectional_attention", True, "use_bidirectional_attention=True is not supported"),
        ("gemma-geglu", "hidden_act", "swiglu_v9", "swiglu_v9"),
        ("gemma-geglu", "attn_logit_softcapping", 50.0, "not supported by the converter: attn_logit_softcapping"),
        ("mistral-sliding", "layer_types", ["full_attention"] * 3, "not supported by the converter: layer_types"),
        ("qwen3-every-key", "layer_types", ["full_attention", "sliding_attention"], "layer_types marks layers \\[1\\]"),
        ("mistral-sliding", "attention_bias", True, "not supported by the converter: attention_bias"),
        ("gptoss-every-key", "layer_types", ["chunked_attention"] * 3, "layer type 'chunked_attention'"),
        ("gptoss-every-key", "rope_parameters", {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}, "dynamic"),
        ("gptoss-every-key", "num_experts_per_tok", 5, "num_experts_per_tok=5 is not supported"),
        ("gptoss-every-key", "swiglu_limit", None, "swiglu_limit=None is not supported"),
        ("gptoss-every-key", "mlp_bias", True, "not supported by the converter: mlp_bias"),
        ("gptoss-every-key", "quantization_config", {"quant_method": "mxfp4"}, "quant_method='mxfp4'.*dequantize"),
    ],
)
def test_unimplemented_options_are_named_by_the_family(arch, key, value, match):
    """Checked on the config alone, before any weight is read or anything compiles."""
    raw = build_hf_model(arch).config.to_dict()
    raw[key] = value
    with pytest.raises(UnsupportedOptionError, match=match):
        converters.model_config_from_hf(raw)
