"""quality.json: the bundled artifacts measured on the held-out slice (`data/heldout.txt`).

Protocol (the test `tests/default/test_default_artifacts.py` recomputes it independently):
- tokens: `tokenizer.json` on the held-out text; non-overlapping 128-token windows, the last
  partial window dropped; no BOS.
- `heldout_loss`: mean next-token cross-entropy (nats) over all 127 predictions of every window.
- per dictionary, over every position of every window: `explained_variance` =
  1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 (SAE: y = input; transcoder: y = MLP output),
  `mean_l0` = mean number of non-zero activations per token, `dead_fraction` = share of features
  never active on the slice. Dictionaries are computed in float64 from the saved weights.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from qlens_jax import default as paths
from qlens_jax.default.training.export import load_hf_model
from qlens_jax.default.training.lm import eval_loss, heldout_windows


def encode(cfg: dict, w: dict, x: np.ndarray) -> np.ndarray:
    """Feature activations of a SAELens TopK SAE or ReLU transcoder, float64."""
    x = x.astype(np.float64)
    if cfg.get("apply_b_dec_to_input"):
        x = x - w["b_dec"]
    pre = x @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "topk":
        k = cfg["k"]
        idx = np.argpartition(-pre, k - 1, axis=-1)[:, :k]
        acts = np.zeros_like(pre)
        np.put_along_axis(acts, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0.0), -1)
        return acts
    if cfg["architecture"] == "transcoder":
        return np.maximum(pre, 0.0)
    raise ValueError(f"unsupported architecture {cfg['architecture']!r}")


def dictionary_quality(cfg: dict, w: dict, x: np.ndarray, y: np.ndarray, chunk: int = 4096) -> dict:
    w = {k: v.astype(np.float64) for k, v in w.items()}
    y = y.astype(np.float64)
    sse, l0_sum, ever_active = 0.0, 0, np.zeros(cfg["d_sae"], bool)
    for i in range(0, len(x), chunk):
        acts = encode(cfg, w, x[i : i + chunk])
        sse += np.square(y[i : i + chunk] - (acts @ w["W_dec"] + w["b_dec"])).sum()
        l0_sum += int((acts > 0).sum())
        ever_active |= (acts > 0).any(0)
    sst = np.square(y - y.mean(0)).sum()
    return {
        "explained_variance": float(1.0 - sse / sst),
        "mean_l0": l0_sum / len(x),
        "dead_fraction": float(1.0 - ever_active.mean()),
    }


SITES = {
    "blocks.{l}.hook_resid_post": "resid_post",
    "blocks.{l}.ln2.hook_normalized": "mlp_in",
    "blocks.{l}.hook_mlp_out": "mlp_out",
}


def _site(hook: str, layer: int) -> str:
    for pattern, site in SITES.items():
        if hook == pattern.format(l=layer):
            return site
    raise ValueError(f"unknown hook {hook!r}")


def evaluate() -> dict:
    model = load_hf_model(paths.model_dir())
    tok = Tokenizer.from_file(str(paths.model_dir() / "tokenizer.json"))
    ids = np.asarray(tok.encode(paths.heldout_text_path().read_text(encoding="utf-8")).ids, np.int32)
    windows = heldout_windows(ids, model.config.n_positions)
    loss = eval_loss(model, windows)
    points = jax.jit(jax.vmap(lambda t: model.residuals(t)[1]))(jnp.asarray(windows))
    points = {
        k: np.asarray(v).transpose(1, 0, 2, 3).reshape(model.config.n_layers, -1, model.config.d_model)
        for k, v in points.items()
    }
    dictionaries = {}
    for name in paths.DICTIONARY_NAMES:
        folder = paths.dictionary_dir(name)
        cfg = json.loads((folder / "cfg.json").read_text())
        w = load_file(str(folder / "sae_weights.safetensors"))
        meta = cfg["metadata"]
        layer = int(meta["hook_name"].split(".")[1])
        x = points[_site(meta["hook_name"], layer)][layer]
        y = points[_site(meta.get("hook_name_out", meta["hook_name"]), layer)][layer]
        dictionaries[name] = {
            "architecture": cfg["architecture"],
            "hook_name": meta["hook_name"],
            "hook_name_out": meta.get("hook_name_out", meta["hook_name"]),
            "d_sae": cfg["d_sae"],
            **({"k": cfg["k"]} if "k" in cfg else {}),
            **dictionary_quality(cfg, w, x, y),
        }
    return {
        "heldout": {
            "file": "qlens_jax/default/data/heldout.txt",
            "tokens": int(len(ids)),
            "windows": int(len(windows)),
            "window_tokens": int(model.config.n_positions),
            "protocol": " ".join(__doc__.split("independently):", 1)[1].split()),
        },
        "model": {
            "heldout_loss": loss,
            "heldout_perplexity": math.exp(loss),
            "log_vocab": math.log(model.config.vocab_size),
        },
        "dictionaries": dictionaries,
    }
