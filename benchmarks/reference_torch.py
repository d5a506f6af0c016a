"""Independent per-feature Query Lens in PyTorch over Hugging Face ``transformers`` models.

This module is the oracle that the JAX engine (``qlens_jax``) is tested against and the
baseline of the throughput benchmark. It deliberately imports nothing from ``qlens_jax``: it
reimplements the definitions of ``docs/definitions.md`` sections 1-3 directly on the Hugging Face modules,
one Jacobian pass (``torch.func.jvp`` / ``torch.func.vjp``) per feature vector, like the
authors' implementation.

Supported models: ``GPT2LMHeadModel``, Llama-style causal LMs (``LlamaForCausalLM``,
``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``, ``Qwen3MoeForCausalLM`` (routed experts), ``GptOssForCausalLM``
(attention sinks, routed experts; its MLP returns the routed sum and the router scores, and the
hooks take the first), ... anything whose decoder layers have
``input_layernorm`` / ``self_attn`` / ``post_attention_layernorm`` / ``mlp``; Mistral and Gemma-1
are of this kind), Gemma-2/3 text models (``Gemma2ForCausalLM``, ``Gemma3ForCausalLM``; decoder
layers with ``pre_feedforward_layernorm`` and ``post_feedforward_layernorm``, whose outputs and
``post_attention_layernorm``'s are what the modules add to the residual) and GPT-NeoX
(``GPTNeoXForCausalLM``, Pythia; decoder layers with ``attention`` / ``mlp``, parallel or
sequential), and Qwen3.5 / Qwen3.5-MoE (``Qwen3_5ForCausalLM``, ``Qwen3_5MoeForCausalLM``), whose
Gated DeltaNet layers have ``linear_attn`` in place of ``self_attn``: ``z`` there is
``linear_attn.out_proj``'s input and ``attn_out`` ``linear_attn``'s output (autograd through
transformers' chunked gated delta rule). Use eager attention (``prepare_model`` / ``load_model``).

Parallel blocks (GPT-NeoX with ``use_parallel_residual``): attention and MLP both read
``resid_pre[b]`` and both outputs are added at ``resid_post[b]``; there is no ``resid_mid[b]``
(an SAE there is refused). The MLP's branch input (the input of ``post_attention_layernorm``) is
``resid_pre[b]``: a transcoder reads it and its key side does not pass attention ``b``; a value
vector at ``attn_out[b]`` / ``z[b]`` enters at ``resid_post[b]`` and does not pass MLP ``b``.

Mechanism
---------
Every quantity is computed by running the HF base model on the token batch with forward
hooks that (a) add a perturbation ``delta`` at one point and (b) capture the hidden state at
another; ``torch.func.jvp`` / ``torch.func.vjp`` differentiate that function of ``delta`` at
``delta = 0`` (i.e. at the clean hidden states). Layers after the captured point are not run.

Residual points (block ``b``)::

    resid_pre[b] -> attention module -> resid_mid[b] -> MLP module -> resid_post[b] = resid_pre[b+1]

* ``resid_pre[b]``: input of decoder layer ``b`` (``resid_pre[0]`` = the embedding output,
  position embeddings and Gemma's sqrt(d) scale included).
* ``resid_mid[b]``: residual after the attention add = input of the MLP pre-norm
  (GPT-2 ``ln_2``, Llama/Qwen ``post_attention_layernorm``, Gemma ``pre_feedforward_layernorm``).
  Perturbations are injected there by adding to the attention branch output
  (GPT-2 ``attn``, Llama/Qwen ``self_attn``, Gemma ``post_attention_layernorm``).
* ``resid_post[b]``: output of decoder layer ``b``. The final residual (pre-final-norm) is the
  output of the last decoder layer (HF's last ``hidden_states`` entry is post-final-norm).
* ``mlp_in[b]``: output of the MLP pre-norm (only used by the exact transcoder key option).

A module ``R(h) = post_norm(module(pre_norm(h)))`` is the residual branch; its Jacobian (for the
first-order lenses) is obtained by perturbing the *branch input* only (a pre-hook on the
pre-norm) and capturing the branch output.

Dictionaries
------------
* ``kind="sae"``: reads and writes ``site`` in {"resid_pre", "resid_mid", "resid_post"} of
  ``layer``, or one of the module-output sites (docs/definitions.md section 1b) below.
* ``kind="transcoder"`` (of MLP ``layer``): writes at ``resid_post[layer]`` (value side pushed
  through the modules after MLP ``layer``); reads at ``resid_mid[layer]`` (key side pulled back
  through attention ``layer`` and all earlier modules; MLP ``layer`` skipped). The pre-norm
  Jacobian at the read point is ignored by default, as in the authors' code; ``exact_norm=True``
  reads at ``mlp_in[layer]`` instead (the MLP's normalized input; includes that norm's Jacobian).
  ``site`` is ignored for transcoders (pass ``None``, "mlp", "mlp_in", "mlp_out", "resid_mid" or
  "resid_post").

Module-output sites of block ``L`` (SAEs that read and write the same tensor):

* ``attn_out[L]``: the attention branch output, what is added to the residual (after Gemma's
  post-norm; the output of the same module that ``resid_mid`` injects into).
* ``mlp_out[L]``: the MLP branch output (GPT-2 / Llama / Qwen ``mlp``, Gemma
  ``post_feedforward_layernorm``).
* ``z[L]``: every head's output, heads concatenated (width ``n_heads * head_dim``, TransformerLens
  ``hook_z`` flattened): the input of the attention output projection (GPT-2 ``attn.c_proj``,
  Llama / Qwen / Gemma ``self_attn.o_proj``), injected and captured with a pre-hook on it.

Value side: the tangent is added at the site itself and pushed to the final residual (for
``z`` through ``o_proj``, Gemma's post-norm linearized at its input, the add and later blocks).
Key side: the cotangent is put at the site and pulled back to ``resid_pre[0]`` through the
module producing it (its pre-norm, and the mixing across positions for attention) and
everything before. First order: value ``direct`` term = ``v`` (``attn_out``, ``mlp_out``) or
``mean_valid J_out(z_p) u`` with ``out = post_norm(o_proj(.))`` (``z``), then the single hops
after ``resid_mid[L]`` / ``resid_post[L]``; key ``identity`` term = ``mean_valid J^T k`` through
the producing module (attention for ``attn_out`` and ``z``, MLP for ``mlp_out``; seeded like
every first-order key module), then the single hops before it. Logit Lens value reads
``u W_O`` for ``z`` (no post-norm); Logit Lens key is refused for ``z``.

Batches are right-padded, ``mask`` is bool ``[B, S]``; pad positions get zero tangents /
cotangents and are left out of every mean. With causal attention and right padding, pad
positions never influence valid ones, so masking only the seed and the final mean is exactly
``t <- mask * (t + J t)`` after every module.

Inputs may be numpy arrays or torch tensors; every public function returns numpy arrays (in the
model's dtype promoted to at least float32; means are accumulated in that dtype).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "LENSES",
    "load_model",
    "prepare_model",
    "value_transport",
    "key_transport",
    "first_order_value_terms",
    "first_order_key_terms",
    "first_order_value",
    "first_order_key",
    "value_readout",
    "key_readout",
    "logit_lens_value",
    "logit_lens_key",
    "relative_variance",
    "reference_scores",
    "reference_relative_variance",
    "topk",
    "topk_with_scores",
    "module_names",
    "residual_value_vector",
    "reference_signatures",
    "lenses_at_site",
    "MODULE_OUTPUT_SITES",
]

LENSES = (
    "logit_lens_value",
    "logit_lens_key",
    "first_order_value",
    "first_order_key",
    "query_lens_value",
    "query_lens_key",
)

SITES = ("resid_pre", "resid_mid", "resid_post")
MODULE_OUTPUT_SITES = ("z", "attn_out", "mlp_out")
SAE_SITES = SITES + MODULE_OUTPUT_SITES
_TRANSCODER_SITES = (None, "mlp", "mlp_in", "mlp_out", "resid_mid", "resid_post", "transcoder")


# --------------------------------------------------------------------------------------------
# Model access
# --------------------------------------------------------------------------------------------


def _resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, str(dtype))


def prepare_model(model: nn.Module, dtype=None) -> nn.Module:
    """Put ``model`` in eval mode with eager attention; cast to ``dtype`` if given (IN PLACE).

    ``dtype``: None (keep), a ``torch.dtype`` or a name ("float32", "float64", "bfloat16").
    Returns the same model object.
    """
    model.eval()
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        else:  # pragma: no cover - older transformers
            model.config._attn_implementation = "eager"
    # Routed experts (Qwen3-MoE): the eager per-expert loop, which forward-mode AD goes through
    # (the default grouped GEMM has no JVP); its integer top-k indices are constants of the
    # linearization and the router weights are differentiated (docs/definitions.md section 1c).
    if getattr(model.config, "_experts_implementation", None) not in (None, "eager"):
        model.set_experts_implementation("eager")
    dtype = _resolve_dtype(dtype)
    if dtype is not None:
        model.to(dtype)
    return model


def load_model(name_or_path: str, dtype="float32", **kwargs) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` with eager attention, eval mode, ``dtype``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=_resolve_dtype(dtype), attn_implementation="eager", **kwargs
    )
    return prepare_model(model)


@dataclass
class _Arch:
    base: nn.Module  # the HF base model (GPT2Model, LlamaModel, Gemma3TextModel, ...)
    layers_attr: str  # name of the decoder-layer ModuleList on ``base``
    layers: nn.ModuleList
    style: str  # "gpt2" | "llama" | "gemma" | "neox"
    final_norm: nn.Module
    lm_head: nn.Module
    embed: nn.Module
    parallel: bool = False  # attention and MLP both read resid_pre (GPT-NeoX use_parallel_residual)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.embed.weight.shape[1]

    def o_proj(self, b):
        """The attention output projection; its input is ``z`` (heads concatenated)."""
        layer = self.layers[b]
        if self.style == "neox":
            return layer.attention.dense
        if hasattr(layer, "linear_attn"):  # Qwen3.5's Gated DeltaNet layers
            return layer.linear_attn.out_proj
        return layer.attn.c_proj if self.style == "gpt2" else layer.self_attn.o_proj

    def z_width(self, b) -> int:
        """``n_heads * head_dim`` (the input width of the output projection)."""
        proj = self.o_proj(b)
        return proj.in_features if isinstance(proj, nn.Linear) else proj.weight.shape[0]  # GPT-2 Conv1D: [in, out]

    def o_proj_weight_applied(self, b, u: torch.Tensor) -> torch.Tensor:
        """``u W_O``: the output projection without its bias (a linear map of ``z``)."""
        proj = self.o_proj(b)
        weight = proj.weight.to(u.dtype)
        if isinstance(proj, nn.Linear):
            return u @ weight.T
        return u @ weight  # transformers' Conv1D computes x @ weight + bias

    def attn_pre(self, b):
        layer = self.layers[b]
        return layer.ln_1 if self.style == "gpt2" else layer.input_layernorm

    def attn_out(self, b):
        """Module whose output is the attention branch output (added to the residual)."""
        layer = self.layers[b]
        if self.style == "gpt2":
            return layer.attn
        if self.style == "gemma":
            return layer.post_attention_layernorm
        if self.style == "neox":
            return layer.attention
        if hasattr(layer, "linear_attn"):  # Qwen3.5's Gated DeltaNet layers
            return layer.linear_attn
        return layer.self_attn

    def mlp_pre(self, b):
        layer = self.layers[b]
        if self.style == "gpt2":
            return layer.ln_2
        if self.style == "gemma":
            return layer.pre_feedforward_layernorm
        return layer.post_attention_layernorm

    def mlp_out(self, b):
        layer = self.layers[b]
        if self.style == "gpt2":
            return layer.mlp
        if self.style == "gemma":
            return layer.post_feedforward_layernorm
        return layer.mlp


def _arch(model: nn.Module) -> _Arch:
    base = model.base_model
    if hasattr(base, "h") and hasattr(base, "ln_f"):
        layers_attr, final_norm, embed = "h", base.ln_f, base.wte
    elif hasattr(base, "layers") and hasattr(base, "final_layer_norm"):  # GPT-NeoX
        layers_attr, final_norm, embed = "layers", base.final_layer_norm, base.embed_in
    elif hasattr(base, "layers") and hasattr(base, "norm"):
        layers_attr, final_norm, embed = "layers", base.norm, base.embed_tokens
    else:
        raise NotImplementedError(f"unsupported model class {type(model).__name__}")
    layers = getattr(base, layers_attr)
    layer0 = layers[0]
    if hasattr(layer0, "ln_1"):
        style = "gpt2"
    elif hasattr(layer0, "attention") and hasattr(layer0, "use_parallel_residual"):
        style = "neox"
    elif hasattr(layer0, "pre_feedforward_layernorm") and hasattr(layer0, "post_feedforward_layernorm"):
        style = "gemma"
    elif hasattr(layer0, "input_layernorm") and hasattr(layer0, "post_attention_layernorm"):
        style = "llama"
    else:
        raise NotImplementedError(f"unsupported decoder layer {type(layer0).__name__}")
    lm_head = model.get_output_embeddings()
    if lm_head is None:
        raise ValueError("model has no output embeddings (need a *ForCausalLM / *LMHeadModel)")
    parallel = style == "neox" and bool(layer0.use_parallel_residual)
    return _Arch(base, layers_attr, layers, style, final_norm, lm_head, embed, parallel)


def _param_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def _acc_dtype(model) -> torch.dtype:
    return torch.promote_types(_param_dtype(model), torch.float32)


def _device(model):
    return next(model.parameters()).device


def _as_tensor(x, dtype=None, device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        t = torch.as_tensor(np.asarray(x))
    return t.to(device=device, dtype=dtype) if (dtype is not None or device is not None) else t


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _prep_batch(model, tokens, mask):
    dev = _device(model)
    tokens = _as_tensor(tokens, device=dev).long()
    if tokens.ndim == 1:
        tokens = tokens[None]
    if mask is None:
        mask = torch.ones_like(tokens, dtype=torch.bool)
    mask = _as_tensor(mask, device=dev).bool()
    if mask.ndim == 1:
        mask = mask[None]
    if mask.shape != tokens.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != tokens shape {tuple(tokens.shape)}")
    # Right padding only: every row is ones followed by zeros.
    m = mask.long()
    if bool((m[:, 1:] > m[:, :-1]).any()):
        raise ValueError("mask must be right-padded (valid positions first in every row)")
    if int(m.sum()) == 0:
        raise ValueError("mask has no valid position")
    return tokens, mask


# --------------------------------------------------------------------------------------------
# Points, hooks and the differentiated functions
# --------------------------------------------------------------------------------------------


def _first_arg_replace(args, kwargs, fn):
    """Pre-hook helper: apply ``fn`` to the hidden-states argument (positional or keyword)."""
    if args:
        return (fn(args[0]),) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = fn(kwargs["hidden_states"])
    return args, kwargs


def _first_arg(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _out_replace(out, fn):
    if isinstance(out, tuple):
        return (fn(out[0]),) + tuple(out[1:])
    return fn(out)


def _out_get(out):
    return out[0] if isinstance(out, tuple) else out


def _inject_hook(arch: _Arch, point, state):
    """Register a hook adding ``state['delta']`` at ``point``; returns the handle."""
    kind, b = point

    def add(h):
        return h + state["delta"]

    if kind == "resid_pre":
        return arch.layers[b].register_forward_pre_hook(
            lambda mod, args, kwargs: _first_arg_replace(args, kwargs, add), with_kwargs=True
        )
    if kind == "resid_mid":
        return arch.attn_out(b).register_forward_hook(lambda mod, args, out: _out_replace(out, add))
    if kind == "resid_post":
        return arch.layers[b].register_forward_hook(lambda mod, args, out: _out_replace(out, add))
    if kind == "attn_out":  # the attention branch output (the hook resid_mid injects with)
        return arch.attn_out(b).register_forward_hook(lambda mod, args, out: _out_replace(out, add))
    if kind == "mlp_out":  # the MLP branch output (after Gemma's post-norm)
        return arch.mlp_out(b).register_forward_hook(lambda mod, args, out: _out_replace(out, add))
    if kind == "z":  # the output projection's input
        return arch.o_proj(b).register_forward_pre_hook(
            lambda mod, args, kwargs: _first_arg_replace(args, kwargs, add), with_kwargs=True
        )
    if kind == "attn_in":  # branch input of attention b (residual path untouched)
        return arch.attn_pre(b).register_forward_pre_hook(
            lambda mod, args, kwargs: _first_arg_replace(args, kwargs, add), with_kwargs=True
        )
    if kind == "mlp_in_branch":  # branch input of MLP b
        return arch.mlp_pre(b).register_forward_pre_hook(
            lambda mod, args, kwargs: _first_arg_replace(args, kwargs, add), with_kwargs=True
        )
    raise ValueError(f"cannot inject at {point}")


def _capture_hook(arch: _Arch, point, state):
    kind, b = point

    def keep(h):
        state["captured"] = h
        return None

    if kind == "resid_pre":
        return arch.layers[b].register_forward_pre_hook(
            lambda mod, args, kwargs: keep(_first_arg(args, kwargs)), with_kwargs=True
        )
    if kind == "resid_mid":
        return arch.mlp_pre(b).register_forward_pre_hook(
            lambda mod, args, kwargs: keep(_first_arg(args, kwargs)), with_kwargs=True
        )
    if kind == "resid_post":
        return arch.layers[b].register_forward_hook(lambda mod, args, out: keep(_out_get(out)))
    if kind == "mlp_in":  # normalized MLP input
        return arch.mlp_pre(b).register_forward_hook(lambda mod, args, out: keep(_out_get(out)))
    if kind == "attn_out":
        return arch.attn_out(b).register_forward_hook(lambda mod, args, out: keep(_out_get(out)))
    if kind == "mlp_out":
        return arch.mlp_out(b).register_forward_hook(lambda mod, args, out: keep(_out_get(out)))
    if kind == "z":
        return arch.o_proj(b).register_forward_pre_hook(
            lambda mod, args, kwargs: keep(_first_arg(args, kwargs)), with_kwargs=True
        )
    raise ValueError(f"cannot capture at {point}")


@contextlib.contextmanager
def _truncated(arch: _Arch, n_run: int):
    """Temporarily keep only the first ``n_run`` decoder layers (later ones are not needed)."""
    full = arch.layers
    n_run = max(1, min(int(n_run), len(full)))
    if n_run == len(full):
        yield
        return
    setattr(arch.base, arch.layers_attr, nn.ModuleList(list(full)[:n_run]))
    try:
        yield
    finally:
        setattr(arch.base, arch.layers_attr, full)


def _make_fn(model, tokens, mask, inject, capture) -> tuple[Callable, int]:
    """f(delta) -> hidden state at ``capture`` when ``delta`` is added at ``inject``."""
    arch = _arch(model)
    if capture[0] == "resid_pre" and capture[1] > 0:
        capture = ("resid_post", capture[1] - 1)  # same point; later layers need not run
    n_run = capture[1] + 1
    attn_mask = mask.long()

    def f(delta):
        state = {"delta": delta}
        handles = []
        try:
            handles.append(_inject_hook(arch, inject, state))
            handles.append(_capture_hook(arch, capture, state))
            with _truncated(arch, n_run):
                arch.base(input_ids=tokens, attention_mask=attn_mask, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        if "captured" not in state:
            raise RuntimeError(f"capture point {capture} was not reached")
        return state["captured"]

    return f, arch.n_layers


def _zeros(model, tokens, width=None):
    d = model.config.hidden_size if width is None else width
    return torch.zeros(*tokens.shape, d, dtype=_param_dtype(model), device=_device(model))


def _point_width(arch: _Arch, point) -> int:
    """Width of the tensor at ``point``: ``n_heads * head_dim`` for ``z``, else d_model."""
    kind, b = point
    return arch.z_width(b) if kind == "z" else arch.d_model


def _broadcast(vec: torch.Tensor, mask: torch.Tensor | None, shape) -> torch.Tensor:
    t = vec.reshape(1, 1, -1).expand(*shape).clone()
    if mask is not None:
        t = t * mask[..., None].to(t.dtype)
    return t


def _jvp(model, tokens, mask, inject, capture, vec, seed_mask=True):
    f, _ = _make_fn(model, tokens, mask, inject, capture)
    primal = _zeros(model, tokens, _point_width(_arch(model), inject))
    vec = _as_tensor(vec, dtype=primal.dtype, device=primal.device)
    tangent = _broadcast(vec, mask if seed_mask else None, primal.shape)
    with torch.no_grad():  # forward-mode only; no outer autograd graph
        _, t_out = torch.func.jvp(f, (primal,), (tangent,))
    return t_out


def _vjp(model, tokens, mask, inject, capture, vec, seed_mask=True):
    f, _ = _make_fn(model, tokens, mask, inject, capture)
    primal = _zeros(model, tokens, _point_width(_arch(model), inject))
    with torch.no_grad():  # torch.func.vjp ignores the outer no_grad; it only stops the outer graph
        out, vjp_fn = torch.func.vjp(f, primal)
        vec = _as_tensor(vec, dtype=out.dtype, device=out.device)
        cot = _broadcast(vec, mask if seed_mask else None, out.shape)
        (g,) = vjp_fn(cot)
    return g


def _unchanged(model, tokens, mask, vec):
    """What ``_jvp`` / ``_vjp`` return when the inject and capture points coincide (no module
    between them): the seed itself at valid positions, without running the model. The
    authors' code skips the run there too (the value side at the last layer, the key side at
    ``resid_pre[0]``); the numbers are those of the run (its tangent is the seed unchanged)."""
    primal = _zeros(model, tokens)
    vec = _as_tensor(vec, dtype=primal.dtype, device=primal.device)
    return _broadcast(vec, mask, primal.shape)


def _reduce(model, tokens, mask, fn, per_position, batch_size):
    """Run ``fn(tokens_chunk, mask_chunk) -> [b, S, d]`` over chunks of ``batch_size`` sequences
    (all at once if None) and return the mean over all valid positions [d] (accumulated in at
    least float32) or the per-valid-position rows [N, d] in (batch, position) order."""
    acc = _acc_dtype(model)
    n_rows = tokens.shape[0]
    bs = n_rows if not batch_size else int(batch_size)
    total, rows = None, []
    for i in range(0, n_rows, bs):
        tk, mk = tokens[i : i + bs], mask[i : i + bs]
        if not bool(mk.any()):
            continue
        t = fn(tk, mk).to(acc)
        valid = t[mk]
        if not bool(torch.isfinite(valid).all()):
            raise FloatingPointError(
                "non-finite tangent/cotangent at valid positions (e.g. HF's eager mask overflowing to "
                "-inf in float64 on fully masked attention rows: a pad run longer than a sliding window)"
            )
        if per_position:
            rows.append(valid)
        else:
            s = valid.sum(0)
            total = s if total is None else total + s
    if per_position:
        return _np(torch.cat(rows))
    return _np(total / int(mask.sum()))


def _no_resid_mid(site, kind, parallel):
    if parallel and kind == "sae" and site == "resid_mid":
        raise ValueError("a parallel block has no resid_mid (attention and MLP both read resid_pre)")


def _write_point(site, layer, kind, n_layers, parallel=False):
    _no_resid_mid(site, kind, parallel)
    layer = int(layer)
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range [0, {n_layers})")
    if kind == "transcoder":
        if site not in _TRANSCODER_SITES:
            raise ValueError(f"unexpected site {site!r} for a transcoder")
        return ("resid_post", layer)
    if kind != "sae":
        raise ValueError(f"kind must be 'sae' or 'transcoder', got {kind!r}")
    if site not in SAE_SITES:
        raise ValueError(f"site must be one of {SAE_SITES}, got {site!r}")
    return (site, layer)


def _read_point(site, layer, kind, n_layers, exact_norm=False, parallel=False):
    _no_resid_mid(site, kind, parallel)
    layer = int(layer)
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range [0, {n_layers})")
    if kind == "transcoder":
        if site not in _TRANSCODER_SITES:
            raise ValueError(f"unexpected site {site!r} for a transcoder")
        return ("mlp_in", layer) if exact_norm else ("resid_mid", layer)
    if exact_norm:
        raise ValueError("exact_norm is only defined for transcoders (the SAE's own input norm is not modelled)")
    if kind != "sae":
        raise ValueError(f"kind must be 'sae' or 'transcoder', got {kind!r}")
    if site not in SAE_SITES:
        raise ValueError(f"site must be one of {SAE_SITES}, got {site!r}")
    return (site, layer)


def _point_index(point) -> int:
    """Position of a residual point in the module sequence attn.0, mlp.0, attn.1, ..."""
    kind, b = point
    return {"resid_pre": 2 * b, "resid_mid": 2 * b + 1, "resid_post": 2 * b + 2, "mlp_in": 2 * b + 1}[kind]


def _first_module_after(point, parallel=False) -> int:
    """Index of the first module downstream of the residual point that ``point`` writes into
    (module outputs: ``attn_out`` / ``z`` -> resid_mid, or resid_post in a parallel block;
    ``mlp_out`` -> resid_post)."""
    kind, b = point
    if kind in MODULE_OUTPUT_SITES:
        return 2 * b + 2 if kind == "mlp_out" or parallel else 2 * b + 1
    return _point_index(point)


def _modules_before(point, parallel=False) -> int:
    """Number of modules upstream of ``point``, not counting the module that produces a
    module-output site (that hop is the first-order key's ``identity`` term). In a parallel
    block the MLP's input (``resid_mid``, ``mlp_in``, what ``mlp_out`` is computed from) is
    ``resid_pre``: attention ``b`` is not upstream of it."""
    kind, b = point
    if parallel and kind in ("resid_mid", "mlp_in", "mlp_out"):
        return 2 * b
    if kind in MODULE_OUTPUT_SITES:
        return 2 * b + 1 if kind == "mlp_out" else 2 * b
    return _point_index(point)


def _producing_module_input(point):
    """Branch input of the module whose output (or ``z``) is the module-output site ``point``."""
    kind, b = point
    return ("mlp_in_branch", b) if kind == "mlp_out" else ("attn_in", b)


def _check_width(arch: _Arch, point, vectors, what: str) -> None:
    """Refuse vectors whose last axis is not the width of the site at ``point``."""
    width = _point_width(arch, point)
    shape = tuple(np.shape(vectors))
    if not shape or shape[-1] != width:
        kind, b = point
        extra = " (n_heads * head_dim)" if kind == "z" else " (d_model)"
        raise ValueError(f"{what} has shape {shape}; site {kind}[{b}] needs width {width}{extra}")


def _module(j: int) -> tuple[str, int]:
    return ("attn" if j % 2 == 0 else "mlp", j // 2)


def module_names(model, site, layer, kind="sae", side="value") -> list[str]:
    """Names ("attn.{b}" / "mlp.{b}") of the modules between the dictionary and the model's end
    (``side="value"``: after the write point) or start (``side="key"``: before the read point),
    in forward order. Module-output sites: the hop between the site and the residual (``z``'s
    output projection on the value side, the producing module on the key side) is the first
    term (``direct`` / ``identity``) of the first-order lenses, not one of these names."""
    arch = _arch(model)
    n, parallel = arch.n_layers, arch.parallel
    if side == "value":
        i = _first_module_after(_write_point(site, layer, kind, n, parallel), parallel)
        js = range(i, 2 * n)
    elif side == "key":
        i = _modules_before(_read_point(site, layer, kind, n, parallel=parallel), parallel)
        js = range(0, i)
    else:
        raise ValueError("side must be 'value' or 'key'")
    return [f"{m}.{b}" for m, b in map(_module, js)]


# --------------------------------------------------------------------------------------------
# Transports
# --------------------------------------------------------------------------------------------


def value_transport(model, tokens, mask, v, site, layer, per_position=False, *, kind="sae", batch_size=None):
    """QL-value transport: ``m`` [d_model] = mean over valid positions of the final-residual
    tangent (pre-final-norm) when ``v`` is the tangent at every valid position of the write
    point (module-output sites: at the site itself; ``v`` is [n_heads * head_dim] for ``z``).
    ``per_position=True`` returns the per-valid-position tangents [N, d_model]
    (rows in (batch, position) order; their mean is ``m``)."""
    tokens, mask = _prep_batch(model, tokens, mask)
    arch = _arch(model)
    L = arch.n_layers
    w = _write_point(site, layer, kind, L, arch.parallel)
    _check_width(arch, w, v, "value vector")
    if w[0] != "z" and _first_module_after(w, arch.parallel) == 2 * L:  # writes the final residual: nothing downstream
        fn = lambda tk, mk: _unchanged(model, tk, mk, v)  # noqa: E731
    else:
        fn = lambda tk, mk: _jvp(model, tk, mk, w, ("resid_post", L - 1), v)  # noqa: E731
    return _reduce(model, tokens, mask, fn, per_position, batch_size)


def key_transport(
    model, tokens, mask, k, site, layer, kind="sae", per_position=False, *, exact_norm=False, batch_size=None
):
    """QL-key transport: ``w`` [d_model] = mean over valid positions of the cotangent at
    ``resid_pre[0]`` when ``k`` is the cotangent at every valid position of the read point
    (seed masked; module-output sites: at the site itself, through the module producing it;
    ``k`` is [n_heads * head_dim] for ``z``). ``per_position=True`` returns the
    per-valid-position cotangents [N, d_model]. ``exact_norm`` (transcoders): read at the
    MLP's normalized input instead of resid_mid."""
    tokens, mask = _prep_batch(model, tokens, mask)
    arch = _arch(model)
    r = _read_point(site, layer, kind, arch.n_layers, exact_norm, arch.parallel)
    _check_width(arch, r, k, "key vector")
    if r == ("resid_pre", 0):  # nothing upstream
        fn = lambda tk, mk: _unchanged(model, tk, mk, k)  # noqa: E731
    else:
        fn = lambda tk, mk: _vjp(model, tk, mk, ("resid_pre", 0), r, k)  # noqa: E731
    return _reduce(model, tokens, mask, fn, per_position, batch_size)


def _module_jvp(model, tokens, mask, j, v, seed_mask=True):
    kind, b = _module(j)
    inject = ("attn_in", b) if kind == "attn" else ("mlp_in_branch", b)
    capture = ("attn_out", b) if kind == "attn" else ("mlp_out", b)
    return _jvp(model, tokens, mask, inject, capture, v, seed_mask)


def _module_vjp(model, tokens, mask, j, k, seed_mask):
    kind, b = _module(j)
    inject = ("attn_in", b) if kind == "attn" else ("mlp_in_branch", b)
    capture = ("attn_out", b) if kind == "attn" else ("mlp_out", b)
    return _vjp(model, tokens, mask, inject, capture, k, seed_mask)


def first_order_value_terms(model, tokens, mask, v, site, layer, *, kind="sae", per_position=False, batch_size=None):
    """First-order value terms: ``{"direct": v, "attn.{b}"/"mlp.{b}": mean over valid positions
    of mask * J_module(v at valid positions)}`` for every module after the write point (forward
    order), each Jacobian at that module's clean input. Their sum is the first-order vector.
    ``per_position=True``: each term is [N, d_model] (the direct term is v repeated).

    ``z`` sites: ``v`` [n_heads * head_dim] first takes the hop into the residual,
    ``direct = mean_valid J_out(z_p) v`` with ``out = post_norm(o_proj(.))`` (= ``v W_O``
    without a post-norm; per position: the rows ``J_out(z_p) v``); the later terms are the
    single hops after ``resid_mid[layer]`` applied to that ``direct`` vector."""
    tokens, mask = _prep_batch(model, tokens, mask)
    arch = _arch(model)
    L = arch.n_layers
    acc = _acc_dtype(model)
    w = _write_point(site, layer, kind, L, arch.parallel)
    _check_width(arch, w, v, "value vector")
    n_valid = int(mask.sum())
    if w[0] == "z":
        hop = lambda tk, mk, u=v: _jvp(model, tk, mk, w, ("attn_out", w[1]), u)  # noqa: E731
        v = _reduce(model, tokens, mask, hop, False, batch_size)  # the later hops apply to this
        direct = _reduce(model, tokens, mask, hop, True, batch_size) if per_position else v
    else:
        vt = _as_tensor(v, dtype=acc, device=_device(model)).reshape(-1)
        direct = _np(vt.expand(n_valid, -1) if per_position else vt)
    terms = {"direct": direct}
    for j in range(_first_module_after(w, arch.parallel), 2 * L):
        fn = lambda tk, mk, j=j: _module_jvp(model, tk, mk, j, v)  # noqa: E731
        terms["{}.{}".format(*_module(j))] = _reduce(model, tokens, mask, fn, per_position, batch_size)
    return terms


def first_order_key_terms(
    model, tokens, mask, k, site, layer, kind="sae", mask_seed=False, *, per_position=False, batch_size=None
):
    """First-order key terms: ``{"identity": k, "attn.{b}"/"mlp.{b}": mean over valid positions of
    mask * J_module^T(k)}`` for every module before the read point (forward order).

    ``mask_seed=False`` (default, the authors' convention): the cotangent ``k`` is seeded at
    EVERY position, pads included, and masked only after the module's VJP (pad queries that
    attend to valid keys leak into valid positions). ``mask_seed=True``: seeded at valid
    positions only.

    Module-output sites: the hop through the module producing the site is needed to reach the
    residual, so ``identity = u = mean_valid J^T k`` through it (attention for ``attn_out`` and
    ``z``, where ``J`` maps ``resid_pre[layer]`` to the site; the MLP for ``mlp_out``), seeded as
    above (per position: the rows ``J^T k``); the later terms are the single hops through the
    earlier modules applied to ``u``."""
    tokens, mask = _prep_batch(model, tokens, mask)
    arch = _arch(model)
    acc = _acc_dtype(model)
    r = _read_point(site, layer, kind, arch.n_layers, parallel=arch.parallel)
    _check_width(arch, r, k, "key vector")
    n_valid = int(mask.sum())
    if r[0] in MODULE_OUTPUT_SITES:
        inject = _producing_module_input(r)
        hop = lambda tk, mk, seed=k: _vjp(model, tk, mk, inject, r, seed, seed_mask=mask_seed)  # noqa: E731
        k = _reduce(model, tokens, mask, hop, False, batch_size)  # the later hops apply to this
        identity = _reduce(model, tokens, mask, hop, True, batch_size) if per_position else k
    else:
        kt = _as_tensor(k, dtype=acc, device=_device(model)).reshape(-1)
        identity = _np(kt.expand(n_valid, -1) if per_position else kt)
    terms = {"identity": identity}
    for j in range(0, _modules_before(r, arch.parallel)):
        fn = lambda tk, mk, j=j: _module_vjp(model, tk, mk, j, k, seed_mask=mask_seed)  # noqa: E731
        terms["{}.{}".format(*_module(j))] = _reduce(model, tokens, mask, fn, per_position, batch_size)
    return terms


def first_order_value(model, tokens, mask, v, site, layer, *, kind="sae", per_position=False, batch_size=None):
    """Sum of ``first_order_value_terms`` ([d_model], or [N, d_model] per position)."""
    terms = first_order_value_terms(
        model, tokens, mask, v, site, layer, kind=kind, per_position=per_position, batch_size=batch_size
    )
    return np.sum(np.stack(list(terms.values())), axis=0)


def first_order_key(
    model, tokens, mask, k, site, layer, kind="sae", mask_seed=False, *, per_position=False, batch_size=None
):
    """Sum of ``first_order_key_terms`` ([d_model], or [N, d_model] per position)."""
    terms = first_order_key_terms(
        model,
        tokens,
        mask,
        k,
        site,
        layer,
        kind=kind,
        mask_seed=mask_seed,
        per_position=per_position,
        batch_size=batch_size,
    )
    return np.sum(np.stack(list(terms.values())), axis=0)


# --------------------------------------------------------------------------------------------
# Readouts
# --------------------------------------------------------------------------------------------


def _softcap_value(model, softcap):
    if softcap is None:
        return getattr(model.config, "final_logit_softcapping", None)
    if softcap is False:
        return None
    if softcap is True:
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap is None:
            raise ValueError("softcap=True but the model config has no final_logit_softcapping")
        return cap
    return float(softcap)


@torch.no_grad()
def value_readout(model, m, remove_final_norm_bias=False, softcap=None, final_norm=True):
    """Value readout ``W_U^T LN_final(m) + b_U`` for ``m`` [..., d_model] -> [..., vocab].

    ``LN_final`` is the model's own final norm module applied to the vector(s) ``m`` (not
    linearized). ``b_U`` is the lm_head bias where the model has one (none for GPT-2 / Llama /
    Qwen / Gemma). ``remove_final_norm_bias=True`` drops the final LayerNorm's bias (no-op for
    RMSNorm). ``softcap``: None (default) applies the model's ``final_logit_softcapping``
    (``cap * tanh(logits / cap)``) exactly when the config sets it, like the HF forward;
    False never applies it; a float applies that cap. ``final_norm=False``: ``W_U^T m`` without
    the final norm (the authors' ``use_unembed_layer_norm=False``)."""
    arch = _arch(model)
    pdt = _param_dtype(model)
    acc = _acc_dtype(model)
    x = _as_tensor(m, dtype=pdt, device=_device(model))
    if not final_norm:
        logits = x.to(acc) @ arch.lm_head.weight.to(acc).T
        b_U = getattr(arch.lm_head, "bias", None)
        return _np(logits if b_U is None else logits + b_U.to(acc))
    y = arch.final_norm(x)
    bias = getattr(arch.final_norm, "bias", None)
    if remove_final_norm_bias and bias is not None:
        y = y - bias
    W_U = arch.lm_head.weight  # [vocab, d_model]
    logits = y.to(acc) @ W_U.to(acc).T
    b_U = getattr(arch.lm_head, "bias", None)
    if b_U is not None:
        logits = logits + b_U.to(acc)
    cap = _softcap_value(model, softcap)
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    return _np(logits)


def _embedding_matrix(model) -> torch.Tensor:
    """Raw input embedding weights W_E [vocab, d_model] (no Gemma sqrt(d) scale)."""
    return model.get_input_embeddings().weight


@torch.no_grad()
def key_readout(model, w, tokens, mask, eps=1e-12):
    """Centered-cosine key readout for ``w`` [..., d_model] -> [..., vocab].

    ``c`` = mean of the raw embedding rows ``W_E[t]`` over the sample's valid tokens (frequency
    weighted); ``s_t = <w, (e_t - c) / ||e_t - c||>`` (norm clamped at ``eps``)."""
    tokens, mask = _prep_batch(model, tokens, mask)
    acc = _acc_dtype(model)
    E = _embedding_matrix(model).to(acc)
    c = E[tokens[mask]].mean(0)
    D = E - c
    D = D / D.norm(dim=-1, keepdim=True).clamp_min(eps)
    wt = _as_tensor(w, dtype=acc, device=E.device)
    return _np(wt @ D.T)


def logit_lens_value(model, v, remove_final_norm_bias=False, softcap=None, final_norm=True):
    """Logit Lens on a value vector: ``W_U^T LN_final(v) (+ b_U)`` (same options as value_readout)."""
    return value_readout(
        model, v, remove_final_norm_bias=remove_final_norm_bias, softcap=softcap, final_norm=final_norm
    )


@torch.no_grad()
def logit_lens_key(model, k):
    """Logit Lens on a key vector: ``W_E k`` (raw embedding rows, plain dot, no centring)."""
    acc = _acc_dtype(model)
    E = _embedding_matrix(model).to(acc)
    return _np(_as_tensor(k, dtype=acc, device=E.device) @ E.T)


@torch.no_grad()
def residual_value_vector(model, v, site, layer, kind="sae") -> np.ndarray:
    """The residual-space vector that Logit Lens reads for value vector(s) ``v`` [..., d_site]:
    ``v W_O`` at ``z`` (block ``layer``'s output projection without its bias and without any
    post-norm, docs/definitions.md 1b), ``v`` itself at every other site. Returns [..., d_model]."""
    arch = _arch(model)
    w = _write_point(site, layer, kind, arch.n_layers, arch.parallel)
    _check_width(arch, w, v, "value vector")
    if w[0] != "z":
        return np.asarray(_np(v) if isinstance(v, torch.Tensor) else v)
    vt = _as_tensor(v, dtype=_acc_dtype(model), device=_device(model))
    return _np(arch.o_proj_weight_applied(w[1], vt))


def _refuse_undefined(lens, site, kind) -> None:
    if lens == "logit_lens_key" and kind == "sae" and site == "z":
        raise ValueError(
            "logit_lens_key is not defined at site 'z': a z key vector (width n_heads * head_dim) does "
            "not live in the residual stream, so W_E k has no meaning there (docs/definitions.md 1b); use "
            "query_lens_key or first_order_key"
        )


def lenses_at_site(site, kind="sae") -> tuple[str, ...]:
    """The lenses of ``LENSES`` defined for a dictionary at ``site`` (all but ``logit_lens_key``
    at ``z``)."""
    return tuple(lens for lens in LENSES if not (lens == "logit_lens_key" and kind == "sae" and site == "z"))


# --------------------------------------------------------------------------------------------
# Statistics, scores, top-k
# --------------------------------------------------------------------------------------------


def relative_variance(g) -> float:
    """``E||g - mean g||^2 / E||g||^2`` for per-position vectors ``g`` [N, d] (0 if g == 0)."""
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 2:
        raise ValueError("g must be [N, d]")
    num = np.mean(np.sum((g - g.mean(0, keepdims=True)) ** 2, axis=-1))
    den = np.mean(np.sum(g**2, axis=-1))
    return float(num / den) if den > 0 else 0.0


def _transport_vectors(model, tokens, mask, lens, vectors, site, layer, kind, opts, per_position=False):
    bs = opts.get("batch_size", None)
    out = []
    for vec in vectors:  # one pass per feature, on purpose
        if lens == "first_order_value":
            r = first_order_value(
                model, tokens, mask, vec, site, layer, kind=kind, per_position=per_position, batch_size=bs
            )
        elif lens == "first_order_key":
            r = first_order_key(
                model,
                tokens,
                mask,
                vec,
                site,
                layer,
                kind=kind,
                mask_seed=opts.get("mask_seed", False),
                per_position=per_position,
                batch_size=bs,
            )
        elif lens == "query_lens_value":
            r = value_transport(
                model, tokens, mask, vec, site, layer, per_position=per_position, kind=kind, batch_size=bs
            )
        elif lens == "query_lens_key":
            r = key_transport(
                model,
                tokens,
                mask,
                vec,
                site,
                layer,
                kind=kind,
                per_position=per_position,
                exact_norm=opts.get("exact_norm", False),
                batch_size=bs,
            )
        else:
            raise ValueError(f"lens {lens!r} has no transport")
        out.append(r)
    return out


_OPTS = {
    "remove_final_norm_bias",
    "softcap",
    "mask_seed",
    "exact_norm",
    "batch_size",
    "submodule",
    "jvp_norm",
    "vjp_norm",
    "unembed_norm",
}


@contextlib.contextmanager
def _linearized(model, submodule="both", norm_jacobian=True):
    """The authors' ``submodule`` and layer-norm toggles on the HF modules, by forward hooks
    (registered before any transport hook, so they run first): ``submodule="attn"`` detaches
    every MLP branch output, ``"mlp"`` every attention branch output (their Jacobians are then
    zero; perturbations injected after them still flow); ``norm_jacobian=False`` makes every
    pre-norm (and Gemma's post-norms) pass the tangent through unchanged at its clean output
    (``out.detach() + (x - x.detach())``)."""
    if submodule not in ("both", "attn", "mlp"):
        raise ValueError(f"submodule must be both, attn or mlp, got {submodule!r}")
    arch = _arch(model)
    handles = []

    def held(_module, _args, out):
        return _out_replace(out, lambda t: t.detach())

    def identity_jacobian(_module, args, out):
        x = args[0]
        return _out_replace(out, lambda t: t.detach() + (x - x.detach()).to(t.dtype))

    for b in range(arch.n_layers):
        if not norm_jacobian:
            norms = [arch.attn_pre(b), arch.mlp_pre(b)]
            if arch.style == "gemma":
                norms += [arch.attn_out(b), arch.mlp_out(b)]  # Gemma's post-norms are the branch outputs
            handles += [n.register_forward_hook(identity_jacobian) for n in norms]
        if submodule == "attn":
            handles.append(arch.mlp_out(b).register_forward_hook(held))
        elif submodule == "mlp":
            handles.append(arch.attn_out(b).register_forward_hook(held))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_request(model, lens, vectors, site, layer, kind, opts) -> np.ndarray:
    """Validate options, lens, site and vector width before any work; vectors as [n, d_site]."""
    bad = set(opts) - _OPTS
    if bad:
        raise TypeError(f"unknown options {sorted(bad)}")
    if lens not in LENSES:
        raise ValueError(f"lens must be one of {LENSES}, got {lens!r}")
    arch = _arch(model)
    point = (_write_point if lens.endswith("value") else _read_point)(
        site, layer, kind, arch.n_layers, parallel=arch.parallel
    )
    _refuse_undefined(lens, site, kind)
    vectors = np.asarray(_np(vectors) if isinstance(vectors, torch.Tensor) else vectors)
    if vectors.ndim == 1:
        vectors = vectors[None]
    _check_width(arch, point, vectors, f"{lens} vectors")
    return vectors


def _lens_vectors(model, tokens, mask, lens, vectors, site, layer, kind, opts) -> list[np.ndarray]:
    """Per feature, the vector that ``lens`` reads out: the transported mean vector, or for
    Logit Lens the residual-space value vector / the key vector itself."""
    if lens == "logit_lens_value":
        return [residual_value_vector(model, vec, site, layer, kind) for vec in vectors]
    if lens == "logit_lens_key":
        return list(vectors)
    norm = opts.get("jvp_norm" if lens.endswith("value") else "vjp_norm", True)
    with _linearized(model, opts.get("submodule", "both"), norm):
        return _transport_vectors(model, tokens, mask, lens, vectors, site, layer, kind, opts)


def _readout(model, tokens, mask, lens, vecs, opts) -> np.ndarray:
    vopts = dict(
        remove_final_norm_bias=opts.get("remove_final_norm_bias", False),
        softcap=opts.get("softcap", None),
        final_norm=opts.get("unembed_norm", True),
    )
    if lens == "logit_lens_value":
        return np.stack([logit_lens_value(model, vec, **vopts) for vec in vecs])
    if lens == "logit_lens_key":
        return np.stack([logit_lens_key(model, vec) for vec in vecs])
    if lens.endswith("value"):
        return np.stack([value_readout(model, m, **vopts) for m in vecs])
    return np.stack([key_readout(model, w, tokens, mask) for w in vecs])


def reference_scores(model, tokens, mask, lens, vectors, site, layer, kind="sae", **opts) -> np.ndarray:
    """Scores [n, vocab] of ``lens`` (one of ``LENSES``) for feature vectors [n, d_site]
    (value vectors for *_value lenses, key vectors = encoder columns for *_key lenses; d_site is
    d_model, or n_heads * head_dim at ``z``), computed one feature at a time.

    Options: ``remove_final_norm_bias`` (bool), ``softcap`` (None|False|float) for value
    readouts; ``mask_seed`` (bool, first_order_key); ``exact_norm`` (bool, transcoder
    query_lens_key); ``batch_size`` (int|None: sequences per Jacobian pass, results identical);
    the authors' analysis options ``submodule`` ("both" | "attn" | "mlp"), ``jvp_norm``,
    ``vjp_norm`` (bool: the value / key transports with the norms' Jacobians) and
    ``unembed_norm`` (bool: the value readouts with the final norm), see ``_linearized``.
    ``logit_lens_key`` at ``z`` raises ``ValueError`` (not defined there)."""
    vectors = _check_request(model, lens, vectors, site, layer, kind, opts)
    vecs = _lens_vectors(model, tokens, mask, lens, vectors, site, layer, kind, opts)
    return _readout(model, tokens, mask, lens, vecs, opts)


def reference_signatures(
    model,
    tokens,
    mask,
    site,
    layer,
    value_vectors=None,
    key_vectors=None,
    *,
    kind="sae",
    lenses=None,
    k=25,
    **opts,
) -> dict[str, dict[str, np.ndarray]]:
    """Signatures of several features of one dictionary, per lens, computed one feature at a time.

    ``value_vectors`` [n, d_site] (decoder rows) feed the *_value lenses, ``key_vectors``
    [n, d_site] (encoder columns) the *_key lenses; ``lenses`` defaults to every lens defined
    at ``site`` (``lenses_at_site``) whose vectors are given. Returns ``{lens: {"vectors":
    [n, d_model], "scores": [n, vocab], "top_ids", "top_scores", "bottom_ids",
    "bottom_scores": [n, k]}}`` where "vectors" is what the readout reads: the transported mean
    vector (Query Lens ``m`` / ``w``, the first-order sum), the residual-space value vector for
    ``logit_lens_value`` (``v W_O`` at ``z``) or the key vector for ``logit_lens_key``. Options
    as ``reference_scores``; every request is checked before any transport runs."""
    given = {"value": value_vectors, "key": key_vectors}
    if lenses is None:
        lenses = [lens for lens in lenses_at_site(site, kind) if given[lens.rsplit("_", 1)[1]] is not None]
    checked = {}
    for lens in lenses:
        side = lens.rsplit("_", 1)[-1]
        if side in given and given[side] is None:
            raise ValueError(f"{lens} needs {side}_vectors")
        checked[lens] = _check_request(model, lens, given.get(side), site, layer, kind, opts)
    out = {}
    for lens, vectors in checked.items():
        vecs = _lens_vectors(model, tokens, mask, lens, vectors, site, layer, kind, opts)
        scores = _readout(model, tokens, mask, lens, vecs, opts)
        top, top_scores, bottom, bottom_scores = topk_with_scores(scores, k)
        out[lens] = {
            "vectors": np.stack(vecs),
            "scores": scores,
            "top_ids": top,
            "top_scores": top_scores,
            "bottom_ids": bottom,
            "bottom_scores": bottom_scores,
        }
    return out


def cross_layer_reference_scores(model, tokens, mask, lens, decoders, layer, **opts) -> np.ndarray:
    """Scores [n, vocab] of a value ``lens`` for features of a cross-layer transcoder of
    ``layer`` (docs/definitions.md 1c), one feature at a time: ``decoders`` [n, W, d_model] with
    ``W = n_layers - layer``, ``decoders[:, w]`` written into the MLP output of layer
    ``layer + w``. Query Lens and first order: the sum over write layers of each decoder
    vector's transport from its own write point (a transcoder's), read out once; Logit Lens:
    the plain sum of the decoder vectors read out. Options as ``reference_scores``."""
    if lens not in ("query_lens_value", "first_order_value", "logit_lens_value"):
        raise ValueError(
            f"a cross-layer transcoder's value side has lenses query_lens_value, first_order_value and "
            f"logit_lens_value, not {lens!r} (its key side is a transcoder's: reference_scores)"
        )
    decoders = np.asarray(_np(decoders) if isinstance(decoders, torch.Tensor) else decoders)
    n_layers = _arch(model).n_layers
    if decoders.ndim != 3 or int(layer) + decoders.shape[1] != n_layers:
        raise ValueError(
            f"decoders must be [n, n_layers - layer, d_model] = [n, {n_layers - int(layer)}, d], got {decoders.shape}"
        )
    summed = []
    for feature in decoders:  # one feature at a time, each write layer transported on its own
        if lens == "logit_lens_value":
            summed.append(feature.sum(0))
            continue
        parts = [
            _transport_vectors(model, tokens, mask, lens, [vec], "mlp_out", int(layer) + w, "transcoder", opts)[0]
            for w, vec in enumerate(feature)
        ]
        summed.append(np.sum(np.stack(parts), axis=0))
    return _readout(model, tokens, mask, lens, summed, opts)


def reference_relative_variance(model, tokens, mask, lens, vectors, site, layer, kind="sae", **opts) -> np.ndarray:
    """Relative variance [n] of the per-position transported vectors for ``lens`` in
    {first_order_value, first_order_key, query_lens_value, query_lens_key}."""
    vectors = _check_request(model, lens, vectors, site, layer, kind, opts)
    per = _transport_vectors(model, tokens, mask, lens, vectors, site, layer, kind, opts, per_position=True)
    return np.array([relative_variance(g) for g in per])


def topk_with_scores(scores, k: int):
    """(top_ids, top_scores, bottom_ids, bottom_scores), each [n, k]. Top: descending score;
    bottom: ascending score (most negative first); ties broken by smaller token id."""
    s = np.asarray(scores)
    if s.ndim == 1:
        s = s[None]
    k = min(int(k), s.shape[-1])
    ids = np.arange(s.shape[-1])
    top, bot = [], []
    for row in s:
        top.append(np.lexsort((ids, -row))[:k])
        bot.append(np.lexsort((ids, row))[:k])
    top, bot = np.stack(top), np.stack(bot)
    return top, np.take_along_axis(s, top, -1), bot, np.take_along_axis(s, bot, -1)


def topk(scores, k: int = 25):
    """(top_ids, bottom_ids), each [n, k] (see ``topk_with_scores`` for order and ties)."""
    top, _, bot, _ = topk_with_scores(scores, k)
    return top, bot
