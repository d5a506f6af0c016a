"""`FamilySpec`: everything qlens-jax knows about one Hugging Face model family, in one value.

A family file (`converters/families/<family>.py`) builds one spec and `register`s it; the
config front (`converters.hf_config`), the weight loader (`converters.hf_weights`) and the
tests read the registry instead of branching on `model_type`. A spec holds:

- the config keys the family reads, the values it requires of keys whose other values it does
  not implement, and the keys of its own that transformers never reads for this family
  (`inert`); anything else is refused by name. Keys every family may carry without effect on
  a float forward pass (ids, dropout, dtype, labels, generation) are `COMMON_INERT_KEYS`.
- transformers' defaults of math-changing options, for checkpoints that write sparse configs;
- `build`: the checked raw config -> `ModelConfig`;
- `weights`: `ModelConfig` -> the weight plan (which checkpoint tensor fills which leaf);
- what the hook names mean (`post_norms`: module outputs are normalized before the residual
  add, so a Hugging Face module output is not the `attn_out` / `mlp_out` site) and which
  Hugging Face modules the PyTorch reference hooks (`torch_style`), both kept equal to
  `qlens_jax.dictionaries.sites` and `benchmarks/reference_torch.py` by tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from converters.errors import UnsupportedOptionError
from converters.families.weights import LM_HEAD, KeyLayout, Source
from qlens_jax.models import ModelConfig

# Keys with no effect on a float forward pass of any family: bookkeeping, dropout, token ids,
# labels, dtype, generation and serving options, the classification heads' `summary_*`, and
# legacy keys transformers no longer reads (`n_ctx`; `pretraining_tp`, an equivalent split matmul). A key that some family's math reads
# (soft-caps, windows, layer types, rope options, ...) never belongs here: it goes in the
# `reads` of the families that implement it and the `inert` of those whose transformers
# implementation ignores it.
COMMON_INERT_KEYS = frozenset(
    """_name_or_path architectures attention_dropout attn_pdrop resid_pdrop embd_pdrop
    bos_token_id eos_token_id pad_token_id sep_token_id decoder_start_token_id chunk_size_feed_forward dtype
    torch_dtype id2label label2id initializer_range is_encoder_decoder output_attentions
    output_hidden_states problem_type return_dict transformers_version use_cache tokenizer_class
    task_specific_params use_return_dict torchscript prefix finetuning_task
    cache_implementation _attn_implementation_autoset attn_implementation model_type
    generation_config keys_to_ignore_at_inference auto_map use_bfloat16 tf_legacy_loss pruned_heads
    output_scores return_dict_in_generate add_bos_token
    summary_type summary_use_proj summary_activation summary_proj_to_labels summary_first_dropout
    n_ctx pretraining_tp""".split()
)

TORCH_STYLES = ("gpt2", "llama", "gemma", "neox")


@dataclass(frozen=True)
class FamilySpec:
    """One model family: its config keys, conversion, weight plan and hook semantics."""

    model_type: str
    reads: frozenset[str]  # keys `build` reads
    build: Callable[[dict[str, Any]], ModelConfig]
    weights: Callable[[ModelConfig], dict[str, Source | tuple[Source, ...]]]
    embed_key: str = "embed_tokens.weight"  # finds the base model's key prefix in a checkpoint
    lm_head_keys: tuple[str, ...] = (LM_HEAD,)  # where checkpoints keep the untied unembedding (first found)
    buffer_keys: tuple[str, ...] = ()  # key suffixes of non-parameter buffers its checkpoints carry
    required: Mapping[str, tuple] = field(default_factory=dict)  # key -> the only values implemented
    inert: frozenset[str] = frozenset()  # keys transformers' implementation of this family never reads
    defaults: Mapping[str, Any] = field(default_factory=dict)  # transformers' defaults, for sparse configs
    post_norms: bool = False  # module outputs normalized before the residual add (Gemma 2/3)
    torch_style: str = "llama"  # which HF modules benchmarks/reference_torch.py hooks
    # A multimodal wrapper whose language model this family is: its model_type, its top-level
    # keys that only concern other inputs (images), where its checkpoints keep the language
    # model, and a check of the text config's options that the wrapper treats differently.
    wrapper: str | None = None
    wrapper_keys: frozenset[str] = frozenset()
    wrapper_layouts: tuple[KeyLayout, ...] = ()
    wrapper_check: Callable[[dict[str, Any], str], None] | None = None
    wrapper_tie_default: bool = True  # the wrapper's `tie_word_embeddings` default (Gemma-3 True, Qwen3.5 False)

    def __post_init__(self):
        if self.torch_style not in TORCH_STYLES:
            raise ValueError(f"{self.model_type}: torch_style must be one of {TORCH_STYLES}")
        overlap = (self.reads | set(self.required)) & (self.inert | COMMON_INERT_KEYS)
        if overlap:
            raise ValueError(f"{self.model_type}: keys both read and inert: {sorted(overlap)}")
        object.__setattr__(self, "required", MappingProxyType(dict(self.required)))
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    @property
    def accepted(self) -> frozenset[str]:
        """Every key a config of this family may hold."""
        return self.reads | self.inert | COMMON_INERT_KEYS | frozenset(self.required)

    def check_keys(self, raw: dict[str, Any], label: str) -> None:
        """Refuse, by name, every key this family neither reads nor knows to be inert, and
        every value of a required key that it does not implement."""
        unknown = sorted(k for k in raw if k not in self.accepted)
        if unknown:
            raise UnsupportedOptionError(f"{label} option(s) not supported by the converter: {', '.join(unknown)}")
        for key, allowed in self.required.items():
            if key in raw and raw[key] not in allowed:
                raise UnsupportedOptionError(
                    f"{label} option {key}={raw[key]!r} is not supported (supported: {allowed})"
                )

    def model_config(self, raw: dict[str, Any], label: str) -> ModelConfig:
        """`raw` (transformers' defaults filled in) checked and converted."""
        raw = {**self.defaults, **raw}
        self.check_keys(raw, label)
        return self.build(raw)


REGISTRY: dict[str, FamilySpec] = {}


def register(spec: FamilySpec) -> FamilySpec:
    """Add `spec` to the registry (one per `model_type`)."""
    if spec.model_type in REGISTRY:
        raise ValueError(f"model family {spec.model_type!r} is registered twice")
    REGISTRY[spec.model_type] = spec
    return spec
