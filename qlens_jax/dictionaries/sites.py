"""Where a dictionary sits: site names, and hook names (TransformerLens and Hugging Face) parsed
into (layer, site).

Sites follow docs/dictionaries.md and `qlens_jax.lens.points`: SAEs read and write one site of a
layer, either a residual point (`resid_pre | resid_mid | resid_post`) or a module output
(`MODULE_OUTPUT_SITES`: `z`, the heads' outputs concatenated before the attention's output
projection, width `n_heads x head_dim` in TransformerLens `hook_z` order; `attn_out` and
`mlp_out`, the attention and MLP outputs as added to the residual, after any post-norm).
Transcoders of MLP `l` read the MLP's normalized input `mlp_in` (or, for files that say so, the
un-normalized MLP block input `resid_mid`) and write `mlp_out` of the same layer. Anything
else (per-head results, attention/MLP internals, embeddings) is refused by name.
"""

import re
from typing import NamedTuple

from .errors import DictionaryError

RESIDUAL_SAE_SITES = ("resid_pre", "resid_mid", "resid_post")
# The module outputs, as `qlens_jax.lens.points.MODULE_OUTPUT_SITES` (kept equal by a test).
MODULE_OUTPUT_SITES = ("z", "attn_out", "mlp_out")
SAE_SITES = RESIDUAL_SAE_SITES + MODULE_OUTPUT_SITES
# SAE sites of a parallel block (GPT-NeoX): attention and MLP both read resid_pre, so there is
# no resid_mid (docs/definitions.md section 1c).
PARALLEL_BLOCK_SITES = ("resid_pre", "resid_post", "attn_out", "z", "mlp_out")
TRANSCODER_INPUT_SITES = ("mlp_in", "resid_mid")
TRANSCODER_OUTPUT_SITES = ("mlp_out",)
KINDS = ("sae", "transcoder")


class HookSite(NamedTuple):
    """A hook name resolved to a layer and a site name."""

    layer: int
    site: str


# TransformerLens `blocks.{L}.<suffix>` -> site.
_TL_SITES = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "ln2.hook_normalized": "mlp_in",
    "mlp.hook_in": "mlp_in",  # circuit-tracer's name for the MLP's (normalized) input
    "hook_mlp_in": "resid_mid",  # TL: the MLP block input *before* ln2, a copy of resid_mid
    "attn.hook_z": "z",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "mlp.hook_out": "mlp_out",
}
_TL_UNSUPPORTED = (
    "attn.hook_result",
    "hook_attn_in",
    "mlp.hook_pre",
    "mlp.hook_post",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_pattern",
)

_TL = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF = re.compile(r"^(?:model\.|language_model\.|transformer\.|gpt_neox\.)*(?:layers|h)\.(\d+)(?:\.(.+))?$")
# Hugging Face module paths below `model.layers.{L}`, whatever the family.
_HF_SITES = {
    None: "resid_post",
    "output": "resid_post",
    "input": "resid_pre",
    "pre_feedforward_layernorm.output": "mlp_in",
    "mlp.input": "mlp_in",
    "post_feedforward_layernorm.output": "mlp_out",  # Gemma 2/3: the MLP's post-norm
    "self_attn.o_proj.input": "z",  # Llama, Qwen, Gemma: the concatenated heads
    "attn.c_proj.input": "z",  # GPT-2
    "attn.output": "attn_out",
    "attn.c_proj.output": "attn_out",  # GPT-2 has no post-norms
    # GPT-NeoX (`gpt_neox.layers.L`): no post-norms either
    "attention.dense.input": "z",
    "attention.output": "attn_out",
    "attention.dense.output": "attn_out",
    "mlp.dense_4h_to_h.output": "mlp_out",
    # Qwen3.5's Gated DeltaNet layers (`linear_attn`): the output projection's input is the z
    # site of that layer, its output the attention output (no post-norms)
    "linear_attn.out_proj.input": "z",
    "linear_attn.output": "attn_out",
    "linear_attn.out_proj.output": "attn_out",
}
# Module outputs that are added straight to the residual, except in families with post-norms
# (Gemma 2/3), where they are the input of the post-norm: the site is the post-norm's output.
_BEFORE_POST_NORM = {
    "self_attn.output": ("attn_out", "post_attention_layernorm"),
    "self_attn.o_proj.output": ("attn_out", "post_attention_layernorm"),
    "mlp.output": ("mlp_out", "post_feedforward_layernorm"),
    "mlp.down_proj.output": ("mlp_out", "post_feedforward_layernorm"),
}


def has_post_norms(model_type: str | None) -> bool:
    """Whether a model family normalizes attention and MLP outputs before the residual add
    (Gemma 2 and 3; not Gemma 1, whose `post_attention_layernorm` is the MLP's pre-norm)."""
    return model_type is not None and model_type.startswith(("gemma2", "gemma3"))


def _hf_site(rest: str | None, model_type: str | None, name: str) -> str:
    """Site of a Hugging Face module path below `model.layers.{L}` (None: the layer itself)."""
    if rest in _HF_SITES:
        return _HF_SITES[rest]
    if rest == "post_attention_layernorm.output":
        # Llama/Qwen: the MLP's pre-norm. Gemma 2/3: the attention's post-norm.
        if model_type is None:
            raise DictionaryError(
                f"hook {name!r}: 'post_attention_layernorm' is the MLP input in Llama/Qwen but "
                "the attention output norm in Gemma; pass the model so its type decides"
            )
        return "attn_out" if has_post_norms(model_type) else "mlp_in"
    if rest in _BEFORE_POST_NORM:
        site, post_norm = _BEFORE_POST_NORM[rest]
        if model_type is None:
            raise DictionaryError(
                f"hook {name!r}: this module output is {site} except in Gemma 2/3 (which "
                f"normalizes it afterwards with {post_norm}); pass the model so its type decides"
            )
        if has_post_norms(model_type):
            raise DictionaryError(
                f"hook {name!r} is the {'attention' if site == 'attn_out' else 'MLP'} output "
                f"BEFORE {model_type}'s {post_norm}, not the {site} stream that is added to the "
                f"residual; a dictionary reading it cannot be placed at a Query Lens site (the "
                f"{site} site is '{post_norm}.output')"
            )
        return site
    raise DictionaryError(
        f"hook {name!r} is not a dictionary site Query Lens supports (SAEs: the layer input/"
        "output, self_attn.o_proj.input (z), the attention and MLP outputs; transcoders: MLP "
        "input -> MLP output)"
    )


def parse_hook_name(name: str, model_type: str | None = None) -> HookSite:
    """Resolve a TransformerLens (`blocks.3.hook_resid_post`, `blocks.3.attn.hook_z`) or Hugging
    Face (`model.layers.3`, `model.layers.3.self_attn.o_proj.input`) hook name.

    `model_type` is needed only for Hugging Face names whose meaning differs by family
    (`post_attention_layernorm`, and module outputs that Gemma 2/3 normalize afterwards).
    Raises `DictionaryError` for names that are not a supported site, naming the hook.
    """
    m = _TL.match(name)
    if m:
        layer, suffix = int(m.group(1)), m.group(2)
        if suffix in _TL_SITES:
            return HookSite(layer, _TL_SITES[suffix])
        why = "an attention/MLP-internal point" if suffix in _TL_UNSUPPORTED else "an unknown hook"
        raise DictionaryError(
            f"hook {name!r} is {why}, not a dictionary site Query Lens supports "
            f"(SAEs: {', '.join('blocks.L.hook_' + s for s in RESIDUAL_SAE_SITES)}, "
            "blocks.L.attn.hook_z, blocks.L.hook_attn_out, blocks.L.hook_mlp_out; transcoders: "
            "blocks.L.ln2.hook_normalized / mlp.hook_in -> blocks.L.hook_mlp_out)"
        )
    m = _HF.match(name)
    if m:
        return HookSite(int(m.group(1)), _hf_site(m.group(2), model_type, name))
    raise DictionaryError(
        f"hook {name!r} is neither a TransformerLens 'blocks.L.…' nor a Hugging Face "
        "'model.layers.L…' name; cannot tell which layer and site it is"
    )


def width_label(d_sae: int) -> str:
    """Human width of a dictionary as releases write it: 32768 -> '32k'."""
    if d_sae % 1024 == 0:
        return f"{d_sae // 1024}k"
    if d_sae % 1000 == 0:
        return f"{d_sae // 1000}k"
    return str(d_sae)


def default_name(kind: str, site_in: str, d_sae: int, label: str | None = None) -> str:
    """The dictionary name used in feature strings `Feature {name}/{layer}/{feature}`:
    `{site}-{width}` for SAEs (`resid-post-32k`, `attn-out-16k`, `z-24k`, `mlp-out-16k`),
    `transcoder-16k` for transcoders."""
    size = label or width_label(d_sae)
    kind_part = "transcoder" if kind == "transcoder" else site_in.replace("_", "-")
    return f"{kind_part}-{size}"
