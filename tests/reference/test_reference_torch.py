"""Tests of the independent PyTorch oracle (benchmarks/reference_torch.py).

Tiny random Hugging Face models (GPT-2, Llama, Qwen-3, GPT-NeoX with parallel blocks, Gemma-3
with a sliding window shorter than the sequence and final logit softcapping). The checks use test-owned mechanisms where
possible (autograd w.r.t. ``inputs_embeds``, HF ``output_hidden_states``, central finite
differences in float64, direct JVPs of hand-assembled module branches), so they do not share
code paths with the implementation under test.
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from benchmarks import reference_torch as rt  # noqa: E402

VOCAB = 97
D = 32
B, S = 2, 8
LENS1 = 5  # valid length of the second (padded) sequence


def _build(arch):
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(
            n_embd=D,
            n_layer=3,
            n_head=4,
            vocab_size=VOCAB,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            initializer_range=0.15,
        )
        model = transformers.GPT2LMHeadModel(cfg)
    elif arch == "llama":
        cfg = transformers.LlamaConfig(
            hidden_size=D,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=VOCAB,
            initializer_range=0.15,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
        model = transformers.LlamaForCausalLM(cfg)
    elif arch == "qwen3":
        cfg = transformers.Qwen3Config(
            hidden_size=D,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=64,
            vocab_size=VOCAB,
            initializer_range=0.15,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = transformers.Qwen3ForCausalLM(cfg)
    elif arch == "gemma3":
        cfg = transformers.Gemma3TextConfig(
            hidden_size=D,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=64,
            vocab_size=VOCAB,
            initializer_range=0.15,
            query_pre_attn_scalar=8,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            final_logit_softcapping=2.0,
        )
        assert cfg.sliding_window < LENS1 < S  # the window matters for valid positions
        model = transformers.Gemma3ForCausalLM(cfg)
        with torch.no_grad():  # non-trivial (1 + w) norm weights
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(0.0, 0.3)
    elif arch == "neox":  # parallel attention and MLP, half of each head rotated
        cfg = transformers.GPTNeoXConfig(
            hidden_size=D,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=VOCAB,
            initializer_range=0.15,
            rotary_pct=0.5,
            use_parallel_residual=True,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = transformers.GPTNeoXForCausalLM(cfg)
    else:
        raise ValueError(arch)
    cfg._attn_implementation = "eager"
    return rt.prepare_model(model, "float32")


_CACHE = {}


def model_of(arch, dtype="float32"):
    key = (arch, dtype)
    if key not in _CACHE:
        if dtype == "float32":
            _CACHE[key] = _build(arch)
        else:
            _CACHE[key] = rt.prepare_model(copy.deepcopy(model_of(arch)), dtype)
    return _CACHE[key]


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, LENS1:] = False
    return tokens, mask


def vec(seed, n=None):
    g = torch.Generator().manual_seed(100 + seed)
    shape = (D,) if n is None else (n, D)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ---- test-owned access to HF modules (written independently of the implementation) ----------


def layers_of(model):
    base = model.base_model
    return base.h if hasattr(base, "h") else base.layers


def attn_branch_output_module(model, b):
    layer = layers_of(model)[b]
    if hasattr(layer, "attn"):
        return layer.attn
    if hasattr(layer, "attention"):  # GPT-NeoX
        return layer.attention
    if hasattr(layer, "pre_feedforward_layernorm"):
        return layer.post_attention_layernorm  # Gemma: post-attention norm output is added
    return layer.self_attn


def mlp_pre_norm(model, b):
    layer = layers_of(model)[b]
    if hasattr(layer, "ln_2"):
        return layer.ln_2
    if hasattr(layer, "pre_feedforward_layernorm"):
        return layer.pre_feedforward_layernorm
    return layer.post_attention_layernorm  # Llama / Qwen


def mlp_branch(model, b, h):
    layer = layers_of(model)[b]
    y = layer.mlp(mlp_pre_norm(model, b)(h))
    if hasattr(layer, "post_feedforward_layernorm"):
        y = layer.post_feedforward_layernorm(y)
    return y


def run_captured(model, tokens, mask, *, inputs_embeds=None, add=None, capture=()):
    """Run the CausalLM; optionally add a tensor at ("resid_post"|"resid_mid", b); capture
    ("resid_post" | "resid_mid" | "mlp_in", b) hidden states. Returns (output, captured)."""
    handles, got = [], {}

    def tup(out, fn):
        return (fn(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else fn(out)

    if add is not None:
        (kind, b), delta = add
        mod = layers_of(model)[b] if kind == "resid_post" else attn_branch_output_module(model, b)
        handles.append(mod.register_forward_hook(lambda m, a, o: tup(o, lambda x: x + delta)))
    for kind, b in capture:
        key = (kind, b)
        if kind == "resid_post":
            handles.append(
                layers_of(model)[b].register_forward_hook(
                    lambda m, a, o, key=key: got.__setitem__(key, o[0] if isinstance(o, tuple) else o)
                )
            )
        elif kind == "resid_mid":
            handles.append(
                mlp_pre_norm(model, b).register_forward_pre_hook(lambda m, a, key=key: got.__setitem__(key, a[0]))
            )
        elif kind == "mlp_in":
            handles.append(
                mlp_pre_norm(model, b).register_forward_hook(lambda m, a, o, key=key: got.__setitem__(key, o))
            )
    try:
        if inputs_embeds is not None:
            out = model(inputs_embeds=inputs_embeds, attention_mask=mask.long(), output_hidden_states=True)
        else:
            out = model(input_ids=tokens, attention_mask=mask.long(), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, got


def masked_mean(t, mask):
    m = mask.to(t.dtype)[..., None]
    return ((t * m).sum((0, 1)) / m.sum()).detach().numpy()


def assert_close(a, b, rtol=1e-4, atol=1e-6):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(b).max(), 1e-12)
    err = np.abs(a - b).max() / scale
    assert err < rtol or np.abs(a - b).max() < atol, f"relative error {err:.3e}"


def hook_ids(model):
    """Ids of all registered forward (pre-)hooks (HF installs some permanent ones itself)."""
    return {
        (name, kind, hid)
        for name, m in model.named_modules()
        for kind, hooks in (("fwd", m._forward_hooks), ("pre", m._forward_pre_hooks))
        for hid in hooks
    }


_HOOKS_BEFORE = {}


def no_hooks_left(model):
    """No hook other than those present after a plain HF forward with output_hidden_states."""
    key = id(model)
    if key not in _HOOKS_BEFORE:
        tokens, mask = batch()
        with torch.no_grad():
            model(input_ids=tokens, attention_mask=mask.long(), output_hidden_states=True)
        _HOOKS_BEFORE[key] = hook_ids(model)
    assert hook_ids(model) <= _HOOKS_BEFORE[key]


ARCHS = ["gpt2", "qwen3", "gemma3"]


# ---- readouts and hook points ------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS + ["llama"])
def test_value_readout_of_final_residual_is_model_logits(arch):
    model = model_of(arch)
    tokens, mask = batch()
    L = len(layers_of(model))
    out, got = run_captured(model, tokens, mask, capture=[("resid_post", L - 1)])
    final = got[("resid_post", L - 1)]
    # HF's last hidden_states entry is post-final-norm; the captured layer output is not.
    assert not torch.allclose(final, out.hidden_states[-1])
    # hidden_states[l + 1] is the output of layer l for l < L - 1 (used by the tests below).
    _, got2 = run_captured(model, tokens, mask, capture=[("resid_post", 0)])
    torch.testing.assert_close(got2[("resid_post", 0)], out.hidden_states[1])
    logits = rt.value_readout(model, final.detach())
    assert_close(logits, out.logits.detach().numpy(), rtol=1e-5)
    assert_close(rt.logit_lens_value(model, final.detach()), out.logits.detach().numpy(), rtol=1e-5)
    if arch == "gemma3":  # softcap follows the config; False disables it
        raw = rt.value_readout(model, final.detach(), softcap=False)
        assert np.abs(raw).max() > 2.5
        assert_close(2.0 * np.tanh(raw / 2.0), logits, rtol=1e-5)
        assert np.abs(logits).max() <= 2.0
    no_hooks_left(model)


def test_final_norm_bias_option_removes_a_feature_independent_term():
    model = model_of("gpt2")
    with torch.no_grad():
        model.transformer.ln_f.bias.normal_(0, 0.5)
    try:
        vs = vec(0, 3).float()
        diff = rt.value_readout(model, vs) - rt.value_readout(model, vs, remove_final_norm_bias=True)
        expected = (model.transformer.ln_f.bias @ model.lm_head.weight.T).detach().numpy()
        for row in diff:
            assert_close(row, expected, rtol=1e-5)
    finally:
        with torch.no_grad():
            model.transformer.ln_f.bias.zero_()


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_key_readouts(arch):
    model = model_of(arch)
    tokens, mask = batch()
    E = model.get_input_embeddings().weight.detach().double().numpy()  # raw rows (Gemma: unscaled)
    ks = vec(1, 2).numpy()
    np.testing.assert_allclose(rt.logit_lens_key(model, ks), ks @ E.T, rtol=1e-5, atol=1e-6)
    toks = tokens.numpy()[mask.numpy()]
    c = E[toks].mean(0)  # frequency weighted (repeats count)
    Dm = E - c
    expected = ks @ (Dm / np.linalg.norm(Dm, axis=1, keepdims=True)).T
    np.testing.assert_allclose(rt.key_readout(model, ks, tokens, mask), expected, rtol=1e-4, atol=1e-6)
    # pads do not enter the centre
    tokens2 = tokens.clone()
    tokens2[1, LENS1:] = 3
    np.testing.assert_array_equal(rt.key_readout(model, ks, tokens2, mask), rt.key_readout(model, ks, tokens, mask))


# ---- transports against independent derivatives ------------------------------------------


def _fd_value(model, tokens, mask, v, point, h):
    """Fourth-order central difference of the mean final residual when eps*v is added at the
    valid positions of ``point`` (eps in {+-h, +-2h})."""
    L = len(layers_of(model))
    delta = v.reshape(1, 1, -1) * mask[..., None].to(v.dtype)

    def final(eps):
        if point[0] == "resid_pre":
            assert point[1] == 0
            emb = model.get_input_embeddings()(tokens)  # includes Gemma's sqrt(d) scale
            _, got = run_captured(model, tokens, mask, inputs_embeds=emb + eps * delta, capture=[("resid_post", L - 1)])
        else:
            _, got = run_captured(model, tokens, mask, add=(point, eps * delta), capture=[("resid_post", L - 1)])
        return got[("resid_post", L - 1)]

    d = (-final(2 * h) + 8 * final(h) - 8 * final(-h) + final(-2 * h)) / (12 * h)
    return masked_mean(d, mask)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("point", [("resid_pre", 0), ("resid_mid", 1), ("resid_post", 0)])
def test_value_transport_matches_finite_differences(arch, point):
    model = model_of(arch, "float64")
    tokens, mask = batch()
    v = vec(2)
    with torch.no_grad():
        fd = _fd_value(model, tokens, mask, v, point, h=1e-4 if arch == "gpt2" else 2e-3)
    m = rt.value_transport(model, tokens, mask, v, point[0], point[1])
    # HF's RMSNorm and eager softmax compute in float32 even in a float64 model, so the finite
    # difference of the Llama-style models is only float32-accurate; GPT-2 is float64 throughout.
    assert_close(m, fd, rtol=1e-6 if arch == "gpt2" else 2e-4)
    per = rt.value_transport(model, tokens, mask, v, point[0], point[1], per_position=True)
    assert per.shape == (int(mask.sum()), D)
    assert_close(per.mean(0), m, rtol=1e-10)
    no_hooks_left(model)


@pytest.mark.parametrize("arch", ARCHS + ["llama", "neox"])
@pytest.mark.parametrize(
    "read",
    [
        ("sae", "resid_post", 1),
        ("sae", "resid_pre", 2),
        ("sae", "resid_pre", 0),
        ("transcoder", None, 1),
        ("transcoder-exact", None, 2),
    ],
)
def test_key_transport_matches_autograd(arch, read):
    model = model_of(arch, "float64")
    tokens, mask = batch()
    k = vec(3)
    kind, site, layer = read
    emb = model.get_input_embeddings()(tokens).detach().requires_grad_(True)
    cap = {"transcoder": [("resid_mid", layer)], "transcoder-exact": [("mlp_in", layer)]}.get(kind, [])
    out, got = run_captured(model, tokens, mask, inputs_embeds=emb, capture=cap)
    if kind == "sae":
        h = out.hidden_states[layer + 1] if site == "resid_post" else out.hidden_states[layer]
    else:
        h = got[cap[0]]
    scalar = (h * k * mask[..., None]).sum()
    (grad,) = torch.autograd.grad(scalar, emb)
    expected = masked_mean(grad, mask)
    exact = kind == "transcoder-exact"
    kw = dict(kind="transcoder", exact_norm=exact) if kind != "sae" else dict(kind="sae")
    w = rt.key_transport(model, tokens, mask, k, site, layer, **kw)
    assert_close(w, expected, rtol=1e-8)
    per = rt.key_transport(model, tokens, mask, k, site, layer, per_position=True, **kw)
    assert_close(per, grad[mask].detach().numpy(), rtol=1e-8)
    if site == "resid_pre" and layer == 0:
        assert_close(w, k.numpy(), rtol=1e-12)
    no_hooks_left(model)


def test_parallel_blocks_transports_and_modules():
    """GPT-NeoX with parallel blocks: a value vector at attn_out[1] enters at resid_post[1] (the
    finite difference of adding it to the attention output), MLP 1 is not after it; a transcoder
    of MLP 1 reads resid_pre[1] (attention 1 is not before it, as the autograd test of its key
    side checks); resid_mid does not exist."""
    model = model_of("neox", "float64")
    tokens, mask = batch()
    v = vec(2)
    with torch.no_grad():
        fd = _fd_value(model, tokens, mask, v, ("resid_mid", 1), h=2e-3)  # added to attention 1's output
    assert_close(rt.value_transport(model, tokens, mask, v, "attn_out", 1), fd, rtol=2e-4)
    assert_close(rt.value_transport(model, tokens, mask, v, "resid_post", 1), fd, rtol=2e-4)
    assert rt.module_names(model, "attn_out", 1, side="value") == ["attn.2", "mlp.2"]
    assert rt.module_names(model, "z", 1, side="value") == ["attn.2", "mlp.2"]
    assert rt.module_names(model, None, 1, kind="transcoder", side="key") == ["attn.0", "mlp.0"]
    assert rt.module_names(model, "mlp_out", 1, side="key") == ["attn.0", "mlp.0"]
    assert rt.module_names(model, "attn_out", 1, side="key") == ["attn.0", "mlp.0"]
    for side in ("value", "key"):
        with pytest.raises(ValueError, match="no resid_mid"):
            rt.module_names(model, "resid_mid", 1, side=side)
    no_hooks_left(model)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["value", "key"])
def test_transport_with_nothing_between_skips_the_model_run_and_keeps_its_numbers(arch, side):
    """Value side at the last layer's resid_post, key side at resid_pre[0]: no module lies
    between the seed and the captured point, so the model is not run (as in the authors'
    code), and the result is bit for bit what running it gave."""
    model = model_of(arch)
    tokens, mask = batch()
    L = len(layers_of(model))
    v = vec(7).float()
    if side == "value":
        point = ("resid_post", L - 1)
        run = lambda tk, mk: rt._jvp(model, tk, mk, point, ("resid_post", L - 1), v)  # noqa: E731
        transport = lambda **kw: rt.value_transport(model, tokens, mask, v, *point, **kw)  # noqa: E731
    else:
        point = ("resid_pre", 0)
        run = lambda tk, mk: rt._vjp(model, tk, mk, ("resid_pre", 0), point, v)  # noqa: E731
        transport = lambda **kw: rt.key_transport(model, tokens, mask, v, *point, **kw)  # noqa: E731
    tk, mk = rt._prep_batch(model, tokens, mask)
    ran = {per: rt._reduce(model, tk, mk, run, per, None) for per in (False, True)}
    calls = []
    handle = layers_of(model)[0].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        skipped = {per: transport(per_position=per) for per in (False, True)}
    finally:
        handle.remove()
    assert calls == []
    for per in (False, True):
        assert skipped[per].dtype == ran[per].dtype
        np.testing.assert_array_equal(skipped[per], ran[per])
    np.testing.assert_array_equal(skipped[True], np.broadcast_to(v.numpy(), (int(mask.sum()), D)))


def test_float32_agrees_with_float64():
    tokens, mask = batch()
    v = vec(4)
    m32 = rt.value_transport(model_of("gemma3"), tokens, mask, v.float(), "resid_post", 0)
    m64 = rt.value_transport(model_of("gemma3", "float64"), tokens, mask, v, "resid_post", 0)
    assert m32.dtype == np.float32 and m64.dtype == np.float64
    assert_close(m32, m64, rtol=1e-4)


# ---- first order ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_first_order_one_module_paths_equal_full_transport(arch):
    model = model_of(arch, "float64")
    tokens, mask = batch()
    L = len(layers_of(model))
    v, k = vec(5), vec(6)
    # value: resid_mid of the last block -> only mlp.{L-1} follows
    terms = rt.first_order_value_terms(model, tokens, mask, v, "resid_mid", L - 1)
    assert list(terms) == ["direct", f"mlp.{L - 1}"]
    np.testing.assert_array_equal(terms["direct"], v.numpy())
    full = rt.value_transport(model, tokens, mask, v, "resid_mid", L - 1)
    assert_close(sum(terms.values()), full, rtol=1e-10)
    # transcoder of the last MLP writes at the final residual: identity
    assert_close(rt.value_transport(model, tokens, mask, v, None, L - 1, kind="transcoder"), v.numpy(), rtol=1e-12)
    assert list(rt.first_order_value_terms(model, tokens, mask, v, None, L - 1, kind="transcoder")) == ["direct"]
    # key: transcoder of MLP 0 reads resid_mid[0] -> only attn.0 precedes
    kt = rt.first_order_key_terms(model, tokens, mask, k, None, 0, kind="transcoder", mask_seed=True)
    assert list(kt) == ["identity", "attn.0"]
    full_k = rt.key_transport(model, tokens, mask, k, None, 0, kind="transcoder")
    assert_close(sum(kt.values()), full_k, rtol=1e-10)
    # without pads the authors' seeding convention is the same
    full_mask = torch.ones_like(mask)
    a = rt.first_order_key(model, tokens, full_mask, k, None, 0, kind="transcoder")
    b = rt.key_transport(model, tokens, full_mask, k, None, 0, kind="transcoder")
    assert_close(a, b, rtol=1e-10)


@pytest.mark.parametrize("arch", ARCHS)
def test_first_order_terms_structure_and_mlp_term_independently(arch):
    model = model_of(arch, "float64")
    tokens, mask = batch()
    L = len(layers_of(model))
    v, k = vec(7), vec(8)
    vt = rt.first_order_value_terms(model, tokens, mask, v, "resid_post", 0)
    assert list(vt) == ["direct"] + [f"{m}.{b}" for b in range(1, L) for m in ("attn", "mlp")]
    assert list(vt) == ["direct"] + rt.module_names(model, "resid_post", 0, side="value")
    assert_close(rt.first_order_value(model, tokens, mask, v, "resid_post", 0), sum(vt.values()), rtol=1e-12)
    kt = rt.first_order_key_terms(model, tokens, mask, k, "resid_mid", 1)
    assert list(kt) == ["identity", "attn.0", "mlp.0", "attn.1"]
    # the MLP term of block 1 by a direct JVP/VJP of the hand-assembled MLP branch at resid_mid[1]
    _, got = run_captured(model, tokens, mask, capture=[("resid_mid", 1)])
    h = got[("resid_mid", 1)].detach()
    mf = mask[..., None].to(h.dtype)
    _, jv = torch.func.jvp(lambda x: mlp_branch(model, 1, x), (h,), (v.reshape(1, 1, -1) * mf,))
    assert_close(vt["mlp.1"], masked_mean(jv, mask), rtol=1e-8)
    kt2 = rt.first_order_key_terms(model, tokens, mask, k, "resid_post", 1)
    _, fn = torch.func.vjp(lambda x: mlp_branch(model, 1, x), h)
    (jk,) = fn(k.reshape(1, 1, -1).expand_as(h))  # seeded everywhere, masked after
    assert_close(kt2["mlp.1"], masked_mean(jk, mask), rtol=1e-8)
    # two or more modules: first order is not the full transport
    full = rt.value_transport(model, tokens, mask, v, "resid_post", 0)
    fo = sum(vt.values())
    assert np.abs(full - fo).max() > 1e-4 * np.abs(full).max()


# ---- padding --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_padded_batch_equals_token_weighted_single_sequences(arch):
    model = model_of(arch, "float64")
    tokens, mask = batch()
    v, k = vec(9), vec(10)
    n0, n1 = S, LENS1
    calls = {
        "value": lambda t, m: rt.value_transport(model, t, m, v, "resid_pre", 1),
        "key": lambda t, m: rt.key_transport(model, t, m, k, "resid_post", 1),
        "fo_value": lambda t, m: rt.first_order_value(model, t, m, v, "resid_mid", 0),
        "fo_key_masked": lambda t, m: rt.first_order_key(model, t, m, k, "resid_post", 1, mask_seed=True),
    }
    for f in calls.values():
        batched = f(tokens, mask)
        a = f(tokens[:1], mask[:1])
        b = f(tokens[1:, :LENS1], mask[1:, :LENS1])
        assert_close(batched, (n0 * a + n1 * b) / (n0 + n1), rtol=1e-9)
    # micro-batching the sample gives the same numbers
    assert_close(
        rt.key_transport(model, tokens, mask, k, "resid_post", 1, batch_size=1), calls["key"](tokens, mask), rtol=1e-12
    )
    assert_close(
        rt.first_order_key(model, tokens, mask, k, "resid_post", 1, batch_size=1),
        rt.first_order_key(model, tokens, mask, k, "resid_post", 1),
        rtol=1e-12,
    )
    per = rt.value_transport(model, tokens, mask, v, "resid_pre", 1, per_position=True, batch_size=1)
    assert per.shape == (n0 + n1, D)
    assert_close(per.mean(0), calls["value"](tokens, mask), rtol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_pad_tokens_only_matter_for_the_authors_first_order_key(arch):
    model = model_of(arch, "float64")
    tokens, mask = batch()
    tokens2 = tokens.clone()
    tokens2[1, LENS1:] = (tokens2[1, LENS1:] + 17) % VOCAB
    v, k = vec(11), vec(12)
    for lens, vecs, opts in [
        ("query_lens_value", v, {}),
        ("query_lens_key", k, {}),
        ("first_order_value", v, {}),
        ("first_order_key", k, {"mask_seed": True}),
    ]:
        a = rt.reference_scores(model, tokens, mask, lens, vecs[None], "resid_post", 1, **opts)
        b = rt.reference_scores(model, tokens2, mask, lens, vecs[None], "resid_post", 1, **opts)
        assert_close(a, b, rtol=1e-12)
    # default (authors') convention: pad queries attending valid keys leak through attention
    a = rt.first_order_key_terms(model, tokens, mask, k, "resid_post", 1)
    b = rt.first_order_key_terms(model, tokens2, mask, k, "resid_post", 1)
    c = rt.first_order_key_terms(model, tokens, mask, k, "resid_post", 1, mask_seed=True)
    for name in ("attn.0", "attn.1"):
        assert np.abs(a[name] - b[name]).max() > 1e-6 * np.abs(a[name]).max(), name
        assert np.abs(a[name] - c[name]).max() > 1e-6 * np.abs(a[name]).max(), name
    for name in ("identity", "mlp.0", "mlp.1"):  # per-position pieces are unaffected
        assert_close(a[name], c[name], rtol=1e-12)


def test_mask_must_be_right_padded():
    model = model_of("gpt2")
    tokens, mask = batch()
    with pytest.raises(ValueError):
        rt.value_transport(model, tokens, mask.flip(-1), vec(0).float(), "resid_post", 0)


# ---- scores, statistics, top-k ------------------------------------------------------------


def test_reference_scores_are_the_readouts_of_the_transports():
    model = model_of("qwen3")
    tokens, mask = batch()
    vs = vec(13, 3).float()
    s = rt.reference_scores(model, tokens, mask, "query_lens_value", vs, "resid_mid", 0)
    assert s.shape == (3, VOCAB) and s.dtype == np.float32
    for i in range(3):
        m = rt.value_transport(model, tokens, mask, vs[i], "resid_mid", 0)
        assert_close(s[i], rt.value_readout(model, m), rtol=1e-6)
    s = rt.reference_scores(model, tokens, mask, "query_lens_key", vs.numpy(), None, 1, kind="transcoder")
    w = rt.key_transport(model, tokens, mask, vs[2], None, 1, kind="transcoder")
    assert_close(s[2], rt.key_readout(model, w, tokens, mask), rtol=1e-6)
    s = rt.reference_scores(model, tokens, mask, "logit_lens_key", vs, "resid_post", 1)
    assert_close(s, vs.numpy() @ model.model.embed_tokens.weight.detach().numpy().T, rtol=1e-5)
    s = rt.reference_scores(model, tokens, mask, "first_order_value", vs[:1], "resid_post", 1)
    assert_close(s[0], rt.value_readout(model, rt.first_order_value(model, tokens, mask, vs[0], "resid_post", 1)))
    with pytest.raises(ValueError):
        rt.reference_scores(model, tokens, mask, "nope", vs, "resid_post", 1)
    with pytest.raises(ValueError):
        rt.reference_scores(model, tokens, mask, "query_lens_value", vs, "resid_nope", 1)
    with pytest.raises(TypeError):
        rt.reference_scores(model, tokens, mask, "query_lens_value", vs, "resid_post", 1, bogus=1)
    no_hooks_left(model)


def test_relative_variance():
    row = np.arange(1.0, 5.0)
    assert rt.relative_variance(np.tile(row, (7, 1))) == 0.0
    assert rt.relative_variance(np.stack([row, -row])) == pytest.approx(1.0)
    g = np.array([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0): E||g-m||^2 = 1, E||g||^2 = 5
    assert rt.relative_variance(g) == pytest.approx(0.2)
    model = model_of("gpt2")
    tokens, mask = batch()
    vs = vec(14, 2).float()
    rv = rt.reference_relative_variance(model, tokens, mask, "query_lens_value", vs, "resid_post", 0)
    assert rv.shape == (2,) and np.all((rv > 0) & (rv < 1))
    per = rt.value_transport(model, tokens, mask, vs[1], "resid_post", 0, per_position=True)
    assert rv[1] == pytest.approx(rt.relative_variance(per))
    per = rt.first_order_key(model, tokens, mask, vs[0], "resid_post", 1, per_position=True)
    assert_close(per.mean(0), rt.first_order_key(model, tokens, mask, vs[0], "resid_post", 1), rtol=1e-5)
    rv = rt.reference_relative_variance(model, tokens, mask, "first_order_key", vs[:1], "resid_post", 1)
    assert rv[0] == pytest.approx(rt.relative_variance(per))


def test_topk():
    scores = np.array([[0.5, 2.0, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, -3.0, 4.0]])
    top, bot = rt.topk(scores, 3)
    np.testing.assert_array_equal(top, [[1, 3, 0], [4, 0, 1]])
    np.testing.assert_array_equal(bot, [[2, 4, 0], [3, 0, 1]])
    t, ts, b, bs = rt.topk_with_scores(scores, 2)
    np.testing.assert_array_equal(ts, [[2.0, 2.0], [4.0, 1.0]])
    np.testing.assert_array_equal(bs, [[-1.0, 0.0], [-3.0, 1.0]])


def test_hooks_and_layers_restored_after_error():
    model = model_of("gpt2")
    tokens, mask = batch()
    layers = model.transformer.h

    def boom(mod, args, out):
        raise RuntimeError("boom")

    h = layers[1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            rt.value_transport(model, tokens, mask, vec(0).float(), "resid_post", 0)
        with pytest.raises(RuntimeError, match="boom"):
            rt.key_transport(model, tokens, mask, vec(0).float(), "resid_post", 1)  # truncated run
        with pytest.raises(RuntimeError, match="boom"):
            rt.first_order_key_terms(model, tokens, mask, vec(0).float(), "resid_post", 1)
    finally:
        h.remove()
    assert model.transformer.h is layers and len(layers) == 3
    no_hooks_left(model)
