"""EleutherAI sparsify: a hookpoint folder with `cfg.json` + `sae.safetensors`.

Follows sparsify's own `SparseCoder.encode/decode`, not sae_lens's `sparsify` loader (which
transposes `W_dec` and ties `b_dec` subtraction to `normalize_decoder`):

- keys `encoder.weight [num_latents, d_in]`, `encoder.bias [num_latents]`,
  `W_dec [num_latents, d_in]` (already feature-major), `b_dec [d_in]`, optional
  `W_skip [d_in, d_in]` (added as `x @ W_skip.T`);
- `encode`: subtract `b_dec` unless `transcode`; `relu(x @ W.T + b)`; then top-k or GroupMax
  with `k`; `decode`: `acts @ W_dec + b_dec`.
- `num_latents = 0` means `d_in * expansion_factor`.

Placement from the folder name (the hookpoint, a Hugging Face module path whose output is
read): an SAE on `layers.N` reads `resid_post`, on `layers.N.self_attn` (GPT-2 `h.N.attn`)
`attn_out`, on `layers.N.mlp` `mlp_out` (module outputs: not in Gemma 2/3, which normalize
them before the residual add; the model's type decides); a transcoder on `layers.N.mlp` reads
the MLP input and writes its output. Other hookpoints are refused; pass `layer=`/`site=` to
confirm, not to override.
"""

import re
from pathlib import Path

from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionaryInfo, has_post_norms, parse_hook_name

from .assemble import COMMON_OPTIONS, Claim, Options, build, expect_shape, require, resolve
from .readers import TensorStore, read_json, read_safetensors
from .schema import Field, check_config

FORMAT = "sparsify"
OPTIONS = COMMON_OPTIONS
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae.safetensors"
# Training-only switches that do not change inference, and ones that do but are unsupported.
_UNSUPPORTED_IF_SET = ("embed_skip", "gram_lookup", "signed")
SCHEMA = (
    Field("d_in", "int", True, 1),
    Field("num_latents", "int", minimum=0),
    Field("expansion_factor", "int", minimum=1),
    Field("k", "int", True, 1),
    Field("activation", "str"),
    Field("transcode", "bool"),
    Field("skip_connection", "bool"),
    Field("normalize_decoder", "bool"),
    Field("multi_topk", "bool"),
)
_HOOKPOINT = re.compile(r"^(?:model\.|gpt_neox\.|transformer\.)*(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn))?$")


def is_sparsify_dir(path: Path) -> bool:
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _site(path: Path, transcode: bool, model_type: str | None) -> str:
    """The input site of the hookpoint folder `path`."""
    m = _HOOKPOINT.match(path.name)
    if m is None:
        raise DictionaryError(
            f"{path}: hookpoint {path.name!r} is not a Query Lens site "
            "(expected 'layers.N', 'layers.N.self_attn' or 'layers.N.mlp')"
        )
    module = m.group(2)
    if transcode:
        if module != "mlp":
            raise DictionaryError(
                f"{path}: hookpoint {path.name!r} with transcode=True is not an "
                "MLP transcoder ('layers.N.mlp'), not a Query Lens site"
            )
        if has_post_norms(model_type):
            raise DictionaryError(
                f"{path}: {model_type} normalizes the MLP output after the module, "
                f"so a transcoder on {path.name!r} does not write mlp_out"
            )
        return "mlp_in"
    if module is None:
        return "resid_post"
    try:
        return parse_hook_name(f"{path.name}.output", model_type).site
    except DictionaryError as e:
        raise DictionaryError(f"{path}: hookpoint {path.name!r}: {e}") from None


def load(path: Path, opts: Options) -> Dictionary:
    """Read a sparsify hookpoint folder (`cfg.json` + `sae.safetensors`)."""
    cfg_origin, origin = str(path / CFG_FILE), str(path / WEIGHTS_FILE)
    cfg = check_config(read_json(path / CFG_FILE), SCHEMA, cfg_origin)
    for key in _UNSUPPORTED_IF_SET:
        if cfg.get(key):
            raise DictionaryError(f"{cfg_origin}: {key}={cfg[key]!r} is not supported")
    d_in = int(require(cfg, "d_in", cfg_origin))
    d_sae = int(cfg.get("num_latents") or 0) or d_in * int(require(cfg, "expansion_factor", cfg_origin))
    k = int(require(cfg, "k", cfg_origin))
    activation = cfg.get("activation", "topk")
    if activation not in ("topk", "groupmax"):
        raise DictionaryError(f"{cfg_origin}: activation {activation!r} is not supported")
    transcode = bool(cfg.get("transcode", False))
    kind = "transcoder" if transcode else "sae"

    site = _site(path, transcode, opts.model_type)
    m = _HOOKPOINT.match(path.name)
    layer, site_in = resolve(
        [Claim(int(m.group(1)), site, f"the hookpoint {path.name!r}")],
        layer=opts.layer,
        site=opts.site,
        origin=str(path),
    )

    store = TensorStore(read_safetensors(path / WEIGHTS_FILE), origin)
    if not store.has("W_dec"):
        raise DictionaryError(f"{origin}: missing key 'W_dec' (saved without a decoder?)")
    arrays = {
        "W_enc": expect_shape(
            store.take("encoder.weight"), (d_sae, d_in), origin=origin, key="encoder.weight", axes="[num_latents, d_in]"
        ).T,
        "b_enc": expect_shape(
            store.take("encoder.bias"), (d_sae,), origin=origin, key="encoder.bias", axes="[num_latents]"
        ),
        "W_dec": expect_shape(
            store.take("W_dec"), (d_sae, d_in), origin=origin, key="W_dec", axes="[num_latents, d_in]"
        ),
        "b_dec": expect_shape(store.take("b_dec"), (d_in,), origin=origin, key="b_dec", axes="[d_in]"),
    }
    if cfg.get("skip_connection", False):
        arrays["W_skip"] = expect_shape(
            store.take("W_skip"), (d_in, d_in), origin=origin, key="W_skip", axes="[d_in, d_in]"
        )
    store.finish()
    info = DictionaryInfo(
        format=FORMAT,
        source=str(path),
        architecture=activation,
        hf_hook_name=None if transcode else path.name + (".output" if m.group(2) else ""),
    )
    return build(
        opts,
        arrays=arrays,
        layer=layer,
        site_in=site_in,
        site_out="mlp_out" if transcode else site_in,
        kind=kind,
        activation=activation,
        info=info,
        k=k,
        rectify=True,
        apply_b_dec_to_input=not transcode,
    )
