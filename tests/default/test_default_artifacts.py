"""The bundled default model and dictionaries (`qlens_jax.default`), checked independently of
the code that trained them: the model through `transformers.GPT2LMHeadModel`, the
dictionaries by a direct numpy computation from their safetensors, both on the held-out slice,
against the figures recorded in `artifacts/quality.json` (protocol: its "heldout" entry)."""

import json
import math

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from qlens_jax import default

QUALITY = json.loads(default.quality_path().read_text())
WINDOW = QUALITY["heldout"]["window_tokens"]


@pytest.fixture(scope="module")
def heldout_windows() -> np.ndarray:
    tok = Tokenizer.from_file(str(default.model_dir() / "tokenizer.json"))
    ids = tok.encode(default.heldout_text_path().read_text(encoding="utf-8")).ids
    assert len(ids) == QUALITY["heldout"]["tokens"]
    n = len(ids) // WINDOW
    return np.asarray(ids[: n * WINDOW], dtype=np.int64).reshape(n, WINDOW)


@pytest.fixture(scope="module")
def hf_run(heldout_windows):
    """Logits and every dictionary's read/write point, captured with forward hooks."""
    model = transformers.GPT2LMHeadModel.from_pretrained(str(default.model_dir())).eval()
    wanted = set()
    for name in default.DICTIONARY_NAMES:
        meta = json.loads((default.dictionary_dir(name) / "cfg.json").read_text())["metadata"]
        wanted |= {meta["hook_name"], meta.get("hook_name_out") or meta["hook_name"]}
    captured: dict[str, list] = {}

    def keep(name, value):
        if name in wanted:
            captured.setdefault(name, []).append(value.detach().reshape(-1, value.shape[-1]).numpy())

    def block_hook(layer):
        def hook(module, args, output):
            keep(f"blocks.{layer}.hook_resid_post", output[0] if isinstance(output, tuple) else output)

        return hook

    def mlp_hook(layer):
        def hook(module, args, output):  # returns None: the output is left as it is
            keep(f"blocks.{layer}.ln2.hook_normalized", args[0])
            keep(f"blocks.{layer}.hook_mlp_out", output)

        return hook

    hooks = []
    for layer, block in enumerate(model.transformer.h):
        hooks.append(block.register_forward_hook(block_hook(layer)))
        hooks.append(block.mlp.register_forward_hook(mlp_hook(layer)))
    losses = []
    with torch.no_grad():
        for chunk in torch.as_tensor(heldout_windows).split(64):
            logits = model(chunk).logits
            losses.append(
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="none"
                ).numpy()
            )
    for h in hooks:
        h.remove()
    points = {name: np.concatenate(parts) for name, parts in captured.items()}
    return float(np.concatenate(losses).mean()), points, model.config


def test_model_loss_matches_record(hf_run):
    loss, _, config = hf_run
    recorded = QUALITY["model"]["heldout_loss"]
    assert config.model_type == "gpt2"
    assert abs(loss - recorded) < 1e-3, (loss, recorded)
    assert loss < 0.6 * math.log(config.vocab_size), loss  # far better than uniform


def _encode_decode(cfg: dict, w: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reconstruction and number of active features per token (float32, as sae_lens computes)."""
    pre = (x - w["b_dec"] if cfg["apply_b_dec_to_input"] else x) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "topk":
        top = np.argpartition(pre, -cfg["k"], axis=-1)[:, -cfg["k"] :]
        values = np.take_along_axis(pre, top, -1).clip(min=0.0)
        recon = np.einsum("tk,tkd->td", values, w["W_dec"][top]) + w["b_dec"]
        active = np.zeros(pre.shape, bool)
        np.put_along_axis(active, top, values > 0, -1)
        return recon, active
    assert cfg["architecture"] == "transcoder"
    acts = pre.clip(min=0.0)
    return acts @ w["W_dec"] + w["b_dec"], acts > 0


@pytest.mark.parametrize("name", default.DICTIONARY_NAMES)
def test_dictionary_quality_matches_record(name, hf_run):
    _, points, config = hf_run
    folder = default.dictionary_dir(name)
    cfg = json.loads((folder / "cfg.json").read_text())
    w = load_file(str(folder / "sae_weights.safetensors"))
    meta = cfg["metadata"]
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    d_out = cfg.get("d_out", d_in)
    assert w["W_enc"].shape == (d_in, d_sae) and w["W_dec"].shape == (d_sae, d_out)
    assert w["b_enc"].shape == (d_sae,) and w["b_dec"].shape == (d_out,)
    assert d_in == config.n_embd and cfg["normalize_activations"] == "none"

    x = points[meta["hook_name"]]
    y = points[meta.get("hook_name_out") or meta["hook_name"]]
    sse, n_active, ever = 0.0, 0, np.zeros(d_sae, bool)
    for i in range(0, len(x), 8192):
        recon, active = _encode_decode(cfg, w, x[i : i + 8192])
        sse += float(np.square((y[i : i + 8192] - recon).astype(np.float64)).sum())
        n_active += int(active.sum())
        ever |= active.any(0)
    explained = 1.0 - sse / float(np.square(y.astype(np.float64) - y.mean(0, dtype=np.float64)).sum())
    mean_l0 = n_active / len(x)

    recorded = QUALITY["dictionaries"][name]
    assert abs(explained - recorded["explained_variance"]) < 1e-3, (explained, recorded)
    assert abs(mean_l0 - recorded["mean_l0"]) < 0.05, (mean_l0, recorded)
    assert abs((1.0 - ever.mean()) - recorded["dead_fraction"]) <= 2 / d_sae, (1.0 - ever.mean(), recorded)
    assert explained > 0.7, explained
    if cfg["architecture"] == "topk":
        assert mean_l0 <= cfg["k"]


def test_artifact_layout():
    hf = json.loads((default.model_dir() / "config.json").read_text())
    assert hf["model_type"] == "gpt2" and hf["tie_word_embeddings"]
    for name in default.DICTIONARY_NAMES:
        cfg = json.loads((default.dictionary_dir(name) / "cfg.json").read_text())
        layer = int(name.rsplit("-", 1)[1])
        if name.startswith("transcoder"):
            assert cfg["architecture"] == "transcoder"
            assert cfg["metadata"]["hook_name"] == f"blocks.{layer}.ln2.hook_normalized"
            assert cfg["metadata"]["hook_name_out"] == f"blocks.{layer}.hook_mlp_out"
        else:
            assert cfg["architecture"] == "topk"
            assert cfg["metadata"]["hook_name"] == f"blocks.{layer}.hook_resid_post"
    assert (default.data_dir() / "LICENSE.txt").is_file()
    total = sum(p.stat().st_size for p in default.artifact_dir().rglob("*") if p.is_file())
    assert total < 30 * 2**20, total
