"""Where a dictionary sits: site names, and hook names (TransformerLens and Hugging Face) parsed
into (layer, site).

Sites follow docs/architecture.md: SAEs read and write `resid_pre | resid_mid | resid_post` of a
layer; transcoders of MLP `l` read the MLP's normalized input `mlp_in` (or, for files that say
so, the un-normalized MLP block input `resid_mid`) and write `mlp_out` of the same layer.
Anything else (attention `hook_z`, `attn_out`, MLP-output SAEs, embeddings) is refused by name.
"""

import re
from typing import NamedTuple

from .errors import DictionaryError

SAE_SITES = ("resid_pre", "resid_mid", "resid_post")
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
    "hook_mlp_out": "mlp_out",
    "mlp.hook_out": "mlp_out",
}
_TL_UNSUPPORTED = ("attn.hook_z", "hook_attn_out", "attn.hook_result", "hook_attn_in",
                   "mlp.hook_pre", "mlp.hook_post", "attn.hook_q", "attn.hook_k", "attn.hook_v")

_TL = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF = re.compile(
    r"^(?:model\.|language_model\.|transformer\.|gpt_neox\.)*(?:layers|h)\.(\d+)(?:\.(.+))?$"
)


def _is_gemma(model_type: str | None) -> bool:
    return model_type is not None and model_type.startswith("gemma")


def _hf_site(rest: str | None, model_type: str | None, name: str) -> str:
    """Site of a Hugging Face module path below `model.layers.{L}` (None: the layer itself)."""
    if rest in (None, "output"):
        return "resid_post"
    if rest == "input":
        return "resid_pre"
    if rest in ("pre_feedforward_layernorm.output", "mlp.input"):
        return "mlp_in"
    if rest == "post_feedforward_layernorm.output":
        return "mlp_out"
    if rest == "post_attention_layernorm.output":
        # Llama/Qwen: the MLP's pre-norm. Gemma 2/3: the attention's post-norm.
        if model_type is None:
            raise DictionaryError(
                f"hook {name!r}: 'post_attention_layernorm' is the MLP input in Llama/Qwen but "
                "the attention output norm in Gemma; pass the model so its type decides"
            )
        if _is_gemma(model_type):
            raise DictionaryError(
                f"hook {name!r} is Gemma's attention post-norm output, not a dictionary site "
                f"Query Lens supports ({SAE_SITES + TRANSCODER_INPUT_SITES})"
            )
        return "mlp_in"
    if rest == "mlp.output" and not _is_gemma(model_type):
        if model_type is None:
            raise DictionaryError(
                f"hook {name!r}: the MLP module output is mlp_out except in Gemma (which "
                "normalizes it afterwards); pass the model so its type decides"
            )
        return "mlp_out"
    raise DictionaryError(
        f"hook {name!r} is not a dictionary site Query Lens supports (resid_pre/resid_mid/"
        "resid_post for SAEs; MLP input -> MLP output for transcoders)"
    )


def parse_hook_name(name: str, model_type: str | None = None) -> HookSite:
    """Resolve a TransformerLens (`blocks.3.hook_resid_post`) or Hugging Face
    (`model.layers.3`, `model.layers.3.post_feedforward_layernorm.output`) hook name.

    `model_type` is needed only for Hugging Face names whose meaning differs by family.
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
            f"(SAEs: {', '.join('blocks.L.hook_' + s for s in SAE_SITES)}; transcoders: "
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
    `resid-post-32k` for SAEs, `transcoder-16k` for transcoders."""
    size = label or width_label(d_sae)
    kind_part = "transcoder" if kind == "transcoder" else site_in.replace("_", "-")
    return f"{kind_part}-{size}"
