"""The GPT-2 small attention-output SAEs of Kissane et al. (`ckkissane/attn-saes-gpt2-small-all-layers`,
sae_lens release `gpt2-small-hook-z-kk`): a PyTorch state dict `{run}.pt` next to `{run}_cfg.json`.

`{run}_cfg.json` (their training config): `act_name` (`blocks.L.attn.hook_z`), `act_size`
(`n_heads * d_head`), `dict_size`, `layer`, `model_name`, and training settings (ignored).
`{run}.pt`: `W_enc [act_size, dict_size]`, `b_enc`, `W_dec [dict_size, act_size]`, `b_dec`.
Forward pass (their `AutoEncoder`, and sae_lens's `connor_rob_hook_z` loader):
`acts = relu((z - b_dec) @ W_enc + b_enc)`, `out = acts @ W_dec + b_dec`, on the heads' outputs
concatenated in TransformerLens `hook_z` order (site `z`, width `n_heads * d_head`).
"""

import re
from pathlib import Path

from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionaryInfo, parse_hook_name

from .assemble import COMMON_OPTIONS, Claim, Options, build, expect_shape, resolve
from .readers import TensorStore, read_json, read_torch
from .schema import Field, check_config

FORMAT = "hook_z"
OPTIONS = COMMON_OPTIONS
SCHEMA = (
    Field("act_name", "str", True),
    Field("act_size", "int", True, 1),
    Field("dict_size", "int", True, 1),
    Field("layer", "int", minimum=0),
    Field("model_name", "str"),
)


def config_file(path: Path) -> Path:
    """The config next to a weights file, named as sae_lens's loader names it."""
    return path.with_name(path.name.split(".pt")[0] + "_cfg.json")


def is_hook_z_file(path: Path) -> bool:
    return path.suffix == ".pt" and config_file(path).is_file()


def load(path: Path, opts: Options) -> Dictionary:
    """Read a Kissane et al. `hook_z` SAE (`{run}.pt` and `{run}_cfg.json`)."""
    origin, cfg_path = str(path), config_file(path)
    cfg_origin = str(cfg_path)
    cfg = check_config(read_json(cfg_path), SCHEMA, cfg_origin)
    act_name = cfg["act_name"]
    claims = [Claim(*parse_hook_name(act_name), f"act_name {act_name!r}")]
    if cfg.get("layer") is not None:
        claims.append(Claim(cfg["layer"], None, f"layer {cfg['layer']}"))
    m = re.search(r"_L(\d+)_", path.name)
    if m:
        claims.append(Claim(int(m.group(1)), None, f"the file name {path.name!r}"))
    layer, site = resolve(claims, layer=opts.layer, site=opts.site, origin=cfg_origin)
    if site != "z":
        raise DictionaryError(f"{cfg_origin}: act_name {act_name!r} is not an attn.hook_z SAE")
    d_in, d_sae = cfg["act_size"], cfg["dict_size"]
    store = TensorStore(read_torch(path), origin)
    arrays = {
        "W_enc": expect_shape(
            store.take("W_enc"), (d_in, d_sae), origin=origin, key="W_enc", axes="[act_size, dict_size]"
        ),
        "b_enc": expect_shape(store.take("b_enc"), (d_sae,), origin=origin, key="b_enc", axes="[dict_size]"),
        "W_dec": expect_shape(
            store.take("W_dec"), (d_sae, d_in), origin=origin, key="W_dec", axes="[dict_size, act_size]"
        ),
        "b_dec": expect_shape(store.take("b_dec"), (d_in,), origin=origin, key="b_dec", axes="[act_size]"),
    }
    store.finish()
    info = DictionaryInfo(
        format=FORMAT, source=origin, architecture="standard", model_name=cfg.get("model_name"), hook_name=act_name
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
        apply_b_dec_to_input=True,
    )
