"""The PyTorch reference at module-output sites (`attn_out`, `z`, `mlp_out`; docs/definitions.md 1b).

Query Lens transports are checked against float64 central finite differences and autograd
through `inputs_embeds`, with hooks written here (not the reference's); first order against
the cases where it is exact and against explicit Jacobians of hand-assembled modules; Logit
Lens against explicit weights. Tiny seeded GPT-2, Llama, Qwen-3 (z wider than d_model),
Gemma-3 (post-norms, a sliding window shorter than the sequence) and Gemma-2 (soft-caps that bite)
models, padded samples.
"""

import copy

import numpy as np
import pytest
import torch

from benchmarks import reference_torch as rt
from tiny_models import build_hf_model

ARCHS = ["gpt2", "llama-gqa2-llama3rope", "qwen3-gqa4-tied", "gemma3-sliding", "qwen3moe-top3-tied", "gemma2-softcaps"]
# Finite differences need a function smooth over the step: a routed-experts model is only
# piecewise smooth (a step of 2e-3 at every position can change some position's top-k choice),
# so it is checked against autograd, which linearizes at the clean choice, instead.
SMOOTH_ARCHS = [arch for arch in ARCHS if not arch.startswith("qwen3moe")]
SITES = ["attn_out", "z", "mlp_out"]
B, S, VALID1 = 2, 8, 6  # second row right-padded; pad run shorter than Gemma's window (4)
LAYER = 1


_MODELS = {}


def model_of(arch, dtype="float32"):
    if (arch, dtype) not in _MODELS:
        if dtype == "float32":
            _MODELS[arch, dtype] = rt.prepare_model(build_hf_model(arch))
        else:
            _MODELS[arch, dtype] = rt.prepare_model(copy.deepcopy(model_of(arch)), dtype)
    return _MODELS[arch, dtype]


def batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, vocab, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, VALID1:] = False
    return tokens, mask


# ---- test-owned access to the HF modules ---------------------------------------------------


def layers_of(model):
    base = model.base_model
    return base.h if hasattr(base, "h") else base.layers


def o_proj(model, b):
    layer = layers_of(model)[b]
    return layer.attn.c_proj if hasattr(layer, "attn") else layer.self_attn.o_proj


def attn_post_norm(model, b):
    layer = layers_of(model)[b]
    return layer.post_attention_layernorm if hasattr(layer, "post_feedforward_layernorm") else None


def site_module(model, site, b):
    """The module whose output is `site` (attn_out / mlp_out: what is added to the residual)."""
    layer = layers_of(model)[b]
    gemma = hasattr(layer, "post_feedforward_layernorm")
    if site == "attn_out":
        return layer.post_attention_layernorm if gemma else (layer.attn if hasattr(layer, "attn") else layer.self_attn)
    if site == "mlp_out":
        return layer.post_feedforward_layernorm if gemma else layer.mlp
    raise ValueError(site)


def mlp_pre_norm(model, b):
    layer = layers_of(model)[b]
    if hasattr(layer, "ln_2"):
        return layer.ln_2
    if hasattr(layer, "pre_feedforward_layernorm"):
        return layer.pre_feedforward_layernorm
    return layer.post_attention_layernorm


def mlp_branch(model, b, h):
    layer = layers_of(model)[b]
    y = layer.mlp(mlp_pre_norm(model, b)(h))
    return layer.post_feedforward_layernorm(y) if hasattr(layer, "post_feedforward_layernorm") else y


def width(model, site):
    proj = o_proj(model, LAYER)
    z_width = proj.in_features if isinstance(proj, torch.nn.Linear) else proj.weight.shape[0]
    return z_width if site == "z" else model.config.hidden_size


def vec(seed, n):
    return torch.randn(n, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)


def run(model, tokens, mask, *, inputs_embeds=None, add=None, capture=()):
    """Run the model, optionally adding `delta` at `(site, b)` and capturing `(site, b)` tensors
    (sites: attn_out, mlp_out, z, resid_mid (the MLP pre-norm's input), final)."""
    got, handles = {}, []

    def first(o):
        return o[0] if isinstance(o, tuple) else o

    def replace(o, fn):
        return (fn(o[0]),) + tuple(o[1:]) if isinstance(o, tuple) else fn(o)

    if add is not None:
        (site, b), delta = add
        if site == "z":
            handles.append(o_proj(model, b).register_forward_pre_hook(lambda m, a: (a[0] + delta,) + tuple(a[1:])))
        else:
            handles.append(
                site_module(model, site, b).register_forward_hook(lambda m, a, o: replace(o, lambda x: x + delta))
            )
    for site, b in capture:
        key = (site, b)
        if site == "z":
            handles.append(o_proj(model, b).register_forward_pre_hook(lambda m, a, key=key: got.__setitem__(key, a[0])))
        elif site == "resid_mid":
            handles.append(
                mlp_pre_norm(model, b).register_forward_pre_hook(lambda m, a, key=key: got.__setitem__(key, a[0]))
            )
        elif site == "final":
            handles.append(
                layers_of(model)[b].register_forward_hook(lambda m, a, o, key=key: got.__setitem__(key, first(o)))
            )
        else:
            handles.append(
                site_module(model, site, b).register_forward_hook(
                    lambda m, a, o, key=key: got.__setitem__(key, first(o))
                )
            )
    try:
        if inputs_embeds is not None:
            model.base_model(inputs_embeds=inputs_embeds, attention_mask=mask.long())
        else:
            model.base_model(input_ids=tokens, attention_mask=mask.long())
    finally:
        for h in handles:
            h.remove()
    return got


def masked_mean(t, mask):
    m = mask.to(t.dtype)[..., None]
    return ((t * m).sum((0, 1)) / m.sum()).detach().numpy()


def assert_close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
    assert err < rtol, f"relative error {err:.3e}"


def fd_step(arch, side):
    """(step, rtol). HF's RMSNorm and eager softmax compute in float32 even in float64 models,
    so only GPT-2 is float64 throughout (docs/reference.md, caveats); the others are limited by
    float32 rounding divided by the step, so they take a larger one (the key objective sums
    every position and component, so it needs the largest: its error is ~2e-5 at 2e-2, ~2e-4
    at 2e-3)."""
    if arch == "gpt2":
        return 1e-4, 1e-6
    return (2e-3 if side == "value" else 2e-2), 2e-4


def central(f, h):
    """Fourth-order central difference of f at 0."""
    return (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)


# ---- Query Lens against finite differences and autograd -------------------------------------


@pytest.mark.parametrize("arch", SMOOTH_ARCHS)
@pytest.mark.parametrize("site", SITES)
def test_value_transport_matches_finite_differences(arch, site):
    model = model_of(arch, "float64")
    tokens, mask = batch(model.config.vocab_size)
    L = len(layers_of(model))
    v = vec(1, width(model, site))
    delta = v.reshape(1, 1, -1) * mask[..., None].double()
    h, rtol = fd_step(arch, "value")
    with torch.no_grad():
        d = central(
            lambda eps: run(model, tokens, mask, add=((site, LAYER), eps * delta), capture=[("final", L - 1)])[
                ("final", L - 1)
            ],
            h,
        )
    m = rt.value_transport(model, tokens, mask, v, site, LAYER)
    assert m.shape == (model.config.hidden_size,)
    assert_close(m, masked_mean(d, mask), rtol)
    per = rt.value_transport(model, tokens, mask, v, site, LAYER, per_position=True)
    assert per.shape == (int(mask.sum()), model.config.hidden_size)
    assert_close(per.mean(0), m, 1e-10)


@pytest.mark.parametrize("site", SITES)
def test_value_transport_through_routed_experts_matches_a_jvp_of_the_hooked_model(site):
    """The routed-experts model in place of finite differences: `torch.func.jvp` of the final
    residual in the amount added at the site, through this file's own hooks."""
    model = model_of("qwen3moe-top3-tied", "float64")
    tokens, mask = batch(model.config.vocab_size)
    L = len(layers_of(model))
    v = vec(1, width(model, site))
    delta = v.reshape(1, 1, -1) * mask[..., None].double()
    final = lambda eps: run(model, tokens, mask, add=((site, LAYER), eps * delta), capture=[("final", L - 1)])[
        ("final", L - 1)
    ]
    _, d = torch.func.jvp(final, (torch.zeros((), dtype=torch.float64),), (torch.ones((), dtype=torch.float64),))
    assert_close(rt.value_transport(model, tokens, mask, v, site, LAYER), masked_mean(d.detach(), mask), 1e-8)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3-sliding"])
@pytest.mark.parametrize("site", SITES)
def test_key_transport_matches_finite_differences(arch, site):
    """d/dx_i of sum over valid q of <k, site_q> with x_i added to resid_pre[0] at every valid
    position is N * w_i: one central difference per embedding coordinate."""
    model = model_of(arch, "float64")
    tokens, mask = batch(model.config.vocab_size)
    k = vec(2, width(model, site))
    emb = model.get_input_embeddings()(tokens).detach()  # includes Gemma's sqrt(d) scale
    h, rtol = fd_step(arch, "key")

    def objective(e):
        x = run(model, tokens, mask, inputs_embeds=e, capture=[(site, LAYER)])[(site, LAYER)]
        return (x * k * mask[..., None]).sum()

    n = int(mask.sum())
    fd = np.zeros(emb.shape[-1])
    with torch.no_grad():
        for i in range(emb.shape[-1]):
            direction = torch.zeros_like(emb)
            direction[..., i] = mask.double()
            fd[i] = float(central(lambda eps: objective(emb + eps * direction), h)) / n
    w = rt.key_transport(model, tokens, mask, k, site, LAYER)
    assert_close(w, fd, rtol)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", SITES)
def test_key_transport_matches_autograd(arch, site):
    model = model_of(arch, "float64")
    tokens, mask = batch(model.config.vocab_size)
    k = vec(3, width(model, site))
    emb = model.get_input_embeddings()(tokens).detach().requires_grad_(True)
    x = run(model, tokens, mask, inputs_embeds=emb, capture=[(site, LAYER)])[(site, LAYER)]
    (grad,) = torch.autograd.grad((x * k * mask[..., None]).sum(), emb)
    assert_close(rt.key_transport(model, tokens, mask, k, site, LAYER), masked_mean(grad, mask), 1e-8)
    per = rt.key_transport(model, tokens, mask, k, site, LAYER, per_position=True)
    assert_close(per, grad[mask].detach().numpy(), 1e-8)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3-sliding"])
def test_module_output_value_equals_the_residual_point_it_is_added_to(arch):
    """docs/definitions.md section 1b: attn_out (after any post-norm) is added straight to resid_mid, mlp_out to
    resid_post, so the value sides agree."""
    model = model_of(arch, "float64")
    tokens, mask = batch(model.config.vocab_size)
    v = vec(4, model.config.hidden_size)
    for site, point in (("attn_out", "resid_mid"), ("mlp_out", "resid_post")):
        assert_close(
            rt.value_transport(model, tokens, mask, v, site, LAYER),
            rt.value_transport(model, tokens, mask, v, point, LAYER),
            1e-10,
        )


# ---- first order ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "qwen3-gqa4-tied"])
def test_first_order_value_of_z_is_exact_at_the_last_block_without_a_post_norm(arch):
    """z of the last block: o_proj (linear), then only the last MLP follows, so the single hop
    is the whole transport; and the first hop is u W_O (explicit weights, bias excluded)."""
    model = model_of(arch, "float64")
    tokens, mask = batch(model.config.vocab_size)
    L = len(layers_of(model))
    u = vec(5, width(model, "z"))
    terms = rt.first_order_value_terms(model, tokens, mask, u, "z", L - 1)
    assert list(terms) == ["direct", f"mlp.{L - 1}"]
    proj = o_proj(model, L - 1)
    W_O = proj.weight.T if isinstance(proj, torch.nn.Linear) else proj.weight  # [z width, d_model]
    assert_close(terms["direct"], (u @ W_O.double()).detach().numpy(), 1e-12)
    assert_close(sum(terms.values()), rt.value_transport(model, tokens, mask, u, "z", L - 1), 1e-9)


def test_first_order_value_direct_term_of_z_is_the_post_norm_jacobian():
    """Gemma-3: direct = mean over valid positions of J(post_norm . o_proj)(z_p) u, by an
    explicit JVP of the hand-assembled map at the captured z; not u W_O."""
    model = model_of("gemma3-sliding", "float64")
    tokens, mask = batch(model.config.vocab_size)
    u = vec(6, width(model, "z"))
    with torch.no_grad():
        z = run(model, tokens, mask, capture=[("z", LAYER)])[("z", LAYER)]
    out = lambda x: attn_post_norm(model, LAYER)(o_proj(model, LAYER)(x))  # noqa: E731
    _, t = torch.func.jvp(out, (z,), (u.reshape(1, 1, -1) * mask[..., None].double(),))
    terms = rt.first_order_value_terms(model, tokens, mask, u, "z", LAYER)
    assert_close(terms["direct"], masked_mean(t, mask), 1e-8)
    plain = (u @ o_proj(model, LAYER).weight.T.double()).detach().numpy()
    assert np.abs(terms["direct"] - plain).max() > 1e-3 * np.abs(plain).max()
    per = rt.first_order_value_terms(model, tokens, mask, u, "z", LAYER, per_position=True)
    assert_close(per["direct"], t[mask].detach().numpy(), 1e-8)
    assert_close(sum(per.values()).mean(0), sum(terms.values()), 1e-10)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("site", ["attn_out", "z"])
def test_first_order_key_is_exact_at_block_zero(arch, site):
    """Attention 0 is the only module between resid_pre[0] and attn_out[0] / z[0]: with the seed
    masked the identity term (the hop through it) is the whole key transport, and it is the only
    term. Without pads the authors' seeding gives the same."""
    model = model_of(arch, "float64")
    tokens, mask = batch(model.config.vocab_size)
    k = vec(7, width(model, site))
    terms = rt.first_order_key_terms(model, tokens, mask, k, site, 0, mask_seed=True)
    assert list(terms) == ["identity"]
    assert_close(terms["identity"], rt.key_transport(model, tokens, mask, k, site, 0), 1e-10)
    full = torch.ones_like(mask)
    assert_close(
        rt.first_order_key(model, tokens, full, k, site, 0), rt.key_transport(model, tokens, full, k, site, 0), 1e-10
    )
    # with pads the default seeds pad queries too, which attend to valid keys
    leaky = rt.first_order_key(model, tokens, mask, k, site, 0)
    assert np.abs(leaky - terms["identity"]).max() > 1e-6 * np.abs(leaky).max()


@pytest.mark.parametrize("arch", ["gpt2", "gemma3-sliding"])
def test_first_order_key_of_mlp_out_starts_with_the_explicit_mlp_vjp(arch):
    """identity = mean over valid positions of J_mlp^T k (the hand-assembled MLP branch, with its
    pre-norm and any post-norm, at the captured resid_mid; seeded everywhere, masked after)."""
    model = model_of(arch, "float64")
    tokens, mask = batch(model.config.vocab_size)
    k = vec(8, model.config.hidden_size)
    with torch.no_grad():
        h = run(model, tokens, mask, capture=[("resid_mid", LAYER)])[("resid_mid", LAYER)]
    _, pull = torch.func.vjp(lambda x: mlp_branch(model, LAYER, x), h)
    (g,) = pull(k.reshape(1, 1, -1).expand_as(h).clone())
    terms = rt.first_order_key_terms(model, tokens, mask, k, "mlp_out", LAYER)
    assert_close(terms["identity"], masked_mean(g, mask), 1e-8)
    per = rt.first_order_key_terms(model, tokens, mask, k, "mlp_out", LAYER, per_position=True)
    assert list(per) == list(terms)
    assert_close(per["identity"], g[mask].detach().numpy(), 1e-8)
    assert_close(sum(per.values()).mean(0), sum(terms.values()), 1e-10)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3-sliding"])
def test_first_order_later_hops_are_the_residual_ones_applied_to_the_first_hop(arch):
    """After the site's own hop the first-order lenses are those of the residual point the site
    writes (value) or whose module produces it (key), applied to the first term."""
    model = model_of(arch, "float64")
    tokens, mask = batch(model.config.vocab_size)
    n_layers = len(layers_of(model))
    for site, point in (("z", "resid_mid"), ("attn_out", "resid_mid"), ("mlp_out", "resid_post")):
        v = vec(9, width(model, site))
        terms = rt.first_order_value_terms(model, tokens, mask, v, site, LAYER)
        assert list(terms) == ["direct"] + rt.module_names(model, site, LAYER, side="value")
        again = rt.first_order_value_terms(model, tokens, mask, terms["direct"], point, LAYER)
        assert list(again) == list(terms)
        for name in terms:
            assert_close(terms[name], again[name], 1e-10)
    for site, point, before in (
        ("z", "resid_pre", 2 * LAYER),
        ("attn_out", "resid_pre", 2 * LAYER),
        ("mlp_out", "resid_mid", 2 * LAYER + 1),
    ):
        k = vec(10, width(model, site))
        for mask_seed in (False, True):
            terms = rt.first_order_key_terms(model, tokens, mask, k, site, LAYER, mask_seed=mask_seed)
            assert len(terms) == 1 + before
            assert list(terms)[1:] == rt.module_names(model, site, LAYER, side="key")
            again = rt.first_order_key_terms(model, tokens, mask, terms["identity"], point, LAYER, mask_seed=mask_seed)
            assert list(again) == list(terms)
            for name in terms:
                assert_close(terms[name], again[name], 1e-10)
    assert rt.module_names(model, "z", LAYER, side="value")[0] == f"mlp.{LAYER}"
    assert len(rt.module_names(model, "mlp_out", LAYER, side="value")) == 2 * (n_layers - LAYER - 1)


# ---- Logit Lens and the signatures function ------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "gemma3-sliding"])
def test_logit_lens_at_module_output_sites(arch):
    model = model_of(arch)
    tokens, mask = batch(model.config.vocab_size)
    W_U = model.get_output_embeddings().weight.detach().double()
    W_E = model.get_input_embeddings().weight.detach().double()  # raw rows (Gemma: unscaled)
    final_norm = model.base_model.ln_f if arch == "gpt2" else model.base_model.norm
    cap = model.config.final_logit_softcapping if arch != "gpt2" else None

    def read(x):
        with torch.no_grad():
            logits = final_norm(x).double() @ W_U.T
        return (logits if cap is None else cap * torch.tanh(logits / cap)).numpy()

    us = torch.stack([vec(11, width(model, "z")), vec(12, width(model, "z"))]).float()
    proj = o_proj(model, LAYER)
    W_O = proj.weight.T if isinstance(proj, torch.nn.Linear) else proj.weight
    got = rt.reference_scores(model, tokens, mask, "logit_lens_value", us, "z", LAYER)
    assert_close(got, read(us @ W_O), 1e-5)  # no o_proj bias, no post-norm
    if proj.bias is not None:
        assert np.abs(read(us @ W_O + proj.bias) - got).max() > 1e-3 * np.abs(got).max()
    vs = torch.stack([vec(13, model.config.hidden_size), vec(14, model.config.hidden_size)]).float()
    for site in ("attn_out", "mlp_out"):
        assert_close(rt.reference_scores(model, tokens, mask, "logit_lens_value", vs, site, LAYER), read(vs), 1e-5)
        assert_close(
            rt.reference_scores(model, tokens, mask, "logit_lens_key", vs, site, LAYER),
            (vs.double() @ W_E.T).numpy(),
            1e-5,
        )
    with pytest.raises(ValueError, match="logit_lens_key is not defined at site 'z'"):
        rt.reference_scores(model, tokens, mask, "logit_lens_key", us, "z", LAYER)
    assert rt.lenses_at_site("z") == tuple(lens for lens in rt.LENSES if lens != "logit_lens_key")
    assert rt.lenses_at_site("attn_out") == rt.LENSES


def test_reference_signatures_are_the_readouts_of_the_vectors():
    model = model_of("qwen3-gqa4-tied")  # z (64 wide) is wider than d_model (48)
    tokens, mask = batch(model.config.vocab_size)
    us = torch.stack([vec(15, 64), vec(16, 64)]).float().numpy()
    ks = torch.stack([vec(17, 64), vec(18, 64)]).float().numpy()
    sig = rt.reference_signatures(model, tokens, mask, "z", LAYER, us, ks, k=5)
    assert tuple(sig) == rt.lenses_at_site("z")
    for lens, got in sig.items():
        assert got["vectors"].shape == (2, 48) and got["scores"].shape == (2, model.config.vocab_size)
        vectors = us if lens.endswith("value") else ks
        np.testing.assert_array_equal(
            got["scores"], rt.reference_scores(model, tokens, mask, lens, vectors, "z", LAYER)
        )
        top, top_scores, bottom, bottom_scores = rt.topk_with_scores(got["scores"], 5)
        np.testing.assert_array_equal(got["top_ids"], top)
        np.testing.assert_array_equal(got["bottom_ids"], bottom)
        np.testing.assert_array_equal(got["top_scores"], top_scores)
        np.testing.assert_array_equal(got["bottom_scores"], bottom_scores)
    assert_close(
        sig["query_lens_value"]["vectors"][1], rt.value_transport(model, tokens, mask, us[1], "z", LAYER), 1e-6
    )
    assert_close(sig["first_order_key"]["vectors"][0], rt.first_order_key(model, tokens, mask, ks[0], "z", LAYER), 1e-6)
    assert_close(
        sig["query_lens_key"]["scores"][0],
        rt.key_readout(model, sig["query_lens_key"]["vectors"][0], tokens, mask),
        1e-6,
    )
    only_value = rt.reference_signatures(model, tokens, mask, "mlp_out", LAYER, us[:, :48], k=3)
    assert set(only_value) == {"logit_lens_value", "first_order_value", "query_lens_value"}


def test_bad_input_is_refused_by_name_before_any_run():
    model = model_of("qwen3-gqa4-tied")
    tokens, mask = batch(model.config.vocab_size)
    calls = []
    handle = layers_of(model)[0].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"z\[1\] needs width 64 \(n_heads \* head_dim\)"):
            rt.reference_scores(model, tokens, mask, "query_lens_value", np.zeros((1, 48)), "z", LAYER)
        with pytest.raises(ValueError, match=r"attn_out\[1\] needs width 48 \(d_model\)"):
            rt.key_transport(model, tokens, mask, np.zeros(64), "attn_out", LAYER)
        with pytest.raises(ValueError, match="logit_lens_key is not defined at site 'z'"):
            rt.reference_signatures(
                model,
                tokens,
                mask,
                "z",
                LAYER,
                np.zeros((1, 64)),
                np.zeros((1, 64)),
                lenses=["query_lens_value", "logit_lens_key"],
            )
        with pytest.raises(ValueError, match="query_lens_key needs key_vectors"):
            rt.reference_signatures(model, tokens, mask, "z", LAYER, np.zeros((1, 64)), lenses=["query_lens_key"])
        with pytest.raises(ValueError, match="site must be one of"):
            rt.value_transport(model, tokens, mask, np.zeros(48), "hook_z", LAYER)
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize("arch", ["gpt2", "gemma3-sliding"])
def test_pad_tokens_do_not_matter_at_module_output_sites(arch):
    model = model_of(arch, "float64")
    tokens, mask = batch(model.config.vocab_size)
    other = tokens.clone()
    other[1, VALID1:] = (other[1, VALID1:] + 17) % model.config.vocab_size
    for site in SITES:
        v, k = vec(19, width(model, site)), vec(20, width(model, site))
        for fn, x, opts in (
            (rt.value_transport, v, {}),
            (rt.key_transport, k, {}),
            (rt.first_order_value, v, {}),
            (rt.first_order_key, k, {"mask_seed": True}),
        ):
            assert_close(
                fn(model, tokens, mask, x, site, LAYER, **opts), fn(model, other, mask, x, site, LAYER, **opts), 1e-12
            )
