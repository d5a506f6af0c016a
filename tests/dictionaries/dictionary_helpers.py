"""Helpers for the dictionary tests: seeded inputs, independent numpy oracles, comparisons."""

import dataclasses

import numpy as np

D_IN, D_SAE = 16, 48
# The heads of the tiny model: z is N_HEADS x D_HEAD = D_Z wide, deliberately not D_IN.
N_HEADS, D_HEAD = 4, 6
D_Z = N_HEADS * D_HEAD


@dataclasses.dataclass(frozen=True)
class TinyModelConfig:
    """Stand-in for ModelConfig: the facts dictionaries are validated against."""

    d_model: int = D_IN
    n_layers: int = 4
    model_type: str = "gpt2"
    n_heads: int = N_HEADS
    head_dim: int = D_HEAD


def inputs(shape=(2, 5, D_IN), seed=0, scale=1.5, offset=0.3) -> np.ndarray:
    """Seeded float32 activations with a non-zero mean (so b_dec and norms matter)."""
    return (np.random.default_rng(seed).normal(size=shape) * scale + offset).astype(np.float32)


def np_topk(pre: np.ndarray, k: int, rectify: bool = True) -> np.ndarray:
    """Independent top-k: keep the k largest of each row (optionally ReLU them)."""
    idx = np.argsort(-pre, axis=-1)[..., :k]
    out = np.zeros_like(pre)
    vals = np.take_along_axis(pre, idx, axis=-1)
    np.put_along_axis(out, idx, np.maximum(vals, 0) if rectify else vals, axis=-1)
    return out


def assert_close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol)


def assert_sparse_but_active(acts) -> None:
    """The test weights must exercise the activation: some features fire, most do not."""
    a = np.asarray(acts)
    frac = float((a != 0).mean())
    assert 0.0 < frac < 0.9, f"degenerate test: {frac:.2f} of activations non-zero"
