"""What a job reads and how it computes, as plain frozen values (no argparse).

The command line (`qlens_jax.cli`) parses its options into these; the jobs (`qlens
signatures`, `qlens channels`, `qlens evaluate`) and `qlens_jax.job.inputs` read only these.
Field names are the options' names with `_` for `-` (`corpus_max_tokens` is
`--corpus-max-tokens`), so error messages and run.json name options as the user typed them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelSource:
    """The model (`--model`: local folder or Hub id) and its tokenizer (`--tokenizer`; None: the model's)."""

    model: str
    tokenizer: str | None = None


@dataclass(frozen=True)
class DictionarySources:
    """Every `--dictionary` in order (a folder of several expands to all of them) and the
    `--layers` filter as given (ranges text like `3,5-7`; None: all layers)."""

    sources: tuple[str, ...]
    layers: str | None = None


@dataclass(frozen=True)
class SampleSpec:
    """The token sample: `token_sample` (a saved `[num_samples, max_length]` id array) or
    seeded windows of `corpus` read with the other fields. `num_samples` / `max_length` None
    mean the paper's 1024 x 32 (and must stay None with `token_sample`)."""

    corpus: str | None = None
    token_sample: str | None = None
    num_samples: int | None = None
    max_length: int | None = None
    seed: int = 0
    prepend_bos: bool = False
    bos_id: int | None = None
    windows: str = "concat"
    text_field: str = "text"
    corpus_split: str | None = None
    corpus_format: str | None = None
    corpus_max_tokens: int | None = None
    corpus_encoding: str = "utf-8"

    @classmethod
    def for_protocol(cls, protocol, **overrides) -> "SampleSpec":
        """The sample of `protocol` (`Protocol.PAPER`: the authors' `load_pile_sample`, 1024 x 32,
        seed 42), with `overrides` (the corpus, ...) that do not contradict it."""
        from qlens_jax.protocol import PAPER_SAMPLE, protocol_values

        return cls(**protocol_values(protocol, PAPER_SAMPLE, overrides))

    @property
    def source_option(self) -> str:
        """`--corpus SRC` or `--token-sample FILE`, for messages about the sample."""
        return f"--token-sample {self.token_sample}" if self.token_sample is not None else f"--corpus {self.corpus}"


@dataclass(frozen=True)
class JobOptions:
    """How `qlens signatures` computes and where it writes (`lenses` already parsed; `features`
    the `--features` text as given, parsed when the dictionaries are known)."""

    out: str
    lenses: tuple[str, ...]
    features: str | None = None
    k: int = 25
    stats: bool = False
    dtype: str = "float32"
    precision: str = "float32"
    path: str = "auto"
    memory_budget_gb: float | None = None
    shard_size: int = 4096
    self_check: bool = True
    remove_final_norm_bias: bool = False
    first_order_key_mask_seed: bool = False
    exact_norm_jacobian: bool = False
    mesh: str | None = None
    weights: str = "auto"
    distributed: bool = False
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    quiet: bool = False


@dataclass(frozen=True)
class SignaturesJob:
    """Everything one `qlens signatures` run needs."""

    model: ModelSource
    dictionaries: DictionarySources
    sample: SampleSpec
    options: JobOptions

    def record(self) -> dict:
        """The options as run.json's `options` records them, by option name."""
        return {
            "model": self.model.model,
            "tokenizer": self.model.tokenizer,
            "dictionary": list(self.dictionaries.sources),
            "layers": self.dictionaries.layers,
            **asdict(self.sample),
            **asdict(self.options),
        }
