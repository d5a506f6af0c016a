"""What the Goodfire and DeepSeek-R1-distill SAE files share: one PyTorch file holding an
encoder and a decoder `nn.Linear` with biases, read at the output of one decoder layer.

`{encoder}.weight [d_sae, d_in]`, `{encoder}.bias [d_sae]`, `{decoder}.weight [d_in, d_sae]`,
`{decoder}.bias [d_in]`; `acts = relu(x @ encoder.weight.T + encoder.bias)` (nothing
subtracted from the input), `out = acts @ decoder.weight.T + decoder.bias`. The file name
`{model}-SAE-l{L}.pt[h]` gives the layer; the site is the layer's output (`resid_post`).
"""

import re
from pathlib import Path

from qlens_jax.dictionaries import Dictionary, DictionaryInfo

from .assemble import Claim, Options, build, expect_shape, resolve
from .readers import TensorStore, read_torch

FILE_NAME = re.compile(r"^(?P<model>.+?)-SAE-l(?P<layer>\d+)\.pth?$")


def keys(encoder: str, decoder: str) -> frozenset[str]:
    """The exact key set of such a file."""
    return frozenset(f"{module}.{p}" for module in (encoder, decoder) for p in ("weight", "bias"))


def load(path: Path, opts: Options, *, format: str, encoder: str, decoder: str) -> Dictionary:
    """Read the file at `path` whose modules are named `encoder` and `decoder`."""
    origin = str(path)
    m = FILE_NAME.match(path.name)
    claims = [Claim(int(m.group("layer")), "resid_post", f"the file name {path.name!r}")] if m else []
    layer, site = resolve(claims, layer=opts.layer, site=opts.site, origin=origin)
    store = TensorStore(read_torch(path), origin)
    b_enc, b_dec = store.take(f"{encoder}.bias"), store.take(f"{decoder}.bias")
    d_sae, d_in = b_enc.shape[0], b_dec.shape[0]
    arrays = {
        "W_enc": expect_shape(
            store.take(f"{encoder}.weight"), (d_sae, d_in), origin=origin, key=f"{encoder}.weight", axes="[d_sae, d_in]"
        ).T,
        "b_enc": b_enc,
        "W_dec": expect_shape(
            store.take(f"{decoder}.weight"), (d_in, d_sae), origin=origin, key=f"{decoder}.weight", axes="[d_in, d_sae]"
        ).T,
        "b_dec": b_dec,
    }
    store.finish()
    info = DictionaryInfo(
        format=format,
        source=origin,
        architecture="standard",
        model_name=m.group("model") if m else None,
        hf_hook_name=f"model.layers.{layer}" if m else None,
    )
    return build(
        opts,
        arrays=arrays,
        layer=layer,
        site_in=site,
        site_out=site,
        kind="sae",
        activation="relu",
        info=info,
        apply_b_dec_to_input=False,
    )
