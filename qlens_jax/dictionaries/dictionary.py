"""`Dictionary`: one sparse dictionary (SAE or transcoder) as an Equinox module.

Canonical layout (sae_lens's; the formats each converter reads are in docs/dictionaries.md):
`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_out]`, `b_dec [d_out]`. Feature `i` has key vector
`W_enc[:, i]` and value vector `W_dec[i]` (docs/definitions.md section 1).

Forward convention (sae_lens `process_sae_in` / `decode`, which every converter maps onto):

    stats = input_stats(x)                       # normalization, if any
    x_n   = normalize(x, stats) - b_dec * apply_b_dec_to_input
    pre   = x_n @ W_enc + b_enc                  (* ||W_dec_i|| if rescale_acts_by_decoder_norm)
    acts  = activation(pre)
    out_n = (acts / ||W_dec_i|| if rescaled) @ W_dec + b_dec
    out   = denormalize(out_n, stats) if denormalize_output else out_n
    reconstruct(x) = out + x @ W_skip.T          (skip transcoders; raw, un-normalized x)

The math is in float32 (parameters are upcast on the fly and keep their stored dtype).
Methods accept any leading batch shape; jit and vmap work as for any Equinox module.
"""

import dataclasses

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from . import activations as act
from .checks import check_dictionary
from .errors import DictionaryError
from .normalization import Stats, denormalize, input_stats, normalize


@dataclasses.dataclass(frozen=True)
class DictionaryInfo:
    """Where a dictionary came from; static and hashable, never used in the math."""

    format: str = ""
    source: str = ""
    architecture: str = ""
    model_name: str | None = None
    hook_name: str | None = None
    hook_name_out: str | None = None
    hf_hook_name: str | None = None
    hf_hook_name_out: str | None = None
    neuronpedia_id: str | None = None


def _f32(a: Array) -> Array:
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


class Dictionary(eqx.Module):
    """A sparse dictionary at one model layer; see the module docstring for the math.

    Construct with keyword arguments; `__check_init__` refuses inconsistent shapes/options.

    Arrays: `W_enc`, `b_enc`, `W_dec`, `b_dec` (canonical layout); `threshold` (JumpReLU);
    `b_mag`, `r_mag` (gated: `b_enc` is the gate bias); `W_skip [d_out, d_in]` (skip
    transcoders); `input_scale` (constant input scale, `input_norm="scale"`); `log_sparsity`
    (sae_lens's log10 feature density, when the file has it; not used in the math).

    Static: `layer`, `site_in`, `site_out`, `kind` ("sae" | "transcoder"), `name` (as in
    `Feature {name}/{layer}/{i}`), `activation` (`relu`, `jumprelu`, `topk`, `abstopk`,
    `groupmax`, `gated`), `k`, `rectify` (ReLU on kept values of `jumprelu`/`topk`, see
    `activations`), `apply_b_dec_to_input`, `input_norm` (see `normalization`),
    `denormalize_output` (undo per-token normalization on the output; sae_lens transcoders
    do not), `rescale_acts_by_decoder_norm` (sae_lens TopK option), `info` (provenance).
    BatchTopK dictionaries are JumpReLU at inference (that is how sae_lens and
    dictionary_learning save them).
    """

    W_enc: Float[Array, "d_in d_sae"]
    b_enc: Float[Array, " d_sae"]
    W_dec: Float[Array, "d_sae d_out"]
    b_dec: Float[Array, " d_out"]
    layer: int = eqx.field(static=True)
    site_in: str = eqx.field(static=True)
    site_out: str = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    name: str = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    threshold: Float[Array, " d_sae"] | None = None
    b_mag: Float[Array, " d_sae"] | None = None
    r_mag: Float[Array, " d_sae"] | None = None
    W_skip: Float[Array, "d_out d_in"] | None = None
    input_scale: Float[Array, ""] | None = None
    log_sparsity: Float[Array, " d_sae"] | None = None
    # MLP neurons as features (`activation="mlp"`): the gate projection of a gated MLP and the
    # MLP's activation function (`qlens_jax.models.layers.ACTIVATIONS`)
    W_gate: Float[Array, "d_in d_sae"] | None = None
    b_gate: Float[Array, " d_sae"] | None = None
    mlp_activation: str | None = eqx.field(static=True, default=None)
    k: int | None = eqx.field(static=True, default=None)
    rectify: bool = eqx.field(static=True, default=True)
    apply_b_dec_to_input: bool = eqx.field(static=True, default=False)
    input_norm: str = eqx.field(static=True, default="none")
    denormalize_output: bool = eqx.field(static=True, default=True)
    rescale_acts_by_decoder_norm: bool = eqx.field(static=True, default=False)
    info: DictionaryInfo = eqx.field(static=True, default=DictionaryInfo())

    def __check_init__(self):
        check_dictionary(self)

    # ---- sizes -------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    # ---- forward -----------------------------------------------------------------------
    def input_stats(self, x: Float[ArrayLike, "*batch d_in"]) -> Stats:
        """Per-token normalization statistics of `x` (identity ones when there is none)."""
        return input_stats(jnp.asarray(x), self.input_norm, self.input_scale)

    def _encoder_input(self, x: Float[ArrayLike, "*batch d_in"]) -> Float[Array, "*batch d_in"]:
        x = jnp.asarray(x)
        x_n = normalize(_f32(x), self.input_stats(x))
        if self.apply_b_dec_to_input:
            x_n = x_n - _f32(self.b_dec)
        return x_n

    def _decoder_norms(self) -> Float[Array, " d_sae"]:
        return jnp.linalg.norm(_f32(self.W_dec), axis=-1)

    def pre_activation(self, x: Float[ArrayLike, "*batch d_in"]) -> Float[Array, "*batch d_sae"]:
        """What the activation gates (for gated SAEs: the gate path). Differentiate this on
        the key side; the activations themselves have useless gradients."""
        pre = self._encoder_input(x) @ _f32(self.W_enc) + _f32(self.b_enc)
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self._decoder_norms()
        return pre

    def _neurons(self, x: Float[ArrayLike, "*batch d_in"]) -> Float[Array, "*batch d_sae"]:
        """An MLP's hidden layer: `act(x W_in + b_in)`, or `act(x W_gate + b_gate) * (x W_in + b_in)`."""
        from qlens_jax.models.layers import mlp_hidden

        assert self.mlp_activation is not None  # `check_dictionary`: "mlp" needs it
        x_n = self._encoder_input(x)
        up = x_n @ _f32(self.W_enc) + _f32(self.b_enc)
        gate = None
        if self.W_gate is not None:
            gate = x_n @ _f32(self.W_gate) + (0.0 if self.b_gate is None else _f32(self.b_gate))
        return mlp_hidden(self.mlp_activation, up, gate)

    def encode(self, x: Float[ArrayLike, "*batch d_in"]) -> Float[Array, "*batch d_sae"]:
        """Feature activations of input `x`."""
        if self.activation == "gated":
            x_n = self._encoder_input(x)
            gate = x_n @ _f32(self.W_enc) + _f32(self.b_enc)
            magnitude = x_n @ (_f32(self.W_enc) * jnp.exp(_f32(self.r_mag))) + _f32(self.b_mag)
            return act.gated(gate, magnitude)
        if self.activation == "mlp":
            return self._neurons(x)
        pre = self.pre_activation(x)
        if self.activation == "relu":
            return act.relu(pre)
        if self.activation == "jumprelu":
            return act.jumprelu(pre, _f32(self.threshold), self.rectify)
        if self.activation == "topk":
            return act.topk(pre, self.k, self.rectify)
        if self.activation == "abstopk":
            return act.abstopk(pre, self.k)
        return act.groupmax(pre, self.k)

    def decode(
        self, acts: Float[ArrayLike, "*batch d_sae"], x: Float[ArrayLike, "*batch d_in"] | None = None
    ) -> Float[Array, "*batch d_out"]:
        """Dictionary output from activations (no skip term; see `reconstruct`).

        `x`, the input the activations came from, is needed only when the dictionary undoes a
        per-token input normalization (`layer_norm`, `constant_norm_rescale`) on its output.
        """
        a = _f32(jnp.asarray(acts))
        if self.rescale_acts_by_decoder_norm:
            a = a / self._decoder_norms()
        out = a @ _f32(self.W_dec) + _f32(self.b_dec)
        # A constant scale is always undone (so folding it is exact for every kind); per-token
        # normalizations only when `denormalize_output` (sae_lens transcoders do not undo them).
        if self.input_norm == "scale" or (self.denormalize_output and self.input_norm != "none"):
            if x is None:
                if self.input_norm != "scale":
                    raise DictionaryError(
                        f"dictionary {self.name!r} normalizes its input per token "
                        f"({self.input_norm}); pass the input x to decode(acts, x) to undo it"
                    )
                x = jnp.zeros(out.shape[:-1] + (self.d_in,), jnp.float32)  # stats ignore x
            out = denormalize(out, self.input_stats(x))
        return out

    def skip(self, x: Float[ArrayLike, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        """The skip connection `x @ W_skip.T` (zero when there is none)."""
        x = jnp.asarray(x)
        if self.W_skip is None:
            return jnp.zeros(x.shape[:-1] + (self.d_out,), jnp.float32)
        return _f32(x) @ _f32(self.W_skip).T

    def reconstruct(self, x: Float[ArrayLike, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        """Full forward pass: `decode(encode(x), x) + skip(x)`."""
        out = self.decode(self.encode(x), x)
        return out + self.skip(x) if self.W_skip is not None else out

    def __call__(self, x: Float[ArrayLike, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        """Same as `reconstruct`."""
        return self.reconstruct(x)

    # ---- the vectors Query Lens reads --------------------------------------------------
    def key_vectors(self) -> Float[Array, "d_sae d_in"]:
        """Feature key vectors: row `i` is encoder column `W_enc[:, i]`."""
        return self.W_enc.T

    def value_vectors(self) -> Float[Array, "d_sae d_out"]:
        """Feature value vectors: row `i` is decoder row `W_dec[i]`."""
        return self.W_dec

    def feature_str(self, feature: int) -> str:
        """The reference implementation's feature id: `Feature {name}/{layer}/{feature}`."""
        return f"Feature {self.name}/{self.layer}/{feature}"
