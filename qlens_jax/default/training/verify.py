"""Check the exported artifacts with the libraries they are meant for (needs the torch extra):

- `transformers.GPT2LMHeadModel` loads `artifacts/model` and gives the JAX training model's
  logits on held-out windows (max abs difference <= 1e-4); `AutoTokenizer` gives the same ids
  as `tokenizers`.
- `sae_lens.SAE.load_from_disk` loads every dictionary folder, as the expected class, and its
  `encode`/`decode` match `evaluate.encode` on held-out activations.

Run `python -m qlens_jax.default.training.verify`; the results go into training.json.
"""

from __future__ import annotations

import json

import numpy as np

from qlens_jax import default as paths
from qlens_jax.default.training.evaluate import encode
from qlens_jax.default.training.export import load_hf_model
from qlens_jax.default.training.lm import heldout_windows

LOGIT_TOLERANCE = 1e-4


def main() -> dict:
    import jax
    import jax.numpy as jnp
    import sae_lens
    import torch
    import transformers
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    text = paths.heldout_text_path().read_text(encoding="utf-8")
    ids = Tokenizer.from_file(str(paths.model_dir() / "tokenizer.json")).encode(text).ids
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(paths.model_dir()))
    tokenizer_match = hf_tok(text)["input_ids"] == ids

    model = load_hf_model(paths.model_dir())
    windows = heldout_windows(np.asarray(ids), model.config.n_positions)[:32]
    jax_logits = np.asarray(jax.vmap(model)(jnp.asarray(windows)))
    jax_points = jax.vmap(lambda t: model.residuals(t)[1])(jnp.asarray(windows))
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(paths.model_dir())).eval()
    with torch.no_grad():
        hf_logits = hf(torch.as_tensor(windows, dtype=torch.long)).logits.numpy()
    logit_diff = float(np.abs(hf_logits - jax_logits).max())

    dictionaries = {}
    expected = {"topk": sae_lens.TopKSAE, "transcoder": sae_lens.Transcoder}
    for name in paths.DICTIONARY_NAMES:
        folder = paths.dictionary_dir(name)
        cfg = json.loads((folder / "cfg.json").read_text())
        sae = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
        meta = cfg["metadata"]
        layer = int(meta["hook_name"].split(".")[1])
        site = "mlp_in" if cfg["architecture"] == "transcoder" else "resid_post"
        x = np.asarray(jax_points[site][:, layer]).reshape(-1, model.config.d_model)
        with torch.no_grad():
            acts = sae.encode(torch.as_tensor(x)).numpy()
            recon = sae.decode(torch.as_tensor(acts)).numpy()
        w = load_file(str(folder / "sae_weights.safetensors"))
        ref = encode(cfg, {k: v.astype(np.float64) for k, v in w.items()}, x)
        ref_recon = ref @ w["W_dec"].astype(np.float64) + w["b_dec"]
        dictionaries[name] = {
            "sae_lens_class": type(sae).__name__,
            "class_ok": isinstance(sae, expected[cfg["architecture"]]),
            "max_abs_activation_diff": float(np.abs(acts - ref).max()),
            "max_abs_reconstruction_diff": float(np.abs(recon - ref_recon).max()),
            "hook_name": sae.cfg.metadata.hook_name,
            "hook_name_out": sae.cfg.metadata.hook_name_out,
            "hooks_ok": (sae.cfg.metadata.hook_name, sae.cfg.metadata.hook_name_out)
            == (meta["hook_name"], meta.get("hook_name_out")),
        }
    result = {
        "transformers_version": transformers.__version__,
        "sae_lens_version": sae_lens.__version__,
        "torch_version": torch.__version__,
        "tokenizer_ids_match_autotokenizer": tokenizer_match,
        "windows_compared": int(len(windows)),
        "max_abs_logit_diff_vs_GPT2LMHeadModel": logit_diff,
        "logit_tolerance": LOGIT_TOLERANCE,
        "sae_lens_load_from_disk": dictionaries,
    }
    ok = (
        tokenizer_match
        and logit_diff <= LOGIT_TOLERANCE
        and all(
            d["class_ok"]
            and d["hooks_ok"]
            and d["max_abs_activation_diff"] < 1e-3
            and d["max_abs_reconstruction_diff"] < 1e-3
            for d in dictionaries.values()
        )
    )
    result["ok"] = bool(ok)
    return result


if __name__ == "__main__":
    from qlens_jax.default.training.export import update_training_record

    result = main()
    update_training_record({"verification": result})
    print(json.dumps(result, indent=2))
    if not result["ok"]:
        raise SystemExit("verification failed")
