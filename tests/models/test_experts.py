"""Routed experts (Qwen3-MoE): the routing and its linearization as transformers computes them,
the tiny models' routing far from ties, and the config options refused by name.

Whole-model logits parity is in test_hf_parity.py (its ARCHITECTURES include the MoE models).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import converters
from benchmarks import reference_torch as ref
from converters import UnsupportedOptionError
from converters.checkpoint_files import StateDictSource
from converters.hf_config import model_config_from_hf
from converters.hf_weights import fill_model
from tiny_models import build_hf_model, hf_forward, padded_batch

MOE_MODELS = ["qwen3moe-top2-renorm", "qwen3moe-top3-tied"]
TOL = 1e-4


@pytest.fixture(scope="module", params=MOE_MODELS)
def converted(request):
    hf = build_hf_model(request.param)
    return hf, converters.load_model(hf)


def _routing_probabilities(model, tokens, mask):
    """Every layer's router probabilities at the valid positions, `[layers, positions, experts]`."""
    _, res = model.run_with_residuals(jnp.asarray(tokens), jnp.asarray(mask))
    logits = jnp.einsum("lbsd,lde->lbse", res.mlp_in, model.blocks.mlp.router)
    return np.asarray(jax.nn.softmax(logits, axis=-1))[:, mask]


def test_routing_is_far_from_ties_and_chooses_a_strict_subset(converted):
    """The tiny models' top-k choices are not decided by rounding (the gap between the k-th and
    the next expert's probability is well above float error), and the choices differ between
    positions, so a wrong top-k shows in the logits."""
    hf, model = converted
    tokens, mask = padded_batch(hf.config.vocab_size, seq=12)
    probs = np.sort(_routing_probabilities(model, tokens, mask), axis=-1)[..., ::-1]
    k = model.config.experts_per_token
    assert k < model.config.n_experts
    assert (probs[..., k - 1] - probs[..., k]).min() > 1e-4
    chosen = np.argsort(-_routing_probabilities(model, tokens, mask), axis=-1)[..., :k]
    assert len({tuple(sorted(c)) for c in chosen.reshape(-1, k)}) > 3


def test_parity_would_catch_a_wrong_routing_normalization(converted):
    """With `norm_topk_prob` flipped, the converted model is far from transformers': the logits
    parity tests check the option both ways."""
    hf, model = converted
    raw = hf.config.to_dict()
    raw["norm_topk_prob"] = not raw["norm_topk_prob"]
    wrong = fill_model(model_config_from_hf(raw), StateDictSource(hf.state_dict()))
    tokens, mask = padded_batch(hf.config.vocab_size, seq=12)
    want, _ = hf_forward(hf, tokens, mask)
    got = np.asarray(wrong(jnp.asarray(tokens), jnp.asarray(mask)))
    assert np.abs(got[mask] - want[mask]).max() > 100 * TOL


def test_linearization_matches_torch_func_through_the_transformers_block():
    """JVP and VJP of the MoE MLP at the clean MLP inputs equal `torch.func.jvp` / `vjp` through
    transformers' `Qwen3MoeSparseMoeBlock`: experts fixed at the clean choice, router weights
    differentiated."""
    hf = build_hf_model("qwen3moe-top2-renorm")
    model = converters.load_model(hf)
    tokens, mask = padded_batch(hf.config.vocab_size, seq=12)
    _, res = model.run_with_residuals(jnp.asarray(tokens), jnp.asarray(mask))
    layer = 1
    x = np.array(res.mlp_in[layer])
    rng = np.random.default_rng(0)
    tangent, cotangent = rng.normal(size=x.shape).astype(np.float32), rng.normal(size=x.shape).astype(np.float32)
    block = ref.prepare_model(hf).model.layers[layer].mlp  # eager experts: torch.func goes through them
    torch_out, torch_jvp = torch.func.jvp(block, (torch.as_tensor(x),), (torch.as_tensor(tangent),))
    _, pull = torch.func.vjp(block, torch.as_tensor(x))
    mlp = jax.tree.map(lambda w: w[layer], model.blocks.mlp)
    out, jvp = jax.jvp(mlp, (jnp.asarray(x),), (jnp.asarray(tangent),))
    _, jax_pull = jax.vjp(mlp, jnp.asarray(x))
    for got, want in (
        (out, torch_out),
        (jvp, torch_jvp),
        (jax_pull(jnp.asarray(cotangent))[0], pull(torch.as_tensor(cotangent))[0]),
    ):
        want = want.detach().numpy()
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(np.asarray(got), want, atol=TOL * np.abs(want).max(), rtol=0)
    # The router's own derivative is part of it: without it (weights held constant) the JVP differs.
    frozen = lambda h: _with_constant_weights(mlp, h, jnp.asarray(x))
    _, jvp_frozen = jax.jvp(frozen, (jnp.asarray(x),), (jnp.asarray(tangent),))
    assert np.abs(np.asarray(jvp_frozen) - torch_jvp.detach().numpy()).max() > 100 * TOL


def _with_constant_weights(mlp, h, clean):
    """The MoE MLP at `h` with the routing weights held at their values at `clean`."""
    weights = jax.lax.stop_gradient(mlp.weights(clean))
    gate = jnp.einsum("...d,edf->...ef", h, mlp.gate_proj)
    up = jnp.einsum("...d,edf->...ef", h, mlp.up_proj)
    hidden = jax.nn.silu(gate) * up * weights[..., None]
    return jnp.einsum("...ef,efd->...d", hidden, mlp.down_proj)


def _qwen3_moe_config(**options):
    raw = build_hf_model("qwen3moe-top2-renorm").config.to_dict()
    raw.update(options)
    return raw


@pytest.mark.parametrize(
    "options, message",
    [
        ({"decoder_sparse_step": 0}, "decoder_sparse_step=0"),
        ({"num_experts_per_tok": 7}, "num_experts_per_tok=7"),
        ({"use_sliding_window": True}, "use_sliding_window=True"),
        ({"router_type": "sigmoid"}, "router_type"),
        ({"num_experts": 4}, "num_experts=4 and num_local_experts=6"),
    ],
)
def test_unsupported_options_are_named(options, message):
    with pytest.raises((UnsupportedOptionError, converters.ConversionError), match=message):
        model_config_from_hf(_qwen3_moe_config(**options))


@pytest.mark.parametrize(
    "options, dense",
    [({"mlp_only_layers": [0]}, (0,)), ({"decoder_sparse_step": 2}, (0, 2)), ({"decoder_sparse_step": 3}, (0, 1))],
)
def test_dense_layers_beside_routed_ones_are_the_ones_transformers_chooses(options, dense):
    """`mlp_only_layers` and `decoder_sparse_step` pick the dense layers as transformers'
    `Qwen3MoeDecoderLayer` does (its module types per layer are the reference)."""
    raw = _qwen3_moe_config(**options)
    config = model_config_from_hf(raw)
    hf = build_hf_model("qwen3moe-top2-renorm")
    cfg = type(hf.config).from_dict(raw)
    want = tuple(
        i for i in range(cfg.num_hidden_layers) if type(type(hf)(cfg).model.layers[i].mlp).__name__.endswith("MLP")
    )
    assert config.dense_mlp_layers == want == dense
    assert (config.d_mlp_dense, config.d_mlp, config.n_experts) == (raw["intermediate_size"], 24, 6)


def test_every_layer_dense_is_a_dense_model_and_inert_options_are_accepted():
    """All layers dense (`mlp_only_layers` lists each): a dense gated MLP of `intermediate_size`;
    the router's training options change nothing at inference."""
    raw = _qwen3_moe_config(mlp_only_layers=[0, 1, 2], output_router_logits=True, router_aux_loss_coef=0.5)
    config = model_config_from_hf(raw)
    assert config.n_experts == 0 and config.d_mlp == raw["intermediate_size"] and config.gated_mlp
    routed = model_config_from_hf(_qwen3_moe_config(output_router_logits=True, router_aux_loss_coef=0.5))
    assert (routed.n_experts, routed.experts_per_token, routed.router_renorm, routed.d_mlp) == (6, 2, True, 24)


@pytest.mark.parametrize(
    "hook, site",
    [
        ("model.layers.5", "resid_post"),
        ("model.layers.5.mlp.output", "mlp_out"),
        ("blocks.5.hook_mlp_out", "mlp_out"),
        ("model.layers.5.post_attention_layernorm.output", "mlp_in"),
    ],
)
def test_hook_names_of_qwen3_moe_dictionaries(hook, site):
    """Qwen-Scope's `model.layers.{L}` (Qwen3-30B-A3B) and the MoE block's output, the routed
    sum, resolve to their sites; Qwen3-MoE has no post-norms."""
    from converters.families import family
    from qlens_jax.dictionaries.sites import HookSite, has_post_norms, parse_hook_name

    assert parse_hook_name(hook, "qwen3_moe") == HookSite(5, site)
    assert has_post_norms("qwen3_moe") is family("qwen3_moe").post_norms is False
