"""What a job reads and how it computes, as plain frozen values (no argparse).

The command line (`qlens_jax.cli`) parses its options into these; the jobs (`qlens
signatures`, `qlens channels`, `qlens evaluate`) and `qlens_jax.job.inputs` read only these.
Field names are the options' names with `_` for `-` (`corpus_max_tokens` is
`--corpus-max-tokens`), so error messages and run.json name options as the user typed them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from qlens_jax.lens.options import ExecutionOptions, LensOptions

# The execution options a `qlens signatures` command line sets (run.json records them by name).
COMMAND_LINE_EXECUTION = ("path", "memory_budget_gb", "self_check", "quiet")


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
    the `--features` text as given, parsed when the dictionaries are known).

    `lens` is what the kernel computes (`LensOptions`, passed to it as it is); `execution` how it
    runs (`ExecutionOptions`; its `mesh` is built from the `mesh` text when the job starts, its
    `shard_weights` from `weights`). The other fields are the job's own."""

    out: str
    lenses: tuple[str, ...]
    features: str | None = None
    lens: LensOptions = field(default_factory=LensOptions)
    execution: ExecutionOptions = field(default_factory=lambda: ExecutionOptions(quiet=False))
    shard_size: int = 4096
    mesh: str | None = None
    weights: str = "auto"
    distributed: bool = False
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def record(self) -> dict:
        """The options by option name, one level (run.json's `options`): the job's own, every
        `LensOptions` field, and the execution options the command line sets."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("lens", "execution")}
        execution = {name: getattr(self.execution, name) for name in COMMAND_LINE_EXECUTION}
        return {**own, **self.lens.fingerprint(), **execution}


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
            **self.options.record(),
        }
