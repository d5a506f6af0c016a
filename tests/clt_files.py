"""Cross-layer transcoder files written in circuit-tracer's published layout
(`CrossLayerTranscoder.to_safetensors`): `config.yaml`, and per layer `l`
`W_enc_{l}.safetensors` (`W_enc_{l} [d_transcoder, d_model]`, `b_enc_{l}`, `b_dec_{l}`,
optionally `threshold_{l}`) and `W_dec_{l}.safetensors` (`W_dec_{l} [d_transcoder, n_layers - l, d_model]`)."""

from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import save_file


def write_clt_folder(
    folder: Path,
    n_layers: int,
    d_model: int,
    d_sae: int,
    *,
    jumprelu: bool = False,
    input_hook: str = "hook_resid_mid",
    seed: int = 20,
) -> Path:
    """A seeded CLT of `n_layers` layers in `folder`; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_name": "google/gemma-2-2b",
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": input_hook,
        "feature_output_hook": "hook_mlp_out",
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for layer in range(n_layers):
        g = np.random.default_rng(seed + layer)
        encoder = {
            f"W_enc_{layer}": (g.normal(size=(d_sae, d_model)) * 0.3).astype(np.float32),
            f"b_enc_{layer}": (g.normal(size=d_sae) * 0.5).astype(np.float32),
            f"b_dec_{layer}": (g.normal(size=d_model) * 0.5).astype(np.float32),
        }
        if jumprelu:  # some negative: circuit-tracer's JumpReLU keeps pre where pre > threshold, no ReLU
            encoder[f"threshold_{layer}"] = (g.uniform(size=d_sae) * 1.2 - 0.4).astype(np.float32)
        save_file(encoder, folder / f"W_enc_{layer}.safetensors")
        decoder = (g.normal(size=(d_sae, n_layers - layer, d_model)) * 0.3).astype(np.float32)
        save_file({f"W_dec_{layer}": decoder}, folder / f"W_dec_{layer}.safetensors")
    return folder
