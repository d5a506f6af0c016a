"""`ModelConfig`: everything the transformer family needs to know, and nothing it guesses.

One frozen dataclass covers GPT-2, Llama, Mistral, Qwen-2/3 and Gemma-1/2/3: the differences between
them are options here (norm kind, gated MLP, positions, post-norms, ...). Per-layer
attention metadata (RoPE frequencies, sliding windows, scales) is stored resolved, so the
model never re-derives it and `lax.scan` can carry it as arrays.
Each family's file in `converters/families` builds it from a Hugging Face `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

NORMS = ("layernorm", "rmsnorm")
POSITIONALS = ("learned", "rope")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    norm: str
    norm_eps: float
    activation: str
    gated_mlp: bool
    positional: str
    max_positions: int
    tie_word_embeddings: bool
    norm_offset: float = 0.0  # 1.0 for Gemma's (1 + w) RMSNorm
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    post_norms: bool = False  # Gemma-2/3: norms after attention and MLP, before the residual add
    embed_scale: float = 1.0  # Gemma: sqrt(d_model)
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    # Per layer, resolved: attention scale, sliding window (0 = global), RoPE inverse
    # frequencies and the RoPE output scaling (YaRN's attention factor; 1 otherwise).
    attn_scales: tuple[float, ...] = field(default=(), repr=False)
    sliding_windows: tuple[int, ...] = field(default=(), repr=False)
    rope_inv_freq: tuple[tuple[float, ...], ...] = field(default=(), repr=False)
    rope_scales: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"ModelConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.positional not in POSITIONALS:
            raise ValueError(f"ModelConfig.positional must be one of {POSITIONALS}, got {self.positional!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        for name in ("attn_scales", "sliding_windows", "rope_scales"):
            if len(getattr(self, name)) != self.n_layers:
                raise ValueError(f"ModelConfig.{name} needs one entry per layer ({self.n_layers})")
        if self.positional == "rope":
            if len(self.rope_inv_freq) != self.n_layers:
                raise ValueError(f"ModelConfig.rope_inv_freq needs one entry per layer ({self.n_layers})")
            if any(len(f) != self.head_dim // 2 for f in self.rope_inv_freq):
                raise ValueError("ModelConfig.rope_inv_freq entries must have head_dim // 2 values")

    @property
    def rope_dim(self) -> int:
        return self.head_dim // 2 if self.positional == "rope" else 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        raw = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig fields in saved config: {sorted(unknown)}")
        for name in ("attn_scales", "sliding_windows", "rope_scales"):
            raw[name] = tuple(raw[name])
        raw["rope_inv_freq"] = tuple(tuple(f) for f in raw["rope_inv_freq"])
        return cls(**raw)
