"""`ModelConfig`: everything the transformer family needs to know, and nothing it guesses.

One frozen dataclass covers GPT-2, Llama, Mistral, Qwen-2/3, Qwen3-MoE, Gemma-1/2/3, GPT-NeoX and gpt-oss: the
differences between them are options here (norm kind, gated MLP, positions, post-norms, routed experts,
parallel blocks, partial rotary, attention sinks, ...). Fields added later have defaults, so saved configs of older versions load. Per-layer
attention metadata (RoPE frequencies, sliding windows, scales) is stored resolved, so the
model never re-derives it and `lax.scan` can carry it as arrays.
Each family's file in `converters/families` builds it from a Hugging Face `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from qlens_jax.errors import InputError


class ModelConfigError(InputError):
    """A model configuration that describes no model this package can build; the message names the field."""


NORMS = ("layernorm", "rmsnorm")
POSITIONALS = ("learned", "rope")
# How a routed-experts MLP turns router logits into expert weights (`models.experts.routing_weights`):
# softmax over every expert then the top k (Qwen3-MoE), or the top k logits then a softmax over them (gpt-oss).
ROUTERS = ("softmax_topk", "topk_softmax")


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
    # Routed experts (Qwen3-MoE): every block's MLP is `n_experts` gated MLPs of width `d_mlp`,
    # `experts_per_token` of them chosen per position by `router`; 0 experts: a dense MLP.
    n_experts: int = 0
    experts_per_token: int = 0
    router: str | None = None
    router_renorm: bool = False  # rescale the chosen experts' weights to sum to 1 (`norm_topk_prob`)
    router_bias: bool = False  # the router's logits have a bias (gpt-oss); experts' biases are `mlp_bias`
    # gpt-oss's clamped SwiGLU in the experts: `(clip(up, +-limit) + 1) * g sigmoid(alpha g)`,
    # `g = min(gate, limit)`; None: the plain gated `activation`.
    swiglu_alpha: float | None = None
    swiglu_limit: float | None = None
    attn_sinks: bool = False  # gpt-oss: a learned logit per head joins every attention softmax
    # Layers whose MLP is a dense gated MLP of width `d_mlp_dense` beside the routed layers
    # (Qwen3-MoE's `mlp_only_layers` / `decoder_sparse_step`); empty: every layer routed.
    dense_mlp_layers: tuple[int, ...] = ()
    d_mlp_dense: int = 0
    # GPT-NeoX: attention and MLP both read `resid_pre` and both outputs are added to it
    # (no `resid_mid`); False: the sequential block.
    parallel_residual: bool = False
    # Leading dimensions of each head that RoPE rotates (GPT-NeoX's `rotary_pct`); None: all.
    rotary_dim: int | None = None
    # Qwen3.5: a sigmoid gate on every head's output, computed by `q_proj` beside the query
    # (transformers' `attn_output_gate`), applied before the output projection.
    attn_output_gate: bool = False
    # Qwen3.5 hybrid layers: per layer, whether its position mixer is Gated DeltaNet linear
    # attention (`models.linear_attention`) instead of softmax attention; () or all False:
    # none. Its heads: `linear_key_heads` query/key heads of `linear_key_dim`, `linear_value_heads`
    # value heads of `linear_value_dim` (`linear_value_heads * linear_value_dim` must equal
    # `n_heads * head_dim`: both kinds share the output projection's shape), and a causal
    # depthwise convolution of `linear_conv_kernel` taps.
    linear_layers: tuple[bool, ...] = field(default=(), repr=False)
    linear_key_heads: int = 0
    linear_value_heads: int = 0
    linear_key_dim: int = 0
    linear_value_dim: int = 0
    linear_conv_kernel: int = 0
    # Qwen3.5-MoE: a shared expert (a gated MLP of this width, scaled by a sigmoid gate) added to
    # the routed sum in every layer; 0: none.
    shared_expert_d_mlp: int = 0
    # Per layer, resolved: attention scale, sliding window (0 = global), RoPE inverse
    # frequencies and the RoPE output scaling (YaRN's attention factor; 1 otherwise).
    attn_scales: tuple[float, ...] = field(default=(), repr=False)
    sliding_windows: tuple[int, ...] = field(default=(), repr=False)
    rope_inv_freq: tuple[tuple[float, ...], ...] = field(default=(), repr=False)
    rope_scales: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ModelConfigError(f"ModelConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.positional not in POSITIONALS:
            raise ModelConfigError(f"ModelConfig.positional must be one of {POSITIONALS}, got {self.positional!r}")
        if self.n_experts:
            if self.router not in ROUTERS:
                raise ModelConfigError(f"ModelConfig.router must be one of {ROUTERS} with experts, got {self.router!r}")
            if not 0 < self.experts_per_token <= self.n_experts:
                raise ModelConfigError(
                    f"ModelConfig.experts_per_token={self.experts_per_token} must be in 1..n_experts={self.n_experts}"
                )
        if (self.swiglu_alpha is None) != (self.swiglu_limit is None):
            raise ModelConfigError("ModelConfig.swiglu_alpha and swiglu_limit are set together")
        if self.swiglu_limit is not None and not self.n_experts:
            raise ModelConfigError(
                "ModelConfig.swiglu_limit (the clamped SwiGLU) is implemented for routed experts only"
            )
        if self.dense_mlp_layers:
            if not self.n_experts or self.d_mlp_dense <= 0:
                raise ModelConfigError("ModelConfig.dense_mlp_layers needs routed experts and d_mlp_dense > 0")
            if list(self.dense_mlp_layers) != sorted(set(self.dense_mlp_layers)) or not (
                0 <= self.dense_mlp_layers[0] and self.dense_mlp_layers[-1] < self.n_layers
            ):
                raise ModelConfigError(
                    f"ModelConfig.dense_mlp_layers={self.dense_mlp_layers} must be increasing layers of "
                    f"0..{self.n_layers - 1}"
                )
        if self.n_heads % self.n_kv_heads:
            raise ModelConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        for name in ("attn_scales", "sliding_windows", "rope_scales"):
            if len(getattr(self, name)) != self.n_layers:
                raise ModelConfigError(f"ModelConfig.{name} needs one entry per layer ({self.n_layers})")
        if self.has_linear_attention:
            self._check_linear_attention()
        if self.shared_expert_d_mlp and not self.n_experts:
            raise ModelConfigError("ModelConfig.shared_expert_d_mlp needs routed experts (n_experts > 0)")
        if self.rotary_dim is not None and not (0 < self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0):
            raise ModelConfigError(
                f"ModelConfig.rotary_dim must be even and in 2 .. head_dim={self.head_dim}, got {self.rotary_dim}"
            )
        if self.positional == "rope":
            if len(self.rope_inv_freq) != self.n_layers:
                raise ModelConfigError(f"ModelConfig.rope_inv_freq needs one entry per layer ({self.n_layers})")
            if any(len(f) != self.rope_dim for f in self.rope_inv_freq):
                raise ModelConfigError("ModelConfig.rope_inv_freq entries must have rotary_dim // 2 values")

    @property
    def has_linear_attention(self) -> bool:
        """Whether some layer mixes positions by Gated DeltaNet linear attention."""
        return any(self.linear_layers)

    def _check_linear_attention(self) -> None:
        if len(self.linear_layers) != self.n_layers:
            raise ModelConfigError(f"ModelConfig.linear_layers needs one entry per layer ({self.n_layers})")
        dims = ("linear_key_heads", "linear_value_heads", "linear_key_dim", "linear_value_dim", "linear_conv_kernel")
        if min(getattr(self, name) for name in dims) <= 0:
            raise ModelConfigError(f"ModelConfig with linear attention needs positive {', '.join(dims)}")
        if self.linear_value_heads % self.linear_key_heads:
            raise ModelConfigError(
                f"linear_value_heads={self.linear_value_heads} is not a multiple of linear_key_heads={self.linear_key_heads}"
            )
        if self.linear_value_heads * self.linear_value_dim != self.n_heads * self.head_dim:
            raise ModelConfigError(
                f"linear attention's value width {self.linear_value_heads} x {self.linear_value_dim} must equal "
                f"the attention heads' {self.n_heads} x {self.head_dim} (both feed one stacked output projection)"
            )

    @property
    def rope_dim(self) -> int:
        """RoPE frequencies per head: half the rotated dimensions (0 without RoPE)."""
        if self.positional != "rope":
            return 0
        return (self.head_dim if self.rotary_dim is None else self.rotary_dim) // 2

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        raw = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ModelConfigError(f"unknown ModelConfig fields in saved config: {sorted(unknown)}")
        for name in ("attn_scales", "sliding_windows", "rope_scales"):
            raw[name] = tuple(raw[name])
        raw["rope_inv_freq"] = tuple(tuple(f) for f in raw["rope_inv_freq"])
        if "dense_mlp_layers" in raw:
            raw["dense_mlp_layers"] = tuple(raw["dense_mlp_layers"])
        if "linear_layers" in raw:
            raw["linear_layers"] = tuple(raw["linear_layers"])
        return cls(**raw)
