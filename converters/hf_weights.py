"""Hugging Face weight names -> the Equinox transformer's leaves, as data.

`weight_plan(config)` lists, for every leaf of the model, which checkpoint tensor(s) fill
it and how (transpose, split). `key_layout` says where the checkpoint keeps them (the base
model's key prefix, the unembedding's key, and, in a multimodal checkpoint, the parts that
are not converted). `fill_model` reads them one at a time, checks shape and finiteness, and
asserts that every leaf was filled and every checkpoint key consumed or explicitly ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from converters.checkpoint_files import TensorSource
from converters.errors import ConversionError
from qlens_jax.models import ModelConfig, Transformer, init_transformer
from qlens_jax.models.transformer import layer_meta

# Buffers some checkpoints carry that are not parameters.
IGNORED_KEYS = re.compile(r".*(attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")

# The plans' key of the unembedding; `KeyLayout.lm_head` says where a checkpoint stores it.
LM_HEAD = "lm_head.weight"

identity = lambda x: x
transpose = lambda x: x.T


def _split(part: int, parts: int = 3) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.split(x, parts, axis=-1)[part]


@dataclass(frozen=True)
class Source:
    """Leaf filled from `key` (with `{i}` for the layer of stacked leaves) through `transform`."""

    key: str
    transform: Callable[[np.ndarray], np.ndarray] = identity


def _gpt2_plan(c: ModelConfig) -> dict[str, Source]:
    h = "h.{i}."
    plan = {
        "embed_tokens": Source("wte.weight"),
        "embed_positions": Source("wpe.weight"),
        "final_norm.weight": Source("ln_f.weight"),
        "final_norm.bias": Source("ln_f.bias"),
        "blocks.attn_norm.weight": Source(h + "ln_1.weight"),
        "blocks.attn_norm.bias": Source(h + "ln_1.bias"),
        "blocks.mlp_norm.weight": Source(h + "ln_2.weight"),
        "blocks.mlp_norm.bias": Source(h + "ln_2.bias"),
        "blocks.attn.o_proj.weight": Source(h + "attn.c_proj.weight"),
        "blocks.attn.o_proj.bias": Source(h + "attn.c_proj.bias"),
        "blocks.mlp.up_proj.weight": Source(h + "mlp.c_fc.weight"),
        "blocks.mlp.up_proj.bias": Source(h + "mlp.c_fc.bias"),
        "blocks.mlp.down_proj.weight": Source(h + "mlp.c_proj.weight"),
        "blocks.mlp.down_proj.bias": Source(h + "mlp.c_proj.bias"),
    }
    # GPT-2's Conv1D stores [in, out] with q, k, v concatenated along the output.
    for part, name in enumerate("qkv"):
        plan[f"blocks.attn.{name}_proj.weight"] = Source(h + "attn.c_attn.weight", _split(part))
        plan[f"blocks.attn.{name}_proj.bias"] = Source(h + "attn.c_attn.bias", _split(part))
    if not c.tie_word_embeddings:
        plan["lm_head"] = Source(LM_HEAD)
    return plan


def _rope_family_plan(c: ModelConfig) -> dict[str, Source]:
    layer = "layers.{i}."
    plan = {
        "embed_tokens": Source("embed_tokens.weight"),
        "final_norm.weight": Source("norm.weight"),
        "blocks.attn_norm.weight": Source(layer + "input_layernorm.weight"),
    }
    for name in ("q", "k", "v", "o"):
        plan[f"blocks.attn.{name}_proj.weight"] = Source(layer + f"self_attn.{name}_proj.weight", transpose)
        plan[f"blocks.attn.{name}_proj.bias"] = Source(layer + f"self_attn.{name}_proj.bias")
    for name in ("gate", "up", "down"):
        plan[f"blocks.mlp.{name}_proj.weight"] = Source(layer + f"mlp.{name}_proj.weight", transpose)
        plan[f"blocks.mlp.{name}_proj.bias"] = Source(layer + f"mlp.{name}_proj.bias")
    if c.qk_norm:
        plan["blocks.attn.q_norm.weight"] = Source(layer + "self_attn.q_norm.weight")
        plan["blocks.attn.k_norm.weight"] = Source(layer + "self_attn.k_norm.weight")
    if c.post_norms:  # Gemma-3 names its four block norms differently from Llama.
        plan["blocks.attn_post_norm.weight"] = Source(layer + "post_attention_layernorm.weight")
        plan["blocks.mlp_norm.weight"] = Source(layer + "pre_feedforward_layernorm.weight")
        plan["blocks.mlp_post_norm.weight"] = Source(layer + "post_feedforward_layernorm.weight")
    else:
        plan["blocks.mlp_norm.weight"] = Source(layer + "post_attention_layernorm.weight")
    if not c.tie_word_embeddings:
        plan["lm_head"] = Source(LM_HEAD)
    return plan


def weight_plan(config: ModelConfig) -> dict[str, Source]:
    return _gpt2_plan(config) if config.model_type == "gpt2" else _rope_family_plan(config)


def _leaf_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".")


@dataclass(frozen=True)
class KeyLayout:
    """Where a checkpoint keeps the converted model's tensors."""

    base: str  # prefix of the base model's keys (`transformer.`, `model.`, ...)
    lm_head: str = LM_HEAD  # key of the untied unembedding
    ignored: tuple[str, ...] = ()  # key prefixes of the parts not converted (vision tower, ...)


# Gemma3ForConditionalGeneration: files keep the original layout (transformers renames keys on
# load and back on save), the in-memory state dict has the module layout.
GEMMA3_MULTIMODAL_LAYOUTS = (
    KeyLayout("language_model.model.", "language_model.lm_head.weight", ("vision_tower.", "multi_modal_projector.")),
    KeyLayout("model.language_model.", LM_HEAD, ("model.vision_tower.", "model.multi_modal_projector.")),
)
MULTIMODAL_LAYOUTS = {"gemma3_text": GEMMA3_MULTIMODAL_LAYOUTS}


def key_layout(
    keys: list[str], config: ModelConfig, multimodal: bool = False, where: str = "checkpoint"
) -> KeyLayout:
    """Where the tensors of `config`'s model are among checkpoint `keys`.

    A text model's base keys are found by their embedding, whatever the prefix; a multimodal
    checkpoint (`multimodal=True`) must match one of its wrapper's known layouts.
    """
    probe = "wte.weight" if config.model_type == "gpt2" else "embed_tokens.weight"
    if multimodal:
        layouts = MULTIMODAL_LAYOUTS.get(config.model_type)
        if layouts is None:
            raise ConversionError(f"no multimodal checkpoint layout for {config.model_type} (converter bug)")
        for layout in layouts:
            if layout.base + probe in keys:
                return layout
        expected = " or ".join(repr(layout.base + probe) for layout in layouts)
        raise ConversionError(f"{where} (multimodal) has no {expected} tensor: where is its language model?")
    for key in keys:
        if key.endswith(probe):
            return KeyLayout(key[: -len(probe)])
    raise ConversionError(f"{where} has no '{probe}' tensor: is it a {config.model_type} checkpoint?")


def fill_model(
    config: ModelConfig,
    tensors: TensorSource,
    dtype=jnp.float32,
    where: str = "checkpoint",
    multimodal: bool = False,
) -> Transformer:
    """Build the Equinox model of `config` from checkpoint tensors, checking everything.

    `multimodal`: the tensors are a multimodal wrapper's (`converters.hf_config.is_multimodal`);
    its language model is converted and the keys of its other parts are ignored.
    """
    skeleton = eqx.filter_eval_shape(init_transformer, config, jax.random.key(0), dtype)
    keys = tensors.keys()
    layout = key_layout(keys, config, multimodal, where)
    plan = weight_plan(config)
    consumed: set[str] = set()

    def read(key: str, transform, expected_shape) -> np.ndarray:
        full = layout.lm_head if key == LM_HEAD else layout.base + key
        if full not in keys:
            raise ConversionError(f"{where} is missing weight {full!r}")
        array = transform(tensors.get(full))
        consumed.add(full)
        if tuple(array.shape) != tuple(expected_shape):
            raise ConversionError(
                f"weight {full!r} in {where} has shape {tuple(array.shape)} but the config implies "
                f"{tuple(expected_shape)}"
            )
        if not np.isfinite(np.asarray(array, np.float32)).all():
            raise ConversionError(f"weight {full!r} in {where} contains NaN or Inf values")
        return array

    def fill(path, leaf):
        name = _leaf_name(path)
        if name.startswith("meta."):
            return leaf
        if name not in plan:
            raise ConversionError(f"no checkpoint source for model leaf {name!r} (converter bug)")
        source = plan[name]
        if name.startswith("blocks."):
            parts = [read(source.key.format(i=i), source.transform, leaf.shape[1:]) for i in range(config.n_layers)]
            array = np.stack(parts)
        else:
            array = read(source.key, source.transform, leaf.shape)
        return jnp.asarray(array, dtype=dtype)

    model = jax.tree_util.tree_map_with_path(fill, skeleton)
    model = eqx.tree_at(lambda m: m.meta, model, layer_meta(config))
    not_converted = lambda k: IGNORED_KEYS.match(k) or k.startswith(layout.ignored)
    leftover = sorted(k for k in keys if k not in consumed and not not_converted(k))
    if config.tie_word_embeddings:
        leftover = [k for k in leftover if k != layout.lm_head]
    if leftover:
        raise ConversionError(
            f"{where} has weights the config does not account for: {leftover[:8]}"
            + (" ..." if len(leftover) > 8 else "")
        )
    return model
