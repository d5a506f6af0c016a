"""Orbax checkpoints of converted models: convert a large model once, then load it fast.

Layout of a checkpoint directory: `qlens_model.json` (the `ModelConfig`) and `params/`
(an Orbax StandardCheckpointer tree of the model's arrays).
"""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from converters.errors import ConversionError
from qlens_jax.globs import unglobbed
from qlens_jax.models import ModelConfig, Transformer, init_transformer
from qlens_jax.models.transformer import layer_meta

CONFIG_FILE = "qlens_model.json"


def is_orbax_checkpoint(directory: Path) -> bool:
    return (Path(directory) / CONFIG_FILE).exists()


def save_checkpoint(model: Transformer, directory: str | Path) -> Path:
    """Write `model` to `directory` (created; must not exist yet, to never mix two models)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty; choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    params, _ = eqx.partition(model, eqx.is_array)
    params = eqx.tree_at(lambda m: m.meta, params, None)
    with unglobbed(directory) as literal, ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(literal / "params", params)  # Orbax globs below the folder: `unglobbed`
    # The config goes last: its presence marks a complete checkpoint.
    (directory / CONFIG_FILE).write_text(model.config.to_json())
    return directory


def load_checkpoint(directory: str | Path, dtype=None) -> Transformer:
    """Load a model written by `save_checkpoint`."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise ConversionError(f"{directory} is not a qlens-jax model checkpoint (no {CONFIG_FILE})")
    config = ModelConfig.from_json(config_path.read_text())
    skeleton = eqx.filter_eval_shape(init_transformer, config, jax.random.key(0))
    is_shape = lambda x: isinstance(x, jax.ShapeDtypeStruct)
    params, static = eqx.partition(eqx.tree_at(lambda m: m.meta, skeleton, None), is_shape)
    with unglobbed(directory) as literal, ocp.StandardCheckpointer() as checkpointer:
        try:
            restored = checkpointer.restore(literal / "params", params)
        except Exception as err:
            raise ConversionError(f"cannot restore the Orbax checkpoint in {directory}: {err}") from err
    if dtype is not None:
        restored = jax.tree.map(lambda x: jnp.asarray(x, dtype), restored)
    params = restored
    model = eqx.combine(params, static)
    return eqx.tree_at(lambda m: m.meta, model, layer_meta(config), is_leaf=lambda x: x is None)
