"""Hugging Face weight names -> the Equinox transformer's leaves, as data.

`weight_plan(config)` lists, for every leaf of the model, which checkpoint tensor(s) fill
it and how (transpose, split). `key_layout` says where the checkpoint keeps them (the base
model's key prefix, the unembedding's key, and, in a multimodal checkpoint, the parts that
are not converted). `fill_model` reads them one at a time, checks shape and finiteness, and
asserts that every leaf was filled and every checkpoint key consumed or explicitly ignored.
"""

from __future__ import annotations

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from converters.checkpoint_files import TensorSource
from converters.errors import ConversionError
from converters.families import family
from converters.families.weights import LM_HEAD, KeyLayout, Source
from qlens_jax.models import ModelConfig, Transformer, init_transformer
from qlens_jax.models.transformer import layer_meta

# Buffers some checkpoints carry that are not parameters.
IGNORED_KEYS = re.compile(r".*(attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")


def weight_plan(config: ModelConfig) -> dict[str, Source]:
    """Which checkpoint tensor fills each leaf of `config`'s model: its family's plan."""
    return family(config.model_type).weights(config)


def _leaf_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".")


def key_layout(keys: list[str], config: ModelConfig, multimodal: bool = False, where: str = "checkpoint") -> KeyLayout:
    """Where the tensors of `config`'s model are among checkpoint `keys`.

    A text model's base keys are found by their embedding, whatever the prefix; a multimodal
    checkpoint (`multimodal=True`) must match one of its wrapper's known layouts.
    """
    spec = family(config.model_type)
    probe = spec.embed_key
    if multimodal:
        layouts = spec.wrapper_layouts
        if not layouts:
            raise ConversionError(f"no multimodal checkpoint layout for {config.model_type} (converter bug)")
        for layout in layouts:
            if layout.base + probe in keys:
                return layout
        expected = " or ".join(repr(layout.base + probe) for layout in layouts)
        raise ConversionError(f"{where} (multimodal) has no {expected} tensor: where is its language model?")
    for key in keys:
        if key.endswith(probe):
            lm_head = next((k for k in spec.lm_head_keys if k in keys), spec.lm_head_keys[0])
            return KeyLayout(key[: -len(probe)], lm_head)
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

    def pick(sources: Source | tuple[Source, ...], i: int) -> Source:
        """Of alternative layouts, the first the checkpoint has at layer `i`."""
        if not isinstance(sources, tuple):
            return sources
        return next((s for s in sources if layout.base + s.key.format(i=i, e=0) in keys), sources[0])

    def first_layer(sources: Source | tuple[Source, ...]) -> int:
        return (sources[0] if isinstance(sources, tuple) else sources).first_layer

    def layer_slice(source: Source, i: int, shape) -> np.ndarray:
        if not source.has_layer(i):
            return np.zeros(shape, np.float32)
        return read(source.key.format(i=i), source.transform, shape)

    def fill(path, leaf):
        name = _leaf_name(path)
        if name.startswith("meta."):
            return leaf
        if name not in plan:
            raise ConversionError(f"no checkpoint source for model leaf {name!r} (converter bug)")
        sources = plan[name]
        source = pick(sources, first_layer(sources))
        if source.experts:
            parts = [
                np.stack(
                    [read(source.key.format(i=i, e=e), source.transform, leaf.shape[2:]) for e in range(source.experts)]
                )
                if source.has_layer(i)
                else np.zeros(leaf.shape[1:], np.float32)
                for i in range(config.n_layers)
            ]
            array = np.stack(parts)
        elif name.startswith("blocks."):
            parts = [layer_slice(pick(sources, i), i, leaf.shape[1:]) for i in range(config.n_layers)]
            array = np.stack(parts)
        else:
            array = read(source.key, source.transform, leaf.shape)
        return jnp.asarray(array, dtype=dtype)

    model = jax.tree_util.tree_map_with_path(fill, skeleton)
    model = eqx.tree_at(lambda m: m.meta, model, layer_meta(config))
    buffers = family(config.model_type).buffer_keys
    not_converted = lambda k: IGNORED_KEYS.match(k) or k.startswith(layout.ignored) or k.endswith(buffers)
    leftover = sorted(k for k in keys if k not in consumed and not not_converted(k))
    if config.tie_word_embeddings:
        leftover = [k for k in leftover if k != layout.lm_head]
    if leftover:
        raise ConversionError(
            f"{where} has weights the config does not account for: {leftover[:8]}"
            + (" ..." if len(leftover) > 8 else "")
        )
    return model
