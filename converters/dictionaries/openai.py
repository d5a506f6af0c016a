"""OpenAI's original GPT-2 small TopK SAEs (`openai/sparse_autoencoder`), a torch state dict.

Keys (their `Autoencoder.state_dict`): `pre_bias [d]`, `encoder.weight [n_latents, d]`,
`latent_bias [n_latents]`, `decoder.weight [d, n_latents]`, training statistics
(`stats_last_nonzero`, `latents_activation_frequency`, `latents_mean_square`), and non-tensor
`activation` ("TopK" | "ReLU" | "Identity") with `activation_state_dict` (`k`, `postact_fn`).
Their `from_state_dict` turns input normalization on exactly when the activation is TopK:
`LN(x) = (x - mean) / (std + 1e-5)`, `latents = act(W_e (LN(x) - pre_bias) + latent_bias)`,
`recons = (W_d latents + pre_bias) * std + mean`.

Placement from the published path `{location}_v5_{32k|128k}/autoencoders/{layer}.pt`:
`resid_post_mlp` is `resid_post`, `resid_post_attn` is `resid_mid`, `resid_delta_attn` is
`attn_out` and `resid_delta_mlp` is `mlp_out` (GPT-2 adds each module's output straight to the
residual). Elsewhere pass `layer=` and `site=`.
(The sae_lens republication of these SAEs is a sae_lens folder; see `saelens`.)
"""

import os
import re
from pathlib import Path

from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionaryInfo

from .assemble import COMMON_OPTIONS, Claim, Options, build, check_width_label, expect_shape, resolve
from .readers import TensorStore, read_torch
from .schema import Field, check_config

FORMAT = "openai"
OPTIONS = COMMON_OPTIONS
_LOCATIONS = {
    "resid_post_mlp": "resid_post",
    "resid_post_attn": "resid_mid",
    "resid_delta_attn": "attn_out",
    "resid_delta_mlp": "mlp_out",
}
# The checkpoint's non-tensor entries.
SCHEMA = (
    Field("activation", "str"),
    Field("activation_state_dict", "dict"),
    Field("activation_state_dict.k", "int", minimum=1),
    Field("activation_state_dict.postact_fn", "str"),
)
_TRAINING_STATS = ("stats_last_nonzero", "latents_activation_frequency", "latents_mean_square")


def load(path: Path, opts: Options) -> Dictionary:
    """Read an OpenAI `sparse_autoencoder` state dict (`{layer}.pt`)."""
    origin = str(path)
    raw = read_torch(path)
    settings = check_config(
        {key: raw.pop(key, None) for key in ("activation", "activation_state_dict")}, SCHEMA, origin
    )
    activation_name = settings["activation"] or "ReLU"
    activation_state = settings["activation_state_dict"] or {}
    store = TensorStore(raw, origin)
    pre_bias, latent_bias = store.take("pre_bias"), store.take("latent_bias")
    d, n_latents = pre_bias.shape[0], latent_bias.shape[0]
    arrays = {
        "W_enc": expect_shape(
            store.take("encoder.weight"),
            (n_latents, d),
            origin=origin,
            key="encoder.weight",
            axes="[n_latents, d_model]",
        ).T,
        "b_enc": latent_bias,
        "W_dec": expect_shape(
            store.take("decoder.weight"),
            (d, n_latents),
            origin=origin,
            key="decoder.weight",
            axes="[d_model, n_latents]",
        ).T,
        "b_dec": pre_bias,
    }
    store.discard(*_TRAINING_STATS)
    store.finish()

    k, rectify = None, True
    if activation_name == "TopK":
        activation, k = "topk", activation_state.get("k")
        postact = activation_state.get("postact_fn", "ReLU")
        if not isinstance(k, int) or postact not in ("ReLU", "Identity"):
            raise DictionaryError(
                f"{origin}: TopK activation_state_dict {activation_state} needs "
                "an int k and postact_fn 'ReLU' or 'Identity'"
            )
        rectify = postact == "ReLU"
    elif activation_name == "ReLU":
        activation = "relu"
    else:
        raise DictionaryError(f"{origin}: activation {activation_name!r} is not supported")
    input_norm = "layer_norm" if activation_name == "TopK" else "none"  # as in their from_state_dict

    text = Path(os.path.abspath(path)).as_posix()
    claims, label = [], None
    m = re.search(r"(resid_post_mlp|resid_post_attn|resid_delta_attn|resid_delta_mlp)_v5_(\w+?)/", text)
    if m:
        claims.append(Claim(None, _LOCATIONS[m.group(1)], f"the folder name {m.group(0)[:-1]!r}"))
        label = m.group(2)
        check_width_label(label, n_latents, origin)
    m = re.search(r"autoencoders/(\d+)\.pt$", text)
    if m:
        claims.append(Claim(int(m.group(1)), None, f"the file name {m.group(0)!r}"))
    layer, site = resolve(claims, layer=opts.layer, site=opts.site, origin=origin)
    info = DictionaryInfo(format=FORMAT, source=origin, architecture=activation_name)
    return build(
        opts,
        arrays=arrays,
        layer=layer,
        site_in=site,
        site_out=site,
        kind="sae",
        activation=activation,
        info=info,
        label=label,
        k=k,
        rectify=rectify,
        apply_b_dec_to_input=True,
        input_norm=input_norm,
        denormalize_output=True,
    )
