"""Qwen-Scope residual SAEs: `layer{n}.sae.pt`, a plain dict of tensors.

Keys `W_enc [d_sae, d_in]`, `W_dec [d_in, d_sae]`, `b_enc [d_sae]`, `b_dec [d_in]` (sae_lens's
test: "Qwen Scope stores W_enc as (d_sae, d_in) and W_dec as (d_in, d_sae)"). Native formula
`pre = x @ W_enc.T + b_enc`, no `b_dec` subtraction, no normalization, TopK with `k` = the
release's L0 and a ReLU on kept values (sae_lens's `qwen_scope` loader). Reads
`blocks.{n}.hook_resid_post` = `model.layers.{n}` output.

The width and `k` are in the repository name (`SAE-Res-Qwen3-1.7B-Base-W32K-L0_50`), which a
Hugging Face cache path contains; elsewhere pass `k=`. The file is loaded with
`torch.load(weights_only=True)`.
"""

import os
import re
from pathlib import Path

from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionaryInfo

from .assemble import COMMON_OPTIONS, Claim, Options, build, check_width_label, expect_shape, resolve
from .readers import TensorStore, read_torch

FORMAT = "qwen_scope"
OPTIONS = COMMON_OPTIONS | {"k"}
FILE_PATTERN = re.compile(r"^layer(\d+)\.sae\.pt$")


def load(path: Path, opts: Options) -> Dictionary:
    """Read a Qwen-Scope `layer{n}.sae.pt` file."""
    origin = str(path)
    m = FILE_PATTERN.match(path.name)
    claims = [Claim(int(m.group(1)), "resid_post", f"the file name {path.name!r}")] if m else []
    layer, site = resolve(claims, layer=opts.layer, site=opts.site, origin=origin)
    store = TensorStore(read_torch(path), origin)
    b_enc, b_dec = store.take("b_enc"), store.take("b_dec")
    d_sae, d_in = b_enc.shape[0], b_dec.shape[0]
    arrays = {
        "W_enc": expect_shape(store.take("W_enc"), (d_sae, d_in), origin=origin, key="W_enc", axes="[d_sae, d_in]").T,
        "b_enc": b_enc,
        "W_dec": expect_shape(store.take("W_dec"), (d_in, d_sae), origin=origin, key="W_dec", axes="[d_in, d_sae]").T,
        "b_dec": b_dec,
    }
    store.finish()
    repo = re.search(r"W(\d+)K-L0_(\d+)", Path(os.path.abspath(path)).as_posix())
    label, k = None, opts.k
    if repo:
        label = f"{repo.group(1)}k"
        if d_sae != int(repo.group(1)) * 1024:
            raise DictionaryError(
                f"{origin}: the path says width W{repo.group(1)}K "
                f"(= {int(repo.group(1)) * 1024}) but b_enc has d_sae={d_sae}"
            )
        check_width_label(label, d_sae, origin)
        if k is not None and k != int(repo.group(2)):
            raise DictionaryError(f"{origin}: k={k} was requested but the path says L0_{repo.group(2)}")
        k = int(repo.group(2))
    if k is None:
        raise DictionaryError(
            f"{origin}: the TopK size is not in the file; pass k=... (the release's L0, e.g. 50 for ...-L0_50)"
        )
    info = DictionaryInfo(
        format=FORMAT, source=origin, architecture="topk", hf_hook_name=f"model.layers.{layer}" if m else None
    )
    return build(
        opts,
        arrays=arrays,
        layer=layer,
        site_in=site,
        site_out=site,
        kind="sae",
        activation="topk",
        info=info,
        label=label,
        k=k,
        rectify=True,
    )
