"""Write the trained model as a Hugging Face GPT-2 folder and dictionaries as SAELens folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from qlens_jax.default.training.gpt2 import GPT2, GPT2Config, from_hf_state_dict, to_hf_state_dict


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def update_training_record(update: dict) -> None:
    """Merge `update` into artifacts/training.json."""
    from qlens_jax import default as paths

    path = paths.training_record_path()
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update(update)
    write_json(path, record)


def save_hf_model(model: GPT2, folder: Path, eos_token_id: int) -> None:
    """`config.json` + `model.safetensors` (float32, `transformer.*` keys, Conv1D `[in, out]`)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", model.config.to_hf_config(eos_token_id))
    state = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in to_hf_state_dict(model).items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "model.safetensors").chmod(0o644)  # safetensors writes 0600


def load_hf_model(folder: Path) -> GPT2:
    """Read back what `save_hf_model` wrote (for the dictionary stage and the checks)."""
    hf = json.loads((folder / "config.json").read_text())
    config = GPT2Config(
        vocab_size=hf["vocab_size"],
        n_positions=hf["n_positions"],
        d_model=hf["n_embd"],
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        layer_norm_epsilon=hf["layer_norm_epsilon"],
    )
    return from_hf_state_dict(config, load_file(str(folder / "model.safetensors")))


def save_saelens(folder: Path, cfg: dict, weights: dict[str, np.ndarray]) -> None:
    """SAELens v6 disk layout: `cfg.json` + `sae_weights.safetensors`
    (`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_out]`, `b_dec [d_out]`)."""
    d_in, d_sae = weights["W_enc"].shape
    d_out = weights["W_dec"].shape[1]
    assert weights["W_dec"].shape == (d_sae, d_out) and weights["b_enc"].shape == (d_sae,)
    assert weights["b_dec"].shape == (d_out,) and (cfg["d_in"], cfg["d_sae"]) == (d_in, d_sae)
    write_json(folder / "cfg.json", cfg)
    save_file(
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()},
        str(folder / "sae_weights.safetensors"),
    )
    (folder / "sae_weights.safetensors").chmod(0o644)  # safetensors writes 0600
