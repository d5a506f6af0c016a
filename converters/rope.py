"""RoPE inverse frequencies for the `rope_type`s that Llama, Qwen and Gemma-3 configs use.

Mirrors `transformers.modeling_rope_utils` (default, linear, llama3, yarn) in numpy so that
converting a model needs no PyTorch. Returns per-layer-type `(inv_freq, attention_scale)`.
"""

from __future__ import annotations

import math

import numpy as np

from converters.errors import UnsupportedOptionError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _base_inv_freq(theta: float, dim: int) -> np.ndarray:
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)


def rope_frequencies(params: dict, head_dim: int, max_positions: int) -> tuple[np.ndarray, float]:
    """`(inv_freq [head_dim // 2], attention_scale)` for one rope parameter dict."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedOptionError(
            f"rope_type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedOptionError(
            f"partial_rotary_factor={params['partial_rotary_factor']} is not supported (only 1.0)"
        )
    theta = params["rope_theta"]
    inv_freq = _base_inv_freq(theta, head_dim)
    if rope_type == "default":
        return inv_freq, 1.0
    factor = params["factor"]
    if rope_type == "linear":
        return (inv_freq / np.float32(factor)).astype(np.float32), 1.0
    if rope_type == "llama3":
        old_len = params["original_max_position_embeddings"]
        low, high = params["low_freq_factor"], params["high_freq_factor"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    # yarn
    original = params["original_max_position_embeddings"]
    if factor is None:
        factor = max_positions / original
    attention = params.get("attention_factor")
    mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")

    def get_mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention is None:
        if mscale and mscale_all:
            attention = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all))
        else:
            attention = get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1
    dim = head_dim

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - lo) / (hi - lo), 0, 1)
    extrapolation = 1 - ramp
    pos_freqs = np.float32(theta) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))
    inv_extra, inv_inter = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    inv = inv_inter * (1 - extrapolation) + inv_extra * extrapolation
    return inv.astype(np.float32), float(attention)
