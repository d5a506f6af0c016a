"""Check a dictionary against the model it is used with.

The model is a `qlens_jax.models.Transformer` (anything with `.config`), a `ModelConfig`, or
any object with `d_model`, `n_layers` and `model_type`; only those three facts are used.
"""

import dataclasses

from .dictionary import Dictionary
from .errors import DictionaryError
from .sites import parse_hook_name


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """The three model facts a dictionary is checked against."""

    d_model: int
    n_layers: int
    model_type: str | None


def model_facts(model) -> ModelFacts:
    """Read `d_model`, `n_layers`, `model_type` from a Transformer, a ModelConfig, or a look-alike."""
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
    return ModelFacts(d_model, n_layers, getattr(config, "model_type", None))


def _describe(d: Dictionary) -> str:
    where = f" from {d.info.source}" if d.info.source else ""
    return f"dictionary {d.name!r} (layer {d.layer}, {d.site_in}->{d.site_out}){where}"


def validate_dictionary(d: Dictionary, model) -> None:
    """Raise `DictionaryError` if `d` does not fit `model`: widths vs `d_model`, layer in
    range, and every hook name recorded with the dictionary pointing at its layer and site."""
    facts = model_facts(model)
    who = _describe(d)
    if d.d_in != facts.d_model:
        raise DictionaryError(f"{who} has d_in={d.d_in} but the model has d_model={facts.d_model}")
    if d.d_out != facts.d_model:
        raise DictionaryError(f"{who} has d_out={d.d_out} but the model has d_model={facts.d_model}")
    if not 0 <= d.layer < facts.n_layers:
        raise DictionaryError(
            f"{who} is at layer {d.layer} but the model has layers 0..{facts.n_layers - 1}"
        )
    hooks = ((d.info.hook_name, d.site_in), (d.info.hf_hook_name, d.site_in),
             (d.info.hook_name_out, d.site_out), (d.info.hf_hook_name_out, d.site_out))
    for hook, site in hooks:
        if hook is None:
            continue
        found = parse_hook_name(hook, facts.model_type)
        if found != (d.layer, site):
            raise DictionaryError(
                f"{who}: its hook {hook!r} is layer {found.layer} site {found.site}, "
                f"but the dictionary is placed at layer {d.layer} site {site}"
            )
