"""The transformer family as Equinox modules: parameters here, math in `layers.py`.

Blocks are stored stacked (leading `layers` axis) and the forward pass `lax.scan`s over
them with per-layer metadata (`LayerMeta`), so compile time does not grow with depth.
The two residual modules of a block are plain functions of the residual
(`attention_residual`, `mlp_residual`): `R(h) = post_norm(module(pre_norm(h)))`, which is
what the lens kernel linearizes, one module at a time or a whole stack at once.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from qlens_jax.models import layers
from qlens_jax.models.config import ModelConfig
from qlens_jax.models.linear import Linear
from qlens_jax.models.linear_attention import GatedDeltaNet
from qlens_jax.models.mixer import PositionMixer
from qlens_jax.models.mlp import MLP, MixedMLP, ResidualMLP, RoutedMLP


class Norm(eqx.Module):
    """LayerNorm or RMSNorm (with Gemma's `1 + w` offset when `offset == 1`)."""

    weight: Float[Array, "*layers d"]
    bias: Float[Array, "*layers d"] | None
    kind: str = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    offset: float = eqx.field(static=True, default=0.0)

    def __call__(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        if self.kind == "layernorm":
            return layers.layer_norm(x, self.weight, self.bias, self.eps)
        return layers.rms_norm(x, self.weight, self.eps, self.offset)


class Attention(PositionMixer):
    """Softmax attention (grouped-query, RoPE, q/k norms, soft-cap, output gate as configured)."""

    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    o_proj: Linear
    q_norm: Norm | None
    k_norm: Norm | None
    gate_proj: Linear | None  # Qwen3.5's output gate: `z = attention * sigmoid(gate_proj(x))`
    n_heads: int = eqx.field(static=True)
    n_kv_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)
    softcap: float | None = eqx.field(static=True, default=None)
    sinks: Float[Array, "*layers heads"] | None = None  # gpt-oss's per-head sink logits

    def heads(
        self,
        x: Float[Array, "seq d_model"],
        allowed: Bool[Array, "seq seq"],
        rope: tuple[Float[Array, "seq hd"], Float[Array, "seq hd"]] | None,
        scale: Float[Array, ""],
    ) -> Float[Array, "seq q_dim"]:
        """Every head's output, heads concatenated (TransformerLens `hook_z` flattened): the
        input of the output projection."""
        seq = x.shape[0]
        q = self.q_proj(x).reshape(seq, self.n_heads, self.head_dim)
        k = self.k_proj(x).reshape(seq, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(seq, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            assert self.k_norm is not None  # qk-norm comes as a pair (`from_hf_config`)
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = layers.apply_rope(q, *rope), layers.apply_rope(k, *rope)
        out = layers.dot_product_attention(q, k, v, allowed, scale, self.softcap, self.sinks)
        out = out.reshape(seq, self.n_heads * self.head_dim)
        if self.gate_proj is not None:
            out = out * jax.nn.sigmoid(self.gate_proj(x))
        return out

    def __call__(
        self,
        x: Float[Array, "seq d_model"],
        allowed: Bool[Array, "seq seq"],
        rope: tuple[Float[Array, "seq hd"], Float[Array, "seq hd"]] | None,
        scale: Float[Array, ""],
    ) -> Float[Array, "seq d_model"]:
        return self.o_proj(self.heads(x, allowed, rope, scale))

    def mix(
        self, x: Float[Array, "seq d_model"], mask: Bool[Array, " seq"], meta: LayerMeta
    ) -> Float[Array, "seq q_dim"]:
        """`heads` with the layer's rotary tables, window and scale (`PositionMixer.mix`)."""
        rope = None
        if meta.rope_inv_freq.shape[-1] > 0:
            rope = layers.rope_cos_sin(jnp.arange(x.shape[0]), meta.rope_inv_freq, meta.rope_scale)
        return self.heads(x, layers.attention_mask(mask, meta.window), rope, meta.attn_scale)

    @staticmethod
    def linearization_floats(config: ModelConfig, seq_len: int) -> int:
        """Attention probabilities and their softmax residuals, and the heads' q, k, v, z."""
        return 3 * config.n_heads * seq_len + 4 * config.n_heads * config.head_dim


class Block(eqx.Module):
    """One block's modules. `parallel` (GPT-NeoX's `use_parallel_residual`): attention and MLP
    both read the block input and both outputs are added to it."""

    attn_norm: Norm
    attn: Attention
    attn_post_norm: Norm | None
    mlp_norm: Norm
    mlp: ResidualMLP
    mlp_post_norm: Norm | None
    # Qwen3.5's hybrid layers: the Gated DeltaNet of the layers `LayerMeta.linear` marks (their
    # `attn` weights, unused, are zero; the output projection `attn.o_proj` serves both kinds).
    linear_attn: GatedDeltaNet | None = None
    parallel: bool = eqx.field(static=True, default=False)


class LayerMeta(eqx.Module):
    """Per-layer attention metadata, stacked like the blocks (not parameters)."""

    attn_scale: Float[Array, " layers"]
    window: Int[Array, " layers"]
    rope_inv_freq: Float[Array, "layers half"]
    rope_scale: Float[Array, " layers"]
    linear: Bool[Array, " layers"]  # Gated DeltaNet (`Block.linear_attn`) instead of softmax attention


class Residuals(NamedTuple):
    """Points of every block: the residual stream, the MLP's normalized input and both
    modules' outputs, each `[layers, batch, seq, d_model]`; `z`, every head's output before
    the output projection, `[layers, batch, seq, n_heads, head_dim]`. A parallel block has no
    residual between its modules: its `resid_mid` is the MLP's input, `resid_pre` itself
    (TransformerLens's `hook_mlp_in` there)."""

    resid_pre: Array
    resid_mid: Array
    resid_post: Array
    attn_out: Array
    mlp_in: Array
    mlp_out: Array
    z: Array


def attention_z(
    block: Block, meta: LayerMeta, h: Float[Array, "seq d_model"], mask: Bool[Array, " seq"]
) -> Float[Array, "seq q_dim"]:
    """`z`: every head's output at residual `h`, heads concatenated, before the output
    projection (TransformerLens `attn.hook_z` flattened; transformers' `o_proj` input). On a
    Gated DeltaNet layer of a hybrid model, its gated, normalized value heads (`out_proj`'s input)."""
    x = block.attn_norm(h)
    if block.linear_attn is None:
        return block.attn.mix(x, mask, meta)
    linear_attn = block.linear_attn
    # Closures, not bound methods: `cond` hashes its branches, and a module of tracers cannot be.
    return jax.lax.cond(meta.linear, lambda: linear_attn.mix(x, mask, meta), lambda: block.attn.mix(x, mask, meta))


def attention_output(block: Block, z: Float[Array, "*seq q_dim"]) -> Float[Array, "*seq d_model"]:
    """What the attention module adds to the residual given its heads' outputs `z`:
    `post_norm(o_proj(z))` (per position)."""
    out = block.attn.o_proj(z)
    return out if block.attn_post_norm is None else block.attn_post_norm(out)


def attention_residual(
    block: Block, meta: LayerMeta, h: Float[Array, "seq d_model"], mask: Bool[Array, " seq"]
) -> Float[Array, "seq d_model"]:
    """The attention module's contribution to the residual: `post_norm(attn(pre_norm(h)))`."""
    return attention_output(block, attention_z(block, meta, h, mask))


def mlp_input(block: Block, h: Float[Array, "*seq d_model"]) -> Float[Array, "*seq d_model"]:
    """The MLP's normalized input (`ln_2` output): where transcoders read."""
    return block.mlp_norm(h)


def mlp_residual(block: Block, h: Float[Array, "*seq d_model"]) -> Float[Array, "*seq d_model"]:
    """The MLP module's contribution to the residual: `post_norm(mlp(pre_norm(h)))`."""
    out = block.mlp(block.mlp_norm(h))
    return out if block.mlp_post_norm is None else block.mlp_post_norm(out)


def mlp_block_input(
    h: Float[Array, "*seq d_model"], attn_out: Float[Array, "*seq d_model"], parallel: bool
) -> Float[Array, "*seq d_model"]:
    """What the MLP of a block reads (before its norm) given the block input `h` and the
    attention output: `resid_mid = h + attn_out`, or `h` itself in a parallel block."""
    return h if parallel else h + attn_out


def block_output(
    mid: Float[Array, "*seq d_model"],
    attn_out: Float[Array, "*seq d_model"],
    mlp_out: Float[Array, "*seq d_model"],
    parallel: bool,
) -> Float[Array, "*seq d_model"]:
    """`resid_post` from the MLP's input `mid` (`mlp_block_input`) and both module outputs:
    `mid + mlp_out`, or `mid + attn_out + mlp_out` in a parallel block (where `mid` is the
    block input)."""
    return mid + attn_out + mlp_out if parallel else mid + mlp_out


def block_forward(
    block: Block, meta: LayerMeta, h: Float[Array, "seq d_model"], mask: Bool[Array, " seq"]
) -> tuple[Float[Array, "seq d_model"], Residuals]:
    """One block; returns `resid_post` and this block's points (without the layer axis)."""
    z = attention_z(block, meta, h, mask)
    attn_out = attention_output(block, z)
    mid = mlp_block_input(h, attn_out, block.parallel)
    mlp_in = mlp_input(block, mid)
    mlp_out = mlp_residual(block, mid)
    post = block_output(mid, attn_out, mlp_out, block.parallel)
    heads = z.reshape(*z.shape[:-1], block.attn.n_heads, block.attn.head_dim)
    return post, Residuals(h, mid, post, attn_out, mlp_in, mlp_out, heads)


class Transformer(eqx.Module):
    """A decoder-only language model of the GPT-2 / Llama / Qwen / Gemma / GPT-NeoX / gpt-oss family."""

    embed_tokens: Float[Array, "vocab d_model"]
    embed_positions: Float[Array, "positions d_model"] | None
    blocks: Block
    meta: LayerMeta
    final_norm: Norm
    lm_head: Float[Array, "vocab d_model"] | None
    config: ModelConfig = eqx.field(static=True)

    # ---- pieces the kernel uses -------------------------------------------------------
    @property
    def W_E(self) -> Float[Array, "vocab d_model"]:
        return self.embed_tokens

    @property
    def W_U(self) -> Float[Array, "d_model vocab"]:
        return (self.embed_tokens if self.lm_head is None else self.lm_head).T

    def block(self, index: int | Int[Array, ""]) -> tuple[Block, LayerMeta]:
        """Block `index` and its metadata, sliced out of the stack."""
        take = lambda x: x[index]
        return jax.tree.map(take, self.blocks), jax.tree.map(take, self.meta)

    def embed(self, tokens: Int[Array, " seq"]) -> Float[Array, "seq d_model"]:
        """`resid_pre[0]`: token embedding (x scale) plus learned positions where present."""
        h = self.embed_tokens[tokens]
        if self.config.embed_scale != 1.0:
            h = h * jnp.asarray(self.config.embed_scale, jnp.float32).astype(h.dtype)
        if self.embed_positions is not None:
            h = h + self.embed_positions[jnp.arange(tokens.shape[0])]
        return h

    def final_norm_fn(self, x: Float[Array, "*batch d_model"]) -> Float[Array, "*batch d_model"]:
        return self.final_norm(x)

    def unembed(self, x: Float[Array, "*batch d_model"]) -> Float[Array, "*batch vocab"]:
        """Logits from final-residual vectors: final norm, unembedding, soft-capping."""
        logits = jnp.matmul(self.final_norm(x), self.W_U, preferred_element_type=jnp.float32)
        return layers.softcap(logits, self.config.final_logit_softcap)

    # ---- forward passes -----------------------------------------------------------------
    def forward_one(
        self, tokens: Int[Array, " seq"], mask: Bool[Array, " seq"]
    ) -> tuple[Float[Array, "seq vocab"], Residuals]:
        """One sequence: logits and every block's residual points `[layers, seq, d_model]`."""

        def step(h, block_and_meta):
            block, meta = block_and_meta
            return block_forward(block, meta, h, mask)

        final, points = jax.lax.scan(step, self.embed(tokens), (self.blocks, self.meta))
        return self.unembed(final), points

    def __call__(
        self, tokens: Int[Array, "batch seq"], mask: Bool[Array, "batch seq"] | None = None
    ) -> Float[Array, "batch seq vocab"]:
        return self.run_with_residuals(tokens, mask)[0]

    def run_with_residuals(
        self, tokens: Int[Array, "batch seq"], mask: Bool[Array, "batch seq"] | None = None
    ) -> tuple[Float[Array, "batch seq vocab"], Residuals]:
        """Logits and every block's points (`Residuals`): residual arrays `[layers, batch, seq,
        d_model]`, `z` `[layers, batch, seq, n_heads, head_dim]`."""
        if mask is None:
            mask = jnp.ones(tokens.shape, bool)
        logits, points = jax.vmap(self.forward_one)(tokens, mask)
        points = Residuals(*(jnp.swapaxes(p, 0, 1) for p in points))
        return logits, points


# ---- construction ---------------------------------------------------------------------------
def layer_meta(config: ModelConfig, dtype=jnp.float32) -> LayerMeta:
    """The per-layer metadata arrays of `config`."""
    half = config.rope_dim
    inv_freq = np.asarray(config.rope_inv_freq, np.float32).reshape(config.n_layers, half)
    return LayerMeta(
        attn_scale=jnp.asarray(config.attn_scales, jnp.float32),
        window=jnp.asarray(config.sliding_windows, jnp.int32),
        rope_inv_freq=jnp.asarray(inv_freq),
        rope_scale=jnp.asarray(config.rope_scales, jnp.float32),
        linear=jnp.asarray(config.linear_layers or (False,) * config.n_layers, bool),
    )


def routed_mlp(config: ModelConfig, keys, dtype=jnp.float32) -> RoutedMLP:
    """Random routed experts (normal, std 0.02; the router std 1, so that routing gaps are not
    tiny), stacked over layers; `keys` an iterator of PRNG keys."""
    c = config
    assert c.router is not None  # ModelConfig checks that a model with experts names its router
    normal = lambda std, *dims: std * jax.random.normal(next(keys), (c.n_layers, *dims), dtype)
    bias = lambda on, *dims: normal(0.02, *dims) if on else None
    return RoutedMLP(
        router=normal(1.0, c.d_model, c.n_experts),
        gate_proj=normal(0.02, c.n_experts, c.d_model, c.d_mlp),
        up_proj=normal(0.02, c.n_experts, c.d_model, c.d_mlp),
        down_proj=normal(0.02, c.n_experts, c.d_mlp, c.d_model),
        activation=c.activation,
        experts_per_token=c.experts_per_token,
        router_kind=c.router,
        renormalize=c.router_renorm,
        router_bias=bias(c.router_bias, c.n_experts),
        gate_bias=bias(c.mlp_bias, c.n_experts, c.d_mlp),
        up_bias=bias(c.mlp_bias, c.n_experts, c.d_mlp),
        down_bias=bias(c.mlp_bias, c.n_experts, c.d_model),
        swiglu=None if c.swiglu_alpha is None or c.swiglu_limit is None else (c.swiglu_alpha, c.swiglu_limit),
        shared=shared_expert(c, keys, dtype) if c.shared_expert_d_mlp else None,
        shared_gate=normal(1.0, c.d_model, 1) if c.shared_expert_d_mlp else None,
    )


def shared_expert(config: ModelConfig, keys, dtype=jnp.float32) -> MLP:
    """Random weights of a shared expert (a gated MLP `shared_expert_d_mlp` wide), stacked over layers."""
    c, f = config, config.shared_expert_d_mlp
    dense = lambda d_in, d_out: Linear(0.02 * jax.random.normal(next(keys), (c.n_layers, d_in, d_out), dtype), None)
    return MLP(
        up_proj=dense(c.d_model, f),
        down_proj=dense(f, c.d_model),
        gate_proj=dense(c.d_model, f),
        activation=c.activation,
    )


def gated_delta_net(config: ModelConfig, keys, dtype=jnp.float32) -> GatedDeltaNet:
    """Random Gated DeltaNet weights stacked over layers (normal, std 0.02; the decay's `A_log`
    and `dt_bias` as transformers initializes them, the gated norm at identity)."""
    c, L = config, config.n_layers
    key_width, value_width = c.linear_key_heads * c.linear_key_dim, c.linear_value_heads * c.linear_value_dim
    dense = lambda d_out: Linear(0.02 * jax.random.normal(next(keys), (L, c.d_model, d_out), dtype), None)
    channels = 2 * key_width + value_width
    return GatedDeltaNet(
        in_qkv=dense(channels),
        in_z=dense(value_width),
        in_b=dense(c.linear_value_heads),
        in_a=dense(c.linear_value_heads),
        conv=0.2 * jax.random.normal(next(keys), (L, channels, c.linear_conv_kernel), dtype),
        dt_bias=jnp.ones((L, c.linear_value_heads), dtype),
        A_log=jnp.log(jax.random.uniform(next(keys), (L, c.linear_value_heads), dtype, 0.01, 16.0)),
        norm=jnp.ones((L, c.linear_value_dim), dtype),
        key_heads=c.linear_key_heads,
        value_heads=c.linear_value_heads,
        key_dim=c.linear_key_dim,
        value_dim=c.linear_value_dim,
        eps=c.norm_eps,
        activation=c.activation,
    )


def init_transformer(config: ModelConfig, key: PRNGKeyArray, dtype=jnp.float32) -> Transformer:
    """Random weights (normal, std 0.02; norms at identity). Also gives converters their skeleton."""
    c = config
    keys = iter(jax.random.split(key, 32))
    L = c.n_layers

    def dense(d_in, d_out, bias):
        w = 0.02 * jax.random.normal(next(keys), (L, d_in, d_out), dtype)
        return Linear(w, jnp.zeros((L, d_out), dtype) if bias else None)

    def norm(d, stacked=True):
        shape = (L, d) if stacked else (d,)
        weight = jnp.full(shape, 1.0 - c.norm_offset, dtype)
        bias = jnp.zeros(shape, dtype) if c.norm == "layernorm" else None
        return Norm(weight, bias, c.norm, c.norm_eps, c.norm_offset)

    q_dim, kv_dim = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    attn = Attention(
        q_proj=dense(c.d_model, q_dim, c.qkv_bias),
        k_proj=dense(c.d_model, kv_dim, c.qkv_bias),
        v_proj=dense(c.d_model, kv_dim, c.qkv_bias),
        o_proj=dense(q_dim, c.d_model, c.o_bias),
        q_norm=norm(c.head_dim) if c.qk_norm else None,
        k_norm=norm(c.head_dim) if c.qk_norm else None,
        gate_proj=dense(c.d_model, q_dim, c.qkv_bias) if c.attn_output_gate else None,
        n_heads=c.n_heads,
        n_kv_heads=c.n_kv_heads,
        head_dim=c.head_dim,
        softcap=c.attn_logit_softcap,
        sinks=0.02 * jax.random.normal(next(keys), (L, c.n_heads), dtype) if c.attn_sinks else None,
    )

    def dense_mlp(width: int) -> MLP:
        return MLP(
            up_proj=dense(c.d_model, width, c.mlp_bias),
            down_proj=dense(width, c.d_model, c.mlp_bias),
            gate_proj=dense(c.d_model, width, c.mlp_bias) if c.gated_mlp else None,
            activation=c.activation,
        )

    if c.dense_mlp_layers:
        mlp = MixedMLP(routed=routed_mlp(c, keys, dtype), dense=dense_mlp(c.d_mlp_dense))
    else:
        mlp = routed_mlp(c, keys, dtype) if c.n_experts else dense_mlp(c.d_mlp)
    blocks = Block(
        attn_norm=norm(c.d_model),
        attn=attn,
        attn_post_norm=norm(c.d_model) if c.post_norms else None,
        mlp_norm=norm(c.d_model),
        mlp=mlp,
        mlp_post_norm=norm(c.d_model) if c.post_norms else None,
        linear_attn=gated_delta_net(c, keys, dtype) if c.has_linear_attention else None,
        parallel=c.parallel_residual,
    )
    embed = 0.02 * jax.random.normal(next(keys), (c.vocab_size, c.d_model), dtype)
    positions = None
    if c.positional == "learned":
        positions = 0.01 * jax.random.normal(next(keys), (c.max_positions, c.d_model), dtype)
    lm_head = None
    if not c.tie_word_embeddings:
        lm_head = 0.02 * jax.random.normal(next(keys), (c.vocab_size, c.d_model), dtype)
    return Transformer(
        embed_tokens=embed,
        embed_positions=positions,
        blocks=blocks,
        meta=layer_meta(c),
        final_norm=norm(c.d_model, stacked=False),
        lm_head=lm_head,
        config=c,
    )


def mixer_floats(config: ModelConfig, seq_len: int) -> int:
    """`PositionMixer.linearization_floats` of `config`'s mixers, the larger where layers differ."""
    floats = Attention.linearization_floats(config, seq_len)
    if config.has_linear_attention:
        floats = max(floats, GatedDeltaNet.linearization_floats(config, seq_len))
    return floats
