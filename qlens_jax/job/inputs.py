"""Everything `qlens signatures` reads, loaded and checked before any computation.

Each failure raises `InputError` naming the option and the input (`--model SRC: ...`), in
the order cheapest first: options and paths, the output folder, then the model, tokenizer
and dictionaries (and whether they fit together), the features, and the token sample.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qlens_jax.corpus import CorpusError, check_encoding, load_token_sample, sample_windows, tokenize_corpus
from qlens_jax.errors import InputError
from qlens_jax.io.reference_features import is_feature_sample, read_feature_sample
from qlens_jax.io.rundir import check_writable
from qlens_jax.job.spec import DictionarySources, JobOptions, ModelSource, SampleSpec, SignaturesJob
from qlens_jax.lens.options import DTYPES, PATHS, PRECISIONS
from qlens_jax.lens.signatures import LENSES
from qlens_jax.lens.validation import LensRequestError, check_tokens
from qlens_jax.paper_sample import paper_sample

MAX_ID = 2**31 - 1  # larger than any dictionary's feature count or model's layer count
MAX_LISTED = 2**26  # ids one --features / --layers list may expand to (512 MiB as int64)
_RANGES = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")


@dataclass
class Inputs:
    """The loaded inputs of one run, in run order."""

    model: object
    model_dir: Path
    tokenizer: object
    vocab: np.ndarray  # display string per token id, object array of length vocab_size
    dictionaries: list  # Dictionary, in --dictionary order (sets expanded), filtered by --layers
    features: list[np.ndarray]  # sorted feature ids per dictionary
    feature_strs: list[dict[int, str]]  # reference feature strings from a feature sample, if any
    tokens: np.ndarray
    mask: np.ndarray
    description: dict = field(default_factory=dict)  # what run.json records about the inputs


def parse_ranges(text: str, option: str) -> np.ndarray:
    """`"0-3,7"` -> `[0, 1, 2, 3, 7]` (sorted, unique). Ids above `MAX_ID` and lists longer
    than `MAX_LISTED` are refused before anything is allocated."""
    shown = text if len(text) <= 40 else f"{text[:37]}..."
    if not _RANGES.match(text):
        raise InputError(f"{option} {shown!r}: expected integers and ranges like 0-99,250 (or a file)")
    bounds = []
    for part in text.split(","):
        lo, _, hi = (p.strip() for p in part.partition("-"))
        for number in (lo, hi):
            if len(number) > len(str(MAX_ID)) or (number and int(number) > MAX_ID):
                raise InputError(
                    f"{option} {shown!r}: {number[:20]}{'...' if len(number) > 20 else ''} is larger than "
                    f"any feature id or layer (at most {MAX_ID})"
                )
        lo, hi = int(lo), int(hi or lo)
        if hi < lo:
            raise InputError(f"{option} {shown!r}: range {part.strip()} runs backwards")
        bounds.append((lo, hi))
    listed = sum(hi - lo + 1 for lo, hi in bounds)
    if listed > MAX_LISTED:
        raise InputError(f"{option} {shown!r}: lists {listed} ids, more than {MAX_LISTED}; use 'all' for every feature")
    return np.unique(np.concatenate([np.arange(lo, hi + 1, dtype=np.int64) for lo, hi in bounds]))


def parse_lenses(text: str) -> tuple[str, ...]:
    """`--lenses`: 'all' (the six presets), or preset names and `VECTOR:TRANSITION:READOUT` specs,
    as canonical names (a spec of a preset is that preset's name)."""
    from qlens_jax.lens.lens_spec import lens_name
    from qlens_jax.lens.validation import LensRequestError

    given = LENSES if text.strip() == "all" else tuple(s.strip() for s in text.split(",") if s.strip())
    if not given:
        raise InputError(f"--lenses {text!r}: no lens; choose from {', '.join(LENSES)} or 'all'")
    try:
        lenses = tuple(lens_name(lens) for lens in given)
    except LensRequestError as err:
        raise InputError(f"--lenses {text!r}: {err}") from None
    if len(set(lenses)) != len(lenses):
        raise InputError(f"--lenses {text!r}: a lens is named twice")
    return lenses


def _feature_file(path: Path):
    """Ids from a .npy / .json / .txt file, or reference records from a pickle."""
    if is_feature_sample(path):
        return read_feature_sample(path)
    try:
        if path.suffix == ".npy":
            ids = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            ids = np.asarray(json.loads(path.read_text()))
        else:
            ids = np.asarray(path.read_text().replace(",", " ").split(), np.int64)
    except (ValueError, OverflowError, OSError) as err:
        raise InputError(f"--features {path}: cannot read feature ids ({err})") from None
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"--features {path}: expected a flat list of integer feature ids")
    return np.unique(ids.astype(np.int64))


def parse_features(text: str | None):
    """None (all), an id array for every dictionary, or reference `FeatureRef`s."""
    if text is None or text.strip() == "all":
        return None
    path = Path(text).expanduser()
    if path.is_file():
        return _feature_file(path)
    if is_feature_sample(path) or path.suffix in (".npy", ".json", ".txt"):
        raise InputError(f"--features {text}: no such file")
    return parse_ranges(text, "--features")


def check_sample(sample: SampleSpec) -> None:
    """Checks of the sample options that need no file contents."""
    sizes = (
        ("--num-samples", sample.num_samples),
        ("--max-length", sample.max_length),
        ("--corpus-max-tokens", sample.corpus_max_tokens),
    )
    for name, value in sizes:
        if value is not None and value < 1:
            raise InputError(f"{name} {value}: must be at least 1")
    if (sample.corpus is None) == (sample.token_sample is None):
        raise InputError("give exactly one of --corpus and --token-sample")
    for option, value in (("--corpus", sample.corpus), ("--token-sample", sample.token_sample)):
        if value is not None and not Path(value).expanduser().exists():
            raise InputError(f"{option} {value}: no such file or directory")
    check_encoding(sample.corpus_encoding)


def check_sources(model: ModelSource, dictionaries: DictionarySources) -> None:
    """Local sources exist; the others look like Hub ids."""
    check_source("--model", model.model)
    if model.tokenizer:
        check_source("--tokenizer", model.tokenizer)
    for source in dictionaries.sources:
        check_dictionary_source(source)


def check_job(job: SignaturesJob, writes_output: bool = True) -> None:
    """Checks that need no file contents (`writes_output`: this process writes --out)."""
    options, lens, execution = job.options, job.options.lens, job.options.execution
    for name, value in (("--k", lens.k), ("--shard-size", options.shard_size)):
        if value is not None and value < 1:
            raise InputError(f"{name} {value}: must be at least 1")
    if lens.dtype not in DTYPES:
        raise InputError(f"--dtype {lens.dtype!r}: choose from {', '.join(DTYPES)}")
    if lens.precision not in PRECISIONS:
        raise InputError(f"--precision {lens.precision!r}: choose from {', '.join(PRECISIONS)}")
    if execution.path not in PATHS:
        raise InputError(f"--path {execution.path!r}: choose from {', '.join(PATHS)}")
    check_sample(job.sample)
    if execution.memory_budget_gb is not None and execution.memory_budget_gb <= 0:
        raise InputError(f"--memory-budget-gb {execution.memory_budget_gb}: must be positive")
    check_sources(job.model, job.dictionaries)
    if options.mesh is not None:
        parse_mesh(options.mesh)
    if not options.distributed:
        for option, value in (
            ("--coordinator", options.coordinator),
            ("--num-processes", options.num_processes),
            ("--process-id", options.process_id),
        ):
            if value is not None:
                raise InputError(f"{option} {value}: only used with --distributed")
    if writes_output:
        check_writable(Path(options.out))


def parse_mesh(text: str) -> tuple[int, int]:
    """`"4,2"` -> (4, 2): devices on the mesh's `data` and `feature` axes."""
    parts = text.replace("x", ",").split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise InputError(f"--mesh {text!r}: expected DATA,FEATURE device counts, e.g. 8,1 or 4,2")
    return int(parts[0]), int(parts[1])


def job_mesh(options: JobOptions, model):
    """The device mesh of the job: --mesh, else every device on `data`; None on one device."""
    import jax

    from qlens_jax import sharding

    if options.mesh is None:
        if options.weights == "sharded":
            raise InputError(
                "--weights sharded: give a --mesh with a feature axis to split the weights over, e.g. --mesh 1,8"
            )
        return sharding.make_mesh() if jax.device_count() > 1 else None
    data, feature = parse_mesh(options.mesh)
    if options.weights == "sharded" and feature == 1:
        raise InputError(
            f"--weights sharded: the mesh {options.mesh} has no feature axis to split the weights over; "
            "use e.g. --mesh 1,N"
        )
    if data * feature != jax.device_count():
        raise InputError(
            f"--mesh {options.mesh}: needs {data * feature} devices; this job has {jax.device_count()} "
            f"({jax.process_count()} process(es) x {jax.local_device_count()} local)"
        )
    if model.config.d_model % feature:
        raise InputError(
            f"--mesh {options.mesh}: the feature axis ({feature}) must divide d_model ({model.config.d_model})"
        )
    return sharding.make_mesh((data, feature))


def check_source(option: str, source: str) -> None:
    """A local path must exist; anything else must look like a Hub id (org/name[/path])."""
    from converters.dictionaries.hub import looks_like_hub_id

    path = Path(source).expanduser()
    if path.exists():
        return
    if path.is_absolute() or source.startswith((".", "~")) or not looks_like_hub_id(source):
        raise InputError(f"{option} {source}: no such file or directory (and not a Hugging Face Hub id org/name)")


def check_dictionary_source(source: str) -> None:
    """A registry id `RELEASE:SAE_ID` must name a dictionary of sae_lens's registry (which
    must be installed); anything else is checked as a path or Hub id."""
    from converters.dictionaries import registry
    from converters.dictionaries.neurons import PREFIX, is_neurons_source
    from qlens_jax.dictionaries import DictionaryError

    if is_neurons_source(source):
        if source != PREFIX:
            parse_ranges(source[len(PREFIX) + 1 :], f"--dictionary {PREFIX}:")
        return
    parsed = registry.parse(source)
    if parsed is None:
        check_source("--dictionary", source)
        return
    try:
        registry.lookup(*parsed)
    except DictionaryError as err:
        raise InputError(f"--dictionary {source}: {err}") from None


def _tokenizer_special_id(name: str, tokenizer, model_dir: Path) -> int | None:
    """The id of the tokenizer's special token `name` ("bos_token", "eos_token", "pad_token") as
    Hugging Face's tokenizer loading finds it: tokenizer_config.json, then special_tokens_map.json."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = model_dir / file
        if not path.is_file():
            continue
        token = json.loads(path.read_text()).get(name)
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token)
    return None


def bos_token_id(given: int | None, tokenizer, model_dir: Path) -> int | None:
    """`given` (--bos-id), else the tokenizer's BOS token, else config.json's bos_token_id (None if none)."""
    if given is not None:
        return given
    found = _tokenizer_special_id("bos_token", tokenizer, model_dir)
    if found is not None:
        return found
    config = model_dir / "config.json"
    if config.is_file():
        bos = json.loads(config.read_text()).get("bos_token_id")
        if isinstance(bos, int):
            return bos
    return None


def eos_and_pad_ids(tokenizer, model_dir: Path) -> tuple[int | None, int | None]:
    """The tokenizer's EOS and pad token ids (None where it names none), as TransformerLens's
    `tokenize_and_concatenate` reads them from a Hugging Face tokenizer."""
    return _tokenizer_special_id("eos_token", tokenizer, model_dir), _tokenizer_special_id(
        "pad_token", tokenizer, model_dir
    )


def load_model_source(source: ModelSource):
    """(model, its local folder, tokenizer) from --model / --tokenizer; `InputError` naming the option."""
    import converters
    from converters.errors import ConversionError
    from converters.hub import resolve_local
    from converters.models import MODEL_FILES

    try:
        model_dir = resolve_local(source.model, MODEL_FILES)
        model = converters.load_model(model_dir)
    except (ConversionError, ValueError, OSError) as err:
        raise InputError(f"--model {source.model}: {err}") from None
    tokenizer_source = source.tokenizer or model_dir
    try:
        tokenizer = converters.load_tokenizer(tokenizer_source)
    except (ConversionError, OSError) as err:
        raise InputError(f"--tokenizer {tokenizer_source}: {err}") from None
    return model, model_dir, tokenizer


def vocab_strings(tokenizer, vocab_size: int) -> np.ndarray:
    """Display string of every token id (object array of `vocab_size`)."""
    from qlens_jax.tokens import token_strings

    strings = token_strings(tokenizer)[:vocab_size]
    strings += [f"<id {i}>" for i in range(len(strings), vocab_size)]  # rows the tokenizer never emits
    vocab = np.empty(vocab_size, object)
    vocab[:] = strings
    return vocab


def load_dictionary_sources(sources: DictionarySources, model) -> list:
    """Every --dictionary (folders of several expanded) checked against `model`, filtered by --layers."""
    import converters
    from converters.dictionaries.neurons import PREFIX, is_neurons_source, neuron_dictionaries
    from converters.errors import ConversionError
    from qlens_jax.dictionaries import DictionaryError, DictionarySet

    loaded = []
    for source in sources.sources:
        try:
            if is_neurons_source(source):
                layers = None if source == PREFIX else parse_ranges(source[len(PREFIX) + 1 :], "--dictionary").tolist()
                loaded.extend(neuron_dictionaries(model, layers))
                continue
            loaded.extend(converters.load_dictionaries([source], model))
        except (DictionaryError, ConversionError, OSError) as err:
            raise InputError(f"--dictionary {source}: {err}") from None
    try:
        DictionarySet(loaded, model)  # each (name, layer) once
    except DictionaryError as err:
        raise InputError(f"--dictionary: {err}") from None
    if sources.layers is not None:
        layers = set(parse_ranges(sources.layers, "--layers").tolist())
        missing = sorted(layers - {d.layer for d in loaded})
        if missing:
            raise InputError(
                f"--layers {sources.layers}: no dictionary at layer(s) {missing} (have {sorted({d.layer for d in loaded})})"
            )
        loaded = [d for d in loaded if d.layer in layers]
    return loaded


def select_features(spec, dictionaries: list, layers_given: bool, option_text: str | None):
    """Per dictionary: sorted feature ids and reference feature strings."""
    features, strings = [], [{} for _ in dictionaries]
    if spec is None or isinstance(spec, np.ndarray):
        for d in dictionaries:
            ids = np.arange(d.d_sae, dtype=np.int64) if spec is None else spec
            bad = ids[(ids < 0) | (ids >= d.d_sae)]
            if bad.size:
                raise InputError(
                    f"--features {option_text}: feature {int(bad[0])} is out of range for {d.name!r} "
                    f"(layer {d.layer}, {d.d_sae} features)"
                )
            features.append(ids)
        return features, strings
    chosen = [[] for _ in dictionaries]
    for ref in spec:
        at_layer = [i for i, d in enumerate(dictionaries) if d.layer == ref.layer]
        named = [i for i in at_layer if dictionaries[i].name == ref.name]
        if not at_layer:
            if layers_given:
                continue
            raise InputError(
                f"--features {option_text}: has features at layer {ref.layer}, but no --dictionary is at that layer"
            )
        if len(named) != 1 and len(at_layer) != 1:
            raise InputError(
                f"--features {option_text}: {ref.name or 'a feature'} at layer {ref.layer} matches several dictionaries; "
                "name them like the sample ({type}-{size})"
            )
        index = named[0] if len(named) == 1 else at_layer[0]
        d = dictionaries[index]
        if not 0 <= ref.feature < d.d_sae:
            raise InputError(
                f"--features {option_text}: feature {ref.feature} is out of range for {d.name!r} "
                f"(layer {d.layer}, {d.d_sae} features)"
            )
        chosen[index].append(ref.feature)
        if ref.feature_str:
            strings[index][ref.feature] = ref.feature_str
    features = [np.unique(np.asarray(ids, np.int64)) for ids in chosen]
    return features, strings


def draw_sample(sample: SampleSpec, tokenizer, model, model_dir: Path, quiet: bool):
    """(tokens, mask, description): --token-sample as given, or seeded windows of --corpus."""
    vocab_size = model.config.vocab_size
    if sample.token_sample is not None:
        if sample.num_samples is not None or sample.max_length is not None:
            raise InputError("--token-sample fixes the sample; drop --num-samples / --max-length")
        tokens, mask = load_token_sample(sample.token_sample, vocab_size)
        description = {"token_sample": str(Path(sample.token_sample).absolute())}
    else:
        corpus = tokenize_corpus(
            Path(sample.corpus).expanduser(),
            tokenizer,
            fmt=sample.corpus_format,
            text_field=sample.text_field,
            split=sample.corpus_split,
            max_tokens=sample.corpus_max_tokens,
            vocab_size=vocab_size,
            quiet=quiet,
            encoding=sample.corpus_encoding,
        )
        if corpus.n_tokens and corpus.ids.max() >= vocab_size:
            raise CorpusError(
                f"--corpus {sample.corpus}: the tokenizer gives ids up to {corpus.ids.max()}, "
                f"beyond the model's vocabulary ({vocab_size})"
            )
        num_samples, max_length = sample.num_samples or 1024, sample.max_length or 32
        bos = bos_token_id(sample.bos_id, tokenizer, model_dir) if sample.prepend_bos else None
        if sample.windows == "paper":
            if sample.prepend_bos or sample.corpus_max_tokens is not None:
                raise CorpusError(
                    "--windows paper builds the authors' sample (no BOS, the whole corpus): "
                    "drop --prepend-bos / --corpus-max-tokens"
                )
            tokens, mask = paper_sample(
                corpus, num_samples, max_length, sample.seed, *eos_and_pad_ids(tokenizer, model_dir)
            )
        else:
            tokens, mask = sample_windows(
                corpus,
                num_samples,
                max_length,
                sample.seed,
                prepend_bos=sample.prepend_bos,
                bos_id=bos,
                windows=sample.windows,
            )
        description = {
            "corpus": str(Path(sample.corpus).absolute()),
            "format": corpus.format,
            "documents": corpus.n_documents,
            "corpus_tokens": corpus.n_tokens,
            "num_samples": num_samples,
            "max_length": max_length,
            "seed": sample.seed,
            "prepend_bos": sample.prepend_bos,
            "bos_id": bos,
            "windows": sample.windows,
        }
        if corpus.format in ("text", "jsonl"):
            description["encoding"] = sample.corpus_encoding
    config = model.config
    if config.positional == "learned" and tokens.shape[1] > config.max_positions:
        raise InputError(f"--max-length {tokens.shape[1]}: the model has only {config.max_positions} positions")
    try:
        check_tokens(model, tokens, mask)
    except LensRequestError as err:
        raise InputError(f"{sample.source_option}: the sample does not fit the model: {err}") from None
    return tokens, mask, description


def prepare(job: SignaturesJob, quiet: bool, writes_output: bool = True) -> Inputs:
    """Check options, load everything, draw the sample; `InputError` on any bad input.
    (`writes_output=False`: a process of a multi-process job that leaves --out to process 0.)"""
    check_job(job, writes_output)
    features_text = job.options.features
    features_spec = parse_features(features_text)
    model, model_dir, tokenizer = load_model_source(job.model)
    dictionaries = load_dictionary_sources(job.dictionaries, model)
    features, strings = select_features(features_spec, dictionaries, job.dictionaries.layers is not None, features_text)
    if sum(len(f) for f in features) == 0:
        raise InputError(f"--features {features_text}: selects no feature of the given dictionaries")
    tokens, mask, sample = draw_sample(job.sample, tokenizer, model, model_dir, quiet)
    return Inputs(
        model=model,
        model_dir=Path(model_dir),
        tokenizer=tokenizer,
        vocab=vocab_strings(tokenizer, model.config.vocab_size),
        dictionaries=dictionaries,
        features=features,
        feature_strs=strings,
        tokens=tokens,
        mask=mask,
        description={"sample": sample},
    )
