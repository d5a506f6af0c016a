"""circuit-tracer per-layer transcoders (mwhanna/..., mntss/...): `layer_{i}.safetensors`, with
`config.yaml` next to them.

`config.yaml`: `model_kind: transcoder_set` (cross-layer transcoders are refused),
`feature_input_hook` / `feature_output_hook` (TransformerLens names, bare like `mlp.hook_in`
or templated like `blocks.{layer}.ln2.hook_normalized`), optional `activation` and `k`.
Weights: `W_enc [d_transcoder, d_model]` (`F.linear` layout), `W_dec [d_transcoder, d_model]`,
`b_enc`, `b_dec [d_model]`, optional `activation_function.threshold`, `W_skip [d_model, d_model]`
(added as `x @ W_skip.T`).

Semantics follow circuit-tracer's `SingleLayerTranscoder`: `pre = x @ W_enc.T + b_enc`, no
`b_dec` subtraction; JumpReLU when the threshold key is present, as circuit-tracer's
`pre * (pre > threshold)` (no ReLU); TopK as its `pre * topk_gate` (no ReLU); else ReLU.
Early circuit-tracer versions kept `W_enc` as `[d_model, d_transcoder]`, so the encoder's
orientation is decided from `b_enc`/`b_dec` sizes and a square encoder is refused.
"""

import re
from pathlib import Path

from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionaryInfo, parse_hook_name

from .assemble import COMMON_OPTIONS, Claim, Options, build, expect_shape, orient, resolve
from .readers import TensorStore, read_safetensors, read_yaml
from .schema import Field, check_config

FORMAT = "circuit_tracer"
OPTIONS = COMMON_OPTIONS
CONFIG_FILE = "config.yaml"
FILE_PATTERN = re.compile(r"^layer_(\d+)\.safetensors$")
SCHEMA = (
    Field("model_kind", "str"),
    Field("feature_input_hook", "str"),
    Field("feature_output_hook", "str"),
    Field("activation", "str"),
    Field("k", "int", minimum=1),
    Field("model_name", "str"),
)


def is_circuit_tracer_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and any(FILE_PATTERN.match(p.name) for p in path.iterdir())


def layer_files(path: Path, pattern: re.Pattern = FILE_PATTERN) -> list[Path]:
    """The per-layer files of a folder (`pattern` captures the layer), by layer."""
    files = [p for p in path.iterdir() if pattern.match(p.name)]
    return sorted(files, key=lambda p: int(pattern.match(p.name).group(1)))


def hook_name(template: str, layer: int) -> str:
    name = template.replace("{layer}", str(layer))
    return name if name.startswith("blocks.") else f"blocks.{layer}.{name}"


def load(path: Path, opts: Options) -> Dictionary:
    """Read one layer of a transcoder set: a `layer_{i}.safetensors` file, or the set's
    folder with `layer=`."""
    if path.is_dir():
        if opts.layer is None:
            raise DictionaryError(
                f"{path}: a transcoder set holds one file per layer; pass "
                "layer=... (or use load_dictionaries for all of them)"
            )
        file = path / f"layer_{opts.layer}.safetensors"
        if not file.is_file():
            raise DictionaryError(
                f"{path}: no {file.name} here (download it first; the set's {CONFIG_FILE} may list it as an hf:// URI)"
            )
        path = file
    origin = str(path)
    cfg_origin = str(path.parent / CONFIG_FILE)
    cfg = (
        check_config(read_yaml(path.parent / CONFIG_FILE), SCHEMA, cfg_origin)
        if (path.parent / CONFIG_FILE).is_file()
        else {}
    )
    if cfg.get("model_kind", "transcoder_set") != "transcoder_set":
        raise DictionaryError(
            f"{cfg_origin}: model_kind {cfg['model_kind']!r} is not supported (only per-layer transcoder sets)"
        )
    m = FILE_PATTERN.match(path.name)
    claims = [Claim(int(m.group(1)), None, f"the file name {path.name!r}")] if m else []
    file_layer = int(m.group(1)) if m else opts.layer
    hook_in = hook_out = None
    if "feature_input_hook" in cfg and file_layer is not None:
        hook_in = hook_name(cfg["feature_input_hook"], file_layer)
        claims.append(Claim(*parse_hook_name(hook_in), f"{CONFIG_FILE} feature_input_hook {hook_in!r}"))
    layer, site_in = resolve(claims, layer=opts.layer, site=opts.site, origin=origin)
    out_claims = [Claim(layer, None, "the input layer")]
    if "feature_output_hook" in cfg:
        hook_out = hook_name(cfg["feature_output_hook"], layer)
        out_claims.append(Claim(*parse_hook_name(hook_out), f"{CONFIG_FILE} feature_output_hook {hook_out!r}"))
    _, site_out = resolve(out_claims, layer=None, site=None if hook_out else "mlp_out", origin=origin)

    store = TensorStore(read_safetensors(path), origin)
    b_enc, b_dec = store.take("b_enc"), store.take("b_dec")
    d_sae, d_model = b_enc.shape[0], b_dec.shape[0]
    arrays = {
        "W_enc": orient(
            store.take("W_enc"), d_sae, d_model, origin=origin, key="W_enc", axes="[d_transcoder, d_model]"
        ).T,
        "b_enc": b_enc,
        "W_dec": expect_shape(
            store.take("W_dec"), (d_sae, d_model), origin=origin, key="W_dec", axes="[d_transcoder, d_model]"
        ),
        "b_dec": b_dec,
    }
    if store.has("W_skip"):
        arrays["W_skip"] = expect_shape(
            store.take("W_skip"), (d_model, d_model), origin=origin, key="W_skip", axes="[d_model, d_model]"
        )
    declared = cfg.get("activation")
    k = None
    if store.has("activation_function.threshold"):
        if declared not in (None, "jump_relu", "jumprelu"):
            raise DictionaryError(f"{cfg_origin}: activation {declared!r}, but {origin} has a JumpReLU threshold")
        activation = "jumprelu"
        arrays["threshold"] = expect_shape(
            store.take("activation_function.threshold"),
            (d_sae,),
            origin=origin,
            key="activation_function.threshold",
            axes="[d_transcoder]",
        )
    elif declared in (None, "relu"):
        activation = "relu"
    elif declared == "topk":
        activation = "topk"
        stored_k = store.take("k").reshape(-1) if store.has("k") else None
        if stored_k is not None and (stored_k.size != 1 or float(stored_k[0]) != int(stored_k[0])):
            raise DictionaryError(f"{origin}: key 'k' must hold one integer, got {stored_k.tolist()[:4]}")
        k = cfg.get("k", None if stored_k is None else int(stored_k[0]))
        if not isinstance(k, int):
            raise DictionaryError(f"{cfg_origin}: activation 'topk' needs an integer k, got {k!r}")
    else:
        raise DictionaryError(f"{cfg_origin}: activation {declared!r} is not supported")
    store.finish()
    info = DictionaryInfo(
        format=FORMAT,
        source=origin,
        architecture=activation,
        model_name=cfg.get("model_name"),
        hook_name=hook_in,
        hook_name_out=hook_out,
    )
    return build(
        opts,
        arrays=arrays,
        layer=layer,
        site_in=site_in,
        site_out=site_out,
        kind="transcoder",
        activation=activation,
        info=info,
        k=k,
        rectify=False,
    )
