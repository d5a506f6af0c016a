"""Write the parity fixture of `benchmarks.device_check` (tests/fixtures/device_check/).

A tiny seeded GPT-2 (Hugging Face directory: config.json + model.safetensors), a standard SAE on
its `resid_post[1]` (SAELens folder: cfg.json + sae_weights.safetensors), a padded token sample
(tokens.npy, mask.npy) and what the CPU computes from them in float32: the top-25 ids and scores
of every feature under all six lenses (expected.npz, keys `<lens>/top_ids`, `<lens>/top_scores`).
The device check loads them with the converters, as a user would, and compares. Needs torch and
transformers (run here, not on the GPU machine):

    PYTHONPATH=. python -m benchmarks.make_device_fixture
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "device_check"
SEED, VOCAB, N_FEATURES, LAYER, K = 0, 113, 192, 1, 25
SAE_DIR = "sae-resid-post-1"


def write_sae(directory: Path, d_model: int, rng: np.random.Generator) -> None:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weights = {
        "W_enc": (rng.normal(size=(d_model, N_FEATURES)) / np.sqrt(d_model)).astype(np.float32),
        "b_enc": (0.3 * rng.normal(size=N_FEATURES)).astype(np.float32),
        "W_dec": rng.normal(size=(N_FEATURES, d_model)).astype(np.float32),
        "b_dec": (0.1 * rng.normal(size=d_model)).astype(np.float32),
    }
    save_file(weights, str(directory / "sae_weights.safetensors"))
    cfg = {
        "d_in": d_model,
        "d_sae": N_FEATURES,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": "standard",
        "metadata": {
            "sae_lens_version": "6.54.12",
            "model_name": "device-check-gpt2",
            "hook_name": f"blocks.{LAYER}.hook_resid_post",
            "hook_head_index": None,
            "prepend_bos": False,
            "context_size": 16,
            "model_class_name": "HookedTransformer",
        },
    }
    (directory / "cfg.json").write_text(json.dumps(cfg, indent=1) + "\n")


def expected_signatures(directory: Path) -> dict[str, np.ndarray]:
    """What the CPU computes for the fixture in float32 (the device check's `parity` part runs the same)."""
    from benchmarks.device_check import fixture_signatures

    tables = fixture_signatures(directory, "float32")
    return {f"{lens}/{field}": value for lens, table in tables.items() for field, value in table.items()}


def main() -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import build_hf_model, padded_batch

    FIXTURE.mkdir(parents=True, exist_ok=True)
    hf = build_hf_model("gpt2", seed=SEED, vocab_size=VOCAB)
    hf.save_pretrained(FIXTURE / "model", safe_serialization=True)
    tokens, mask = padded_batch(VOCAB, batch=4, seq=16, seed=SEED)
    np.save(FIXTURE / "tokens.npy", tokens)
    np.save(FIXTURE / "mask.npy", mask)
    write_sae(FIXTURE / SAE_DIR, hf.config.n_embd, np.random.default_rng(SEED + 7))
    np.savez(FIXTURE / "expected.npz", **expected_signatures(FIXTURE))
    size = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    print(f"wrote {FIXTURE} ({size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
