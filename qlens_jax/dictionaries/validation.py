"""Check a dictionary against the model it is used with, before any compilation.

The model is a `qlens_jax.models.Transformer` (anything with `.config`), a `ModelConfig`, or
any object with `d_model`, `n_layers` and `model_type` (and `n_heads`, `head_dim` for
dictionaries on `z`); only those facts are used.
"""

import dataclasses

from .dictionary import Dictionary
from .errors import DictionaryError
from .sites import PARALLEL_BLOCK_SITES, parse_hook_name


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """The model facts a dictionary is checked against. `n_heads` and `head_dim` (None when
    the model does not say) give the width of `z`, the heads' outputs concatenated."""

    d_model: int
    n_layers: int
    model_type: str | None
    n_heads: int | None = None
    head_dim: int | None = None
    parallel_residual: bool = False  # attention and MLP both read resid_pre: no resid_mid

    @property
    def z_width(self) -> int | None:
        """`n_heads x head_dim`, or None when the model does not give both."""
        if self.n_heads is None or self.head_dim is None:
            return None
        return self.n_heads * self.head_dim


def model_facts(model) -> ModelFacts:
    """Read `d_model`, `n_layers`, `model_type` (and `n_heads`, `head_dim` where present) from a
    Transformer, a ModelConfig, or a look-alike."""
    if isinstance(model, ModelFacts):
        return model
    config = getattr(model, "config", model)
    try:
        d_model, n_layers = int(config.d_model), int(config.n_layers)
    except AttributeError as e:
        raise TypeError(
            f"expected a qlens_jax Transformer or ModelConfig (with d_model, n_layers, "
            f"model_type), got {type(model).__name__}"
        ) from e
    n_heads, head_dim = getattr(config, "n_heads", None), getattr(config, "head_dim", None)
    return ModelFacts(
        d_model,
        n_layers,
        getattr(config, "model_type", None),
        None if n_heads is None else int(n_heads),
        None if head_dim is None else int(head_dim),
        bool(getattr(config, "parallel_residual", False)),
    )


def _describe(d: Dictionary) -> str:
    where = f" from {d.info.source}" if d.info.source else ""
    return f"dictionary {d.name!r} (layer {d.layer}, {d.site_in}->{d.site_out}){where}"


def _recorded_hooks(d: Dictionary) -> tuple[tuple[str, str], ...]:
    """(hook name, the site it must name) for every hook recorded with the dictionary."""
    hooks = (
        (d.info.hook_name, d.site_in),
        (d.info.hf_hook_name, d.site_in),
        (d.info.hook_name_out, d.site_out),
        (d.info.hf_hook_name_out, d.site_out),
    )
    return tuple((hook, site) for hook, site in hooks if hook is not None)


def expected_width(site: str, facts: ModelFacts, who: str = "a dictionary") -> int:
    """Width of the vectors at `site` in the model: `n_heads x head_dim` for `z`, else
    `d_model`. Raises when `z` is asked of a model that does not give its head shape."""
    if site != "z":
        return facts.d_model
    if facts.z_width is None:
        raise DictionaryError(
            f"{who} reads z (the heads' outputs concatenated), but the model "
            "given does not say n_heads and head_dim; pass a ModelConfig"
        )
    return facts.z_width


def _check_width(d: Dictionary, who: str, side: str, width: int, site: str, facts: ModelFacts) -> None:
    expected = expected_width(site, facts, who)
    if width == expected:
        return
    if site == "z":
        raise DictionaryError(
            f"{who} reads z, the heads' outputs concatenated: its {side} must be "
            f"[n_heads x head_dim] = [{facts.n_heads} x {facts.head_dim}] = {expected} of the "
            f"model, but it is {width}"
        )
    if site == "attn_out" and width == facts.z_width:
        hooks = ", ".join(repr(h) for h, _ in _recorded_hooks(d)) or "(no hook recorded)"
        raise DictionaryError(
            f"{who} cannot be placed unambiguously: its hook {hooks} says attn_out (the attention "
            f"output, width d_model={facts.d_model}), but its width {width} is n_heads x head_dim "
            f"= [{facts.n_heads} x {facts.head_dim}] of the model, the width of z (the heads' "
            "outputs before the output projection). Older sae_lens conversions of Gemma Scope 2 "
            "'attn_out' SAEs, which read the o_proj input, are labelled so; if the file reads "
            "the o_proj input, name its hook 'blocks.L.attn.hook_z'"
        )
    raise DictionaryError(f"{who} has {side}={width} but the model has d_model={facts.d_model}")


def validate_dictionary(d: Dictionary, model) -> None:
    """Raise `DictionaryError` if `d` does not fit `model`: layer in range, widths (`d_model`,
    or `n_heads x head_dim` for `z`), and every hook name recorded with the dictionary pointing
    at its layer and site. Cheap: runs before anything is compiled."""
    facts = model_facts(model)
    who = _describe(d)
    hooks = _recorded_hooks(d)
    if not 0 <= d.layer < facts.n_layers:
        named = f" (its hook {hooks[0][0]!r} names a block this model does not have)" if hooks else ""
        raise DictionaryError(f"{who} is at layer {d.layer} but the model has layers 0..{facts.n_layers - 1}{named}")
    if facts.parallel_residual and d.site_out == "resid_mid":
        raise DictionaryError(
            f"{who} is placed at resid_mid, but the blocks of this {facts.model_type} model are parallel "
            "(attention and MLP both read resid_pre and both add to resid_post): there is no resid_mid. "
            f"Sites of a parallel block: {', '.join(PARALLEL_BLOCK_SITES)}; transcoders read mlp_in "
            "(ln2 of resid_pre) or the MLP block input (hook_mlp_in) and write mlp_out"
        )
    _check_width(d, who, "d_in", d.d_in, d.site_in, facts)
    _check_width(d, who, "d_out", d.d_out, d.site_out, facts)
    for hook, site in hooks:
        found = parse_hook_name(hook, facts.model_type)
        if found != (d.layer, site):
            raise DictionaryError(
                f"{who}: its hook {hook!r} is layer {found.layer} site {found.site}, "
                f"but the dictionary is placed at layer {d.layer} site {site}"
            )
