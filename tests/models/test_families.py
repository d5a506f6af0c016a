"""The family registry (converters/families): every family has a parity entry, its spec agrees
with the hook table and the PyTorch reference, no key is silent by accident (DESIGN: issue 25
item 7): every key a family calls inert leaves transformers' logits unchanged, and every key it
reads changes the converted model in its parity entry."""

import numpy as np
import pytest
import torch
import transformers

import converters
from benchmarks import reference_torch as rt
from converters.families import COMMON_INERT_KEYS, REGISTRY, family
from qlens_jax.dictionaries import has_post_norms
from tiny_models import ARCHITECTURES, build_hf_model, hf_forward, padded_batch

# One entry of tests/tiny_models.py per family whose config sets every key the family reads to
# a value that changes the logits (checked below).
BITING = {
    "gpt2": "gpt2-untied-scaled",
    "llama": "llama-every-key",
    "qwen2": "qwen2-yarn",
    "qwen3": "qwen3-every-key",
    "gemma3_text": "gemma3-every-key",
    "gemma2": "gemma2-softcaps",
    "gemma": "gemma-geglu",
    "mistral": "mistral-sliding",
    "gpt_neox": "neox-sequential",
    "gpt_oss": "gptoss-every-key",
    "qwen3_moe": "qwen3moe-mixed",
    "qwen3_5_text": "qwen35-hybrid",
    "qwen3_5_moe_text": "qwen35moe-hybrid",
}
# Keys a family reads that its biting entry leaves at transformers' default, and why.
AT_DEFAULT = {
    ("gemma", "hidden_act"): "transformers rewrites the legacy 'gelu' to the default tanh GELU (tested apart)",
    ("qwen2", "layer_types"): "only full attention is implemented (sliding layers refused by name)",
    ("qwen3", "layer_types"): "only full attention is implemented (sliding layers refused by name)",
    ("gemma3_text", "_sliding_window_pattern"): "read only without layer_types (tested apart)",
    ("gemma3_text", "attn_logit_softcapping"): "refused when set: transformers' Gemma-3 stores it but never applies it",
    ("qwen3_5_text", "full_attention_interval"): "read only without layer_types (tested apart)",
    ("qwen3_5_moe_text", "full_attention_interval"): "read only without layer_types (tested apart)",
}
# Keys that size the model's tables but do not change its logits (rope families read
# `max_position_embeddings` only for YaRN, tested with qwen2-yarn).
NOT_MATH = {"max_position_embeddings", "n_positions", "vocab_size"}
# Options some family's math reads: none may be inert for every family.
MATH_KEYS = (
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "query_pre_attn_scalar",
    "sliding_window",
    "layer_types",
    "rope_scaling",
    "rope_parameters",
    "rope_theta",
    "use_sliding_window",
)
# A value that would change the logits of a family reading the key.
BITING_VALUES = {
    "final_logit_softcapping": 0.3,
    "attn_logit_softcapping": 0.3,
    "query_pre_attn_scalar": 3,
    "sliding_window": 2,
    "use_sliding_window": True,
    "max_window_layers": 0,
    "sliding_window_pattern": 1,
    "_sliding_window_pattern": 1,
    "rope_local_base_freq": 7.0,
    "rope_theta": 7.0,
    "rope_scaling": {"rope_type": "linear", "factor": 9.0},
    "head_dim": 6,
    "num_key_value_heads": 1,
    "n_positions": 7,
    "hidden_act": "relu",
    "hidden_activation": "relu",
    # inert in eval mode or for inference: dropout, training outputs, the decoder flag
    "attention_probs_dropout_prob": 0.5,
    "classifier_dropout": 0.5,
    "hidden_dropout": 0.5,
    "hidden_dropout_prob": 0.5,
    "is_decoder": True,
    "output_router_logits": True,
    "router_aux_loss_coef": 0.5,
    # OpenAI's names in gpt-oss's official config.json, which transformers never reads
    "experts_per_token": 1,
    "initial_context_length": 7,
    "mtp_num_hidden_layers": 3,
    "mtp_use_dedicated_embeddings": True,
    "intermediate_size": 7,
}


def _config_class(arch):
    return getattr(transformers, ARCHITECTURES[arch][0])


def test_every_family_has_a_biting_parity_entry():
    assert set(BITING) == set(REGISTRY)
    for model_type, arch in BITING.items():
        assert _config_class(arch).model_type == model_type


def test_no_key_some_family_reads_is_inert_for_all():
    assert not COMMON_INERT_KEYS & set(MATH_KEYS)
    for spec in REGISTRY.values():
        assert not (spec.reads | set(spec.required)) & COMMON_INERT_KEYS, spec.model_type


@pytest.mark.parametrize("model_type", sorted(BITING))
def test_spec_agrees_with_hook_table_and_reference(model_type):
    spec, hf = family(model_type), build_hf_model(BITING[model_type])
    config = converters.model_config_from_hf(hf.config.to_dict())
    assert config.model_type == model_type
    assert spec.post_norms == config.post_norms == has_post_norms(model_type)
    assert rt._arch(hf).style == spec.torch_style


def _converted_without(raw, key):
    """The conversion of `raw` without `key` (None where the key cannot be left out)."""
    try:
        return converters.model_config_from_hf({k: v for k, v in raw.items() if k != key})
    except (KeyError, ValueError):  # a shape key, or one the others must agree with
        return None


@pytest.mark.parametrize("model_type", sorted(BITING))
def test_every_key_read_changes_the_converted_model(model_type):
    """In the family's parity entry every key the family reads differs from transformers'
    default, and leaving it out changes the converted config: the parity test exercises it."""
    raw = build_hf_model(BITING[model_type]).config.to_dict()
    default = _config_class(BITING[model_type])().to_dict()
    config = converters.model_config_from_hf(raw)
    at_default, no_effect = [], []
    for key in sorted(family(model_type).reads & set(raw)):
        if (model_type, key) in AT_DEFAULT or key in NOT_MATH:
            continue
        if key in default and raw[key] == default[key]:
            at_default.append(key)
        elif _converted_without(raw, key) == config:
            no_effect.append(key)
    assert not at_default, f"{model_type}: keys read but left at transformers' default: {at_default}"
    assert not no_effect, f"{model_type}: keys read that change nothing: {no_effect}"


@pytest.mark.parametrize("model_type", sorted(BITING))
def test_inert_keys_leave_transformers_and_the_conversion_unchanged(model_type):
    """Every key a family calls inert, set to a value that would bite in a family reading it:
    transformers' logits do not move, and neither does the converted config."""
    spec, arch = family(model_type), BITING[model_type]
    config_cls, model_cls, _ = ARCHITECTURES[arch]
    hf = build_hf_model(arch)
    values = {
        **BITING_VALUES,
        "layer_types": ["sliding_attention"] * hf.config.num_hidden_layers
        if hasattr(hf.config, "num_hidden_layers")
        else ["sliding_attention"] * hf.config.n_layer,
        "rope_parameters": {"rope_type": "linear", "factor": 9.0, "rope_theta": 7.0},
    }
    missing = spec.inert - set(values)
    assert not missing, f"give each inert key a biting value: {sorted(missing)}"
    tokens, mask = padded_batch(hf.config.vocab_size, seq=10)
    want, _ = hf_forward(hf, tokens, mask)
    options = {k: values[k] for k in spec.inert}
    raw = {**hf.config.to_dict(), **options}
    cfg = getattr(transformers, config_cls).from_dict(raw)
    cfg._attn_implementation = "eager"
    with torch.no_grad():
        same = getattr(transformers, model_cls)(cfg).eval()
        same.load_state_dict(hf.state_dict())
    got, _ = hf_forward(same, tokens, mask)
    # Within float rounding: Qwen3-MoE's `output_router_logits` takes another order of the same
    # float operations (differences of 1e-6); a key that mattered would move logits by far more.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert converters.model_config_from_hf(raw) == converters.model_config_from_hf(hf.config.to_dict())


def test_gemma_legacy_gelu_is_the_tanh_approximation():
    raw = build_hf_model("gemma-geglu").config.to_dict()
    assert converters.model_config_from_hf({**raw, "hidden_act": "gelu"}).activation == "gelu_pytorch_tanh"


@pytest.mark.parametrize("model_type, pattern", [("gemma2", 2), ("gemma3_text", 6)])
def test_layers_without_layer_types_follow_transformers_default_pattern(model_type, pattern):
    """Official Gemma-2 configs carry no `layer_types`: the windows follow transformers' default."""
    raw = {k: v for k, v in build_hf_model(BITING[model_type]).config.to_dict().items() if k != "layer_types"}
    raw["num_hidden_layers"] = 7
    want = _config_class(BITING[model_type])(num_hidden_layers=7).layer_types
    assert want.count("full_attention") == 7 // pattern
    windows = converters.model_config_from_hf(raw).sliding_windows
    assert [w > 0 for w in windows] == [t == "sliding_attention" for t in want]
