"""A tiny world for the CLI tests, written to disk as a user would have it: a saved GPT-2-style
model with a BPE tokenizer trained here (tokenizer.json in the model folder), three sae_lens
dictionary folders (cfg.json + sae_weights.safetensors: two SAEs and a transcoder) and text corpora."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tiny_models import build_hf_model, save_hf_model

N_FEATURES = 40
WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this be or has had "
    "not but one their they new first after other two its been who more also when up all into time year "
    "river city music house night light water stone paper market garden winter summer school church ship "
    "north south east west king queen army court field train road bridge letter number color"
).split()


@dataclass(frozen=True)
class World:
    root: Path
    model: Path
    dictionaries: tuple[Path, ...]
    corpus_text: Path
    corpus_jsonl: Path
    vocab_size: int
    d_model: int


def corpus_documents(n_documents: int = 40, words_per_document: int = 60, seed: int = 0) -> list[str]:
    """Seeded pseudo-English documents with some structure (words repeat in sentence patterns)."""
    rng = np.random.default_rng(seed)
    documents = []
    for _ in range(n_documents):
        words = rng.choice(WORDS, size=words_per_document, p=_zipf(len(WORDS)))
        sentences = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, len(words), 12)]
        documents.append(" ".join(sentences))
    return documents


def _zipf(n: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1)
    return p / p.sum()


def train_tokenizer(documents: list[str], vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer)
    return tokenizer


def write_saelens(
    path: Path,
    d_model: int,
    *,
    hook: str,
    seed: int,
    hook_out: str | None = None,
    d_sae: int = N_FEATURES,
    reshape_activations: str | None = None,
) -> Path:
    """A sae_lens v6 folder (an SAE, or a transcoder when `hook_out` is given). `d_model` is the
    width of the hook (`n_heads x head_dim` for `attn.hook_z`); `reshape_activations="hook_z"`
    is how sae_lens marks an SAE that flattens the heads of `hook_z`."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = {
        "W_enc": rng.normal(size=(d_model, d_sae)),
        "W_dec": rng.normal(size=(d_sae, d_model)),
        "b_enc": rng.normal(size=d_sae),
        "b_dec": rng.normal(size=d_model),
    }
    save_file({k: v.astype(np.float32) for k, v in weights.items()}, str(path / "sae_weights.safetensors"))
    metadata = {"sae_lens_version": "6.54.12", "hook_name": hook}
    config = {
        "architecture": "standard",
        "d_in": d_model,
        "d_sae": d_sae,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
    }
    if reshape_activations is not None:
        config["reshape_activations"] = reshape_activations
    if hook_out is not None:
        metadata["hook_name_out"] = hook_out
        config.update(architecture="transcoder", d_out=d_model, apply_b_dec_to_input=False)
    (path / "cfg.json").write_text(json.dumps({**config, "metadata": metadata}))
    return path


def world_at(root: Path) -> World:
    """The world `build_world(root)` wrote (same layout), without building it again."""
    config = json.loads((root / "model" / "config.json").read_text())
    return World(
        root,
        root / "model",
        (root / "sae-l0", root / "sae-l2", root / "tc-l1"),
        root / "corpus.txt",
        root / "corpus.jsonl",
        config["vocab_size"],
        config["n_embd"],
    )


def build_world(root: Path) -> World:
    root.mkdir(parents=True, exist_ok=True)
    documents = corpus_documents()
    tokenizer = train_tokenizer(documents)
    vocab_size = tokenizer.get_vocab_size()
    model_dir = save_hf_model(build_hf_model("gpt2", seed=0, vocab_size=vocab_size), root / "model")
    tokenizer.save(str(model_dir / "tokenizer.json"))
    d_model = 48
    dictionaries = (
        write_saelens(root / "sae-l0", d_model, hook="blocks.0.hook_resid_post", seed=1),
        write_saelens(root / "sae-l2", d_model, hook="blocks.2.hook_resid_pre", seed=2),
        write_saelens(
            root / "tc-l1", d_model, hook="blocks.1.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out", seed=3
        ),
    )
    corpus_text = root / "corpus.txt"
    corpus_text.write_text("\n\n".join(documents))
    corpus_jsonl = root / "corpus.jsonl"
    corpus_jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(documents)))
    return World(root, model_dir, dictionaries, corpus_text, corpus_jsonl, vocab_size, d_model)


@dataclass(frozen=True)
class ModuleWorld:
    """A tiny Gemma-3 model (post-norms; `z` is n_heads x head_dim = 64 wide, d_model 48) with the
    world's tokenizer, and sae_lens folders on module outputs mixed with a residual SAE."""

    root: Path
    model: Path
    dictionaries: tuple[Path, ...]
    corpus_text: Path
    vocab_size: int
    d_model: int
    d_z: int


# (folder, hook, width key, reshape_activations): a residual SAE, then one SAE per module output.
MODULE_DICTIONARIES = (
    ("sae-resid-l1", "blocks.1.hook_resid_post", "d_model", None),
    ("sae-attn-out-l1", "blocks.1.hook_attn_out", "d_model", None),
    ("sae-z-l2", "blocks.2.attn.hook_z", "d_z", "hook_z"),
    ("sae-mlp-out-l0", "blocks.0.hook_mlp_out", "d_model", None),
)
MODULE_ARCHITECTURE = "gemma3-sliding"


def module_world_at(root: Path) -> ModuleWorld:
    """The world `build_module_world(root)` wrote, without building it again."""
    config = json.loads((root / "model" / "config.json").read_text())
    return ModuleWorld(
        root,
        root / "model",
        tuple(root / folder for folder, *_ in MODULE_DICTIONARIES),
        root / "corpus.txt",
        config["vocab_size"],
        config["hidden_size"],
        config["num_attention_heads"] * config["head_dim"],
    )


def build_module_world(root: Path) -> ModuleWorld:
    root.mkdir(parents=True, exist_ok=True)
    documents = corpus_documents()
    tokenizer = train_tokenizer(documents)
    model_dir = save_hf_model(
        build_hf_model(MODULE_ARCHITECTURE, seed=0, vocab_size=tokenizer.get_vocab_size()), root / "model"
    )
    tokenizer.save(str(model_dir / "tokenizer.json"))
    (root / "corpus.txt").write_text("\n\n".join(documents))
    world = module_world_at(root)
    assert world.d_z != world.d_model  # a width mix-up between z and the residual must show
    widths = {"d_model": world.d_model, "d_z": world.d_z}
    for seed, (folder, hook, width, reshape) in enumerate(MODULE_DICTIONARIES, start=11):
        write_saelens(root / folder, widths[width], hook=hook, seed=seed, reshape_activations=reshape)
    return world


def base_args(world: World | ModuleWorld, out: Path, *extra: str) -> list[str]:
    """`qlens signatures` arguments on the tiny world (small sample, quiet)."""
    args = [
        "signatures",
        "--model",
        str(world.model),
        "--out",
        str(out),
        "--corpus",
        str(world.corpus_text),
        "--num-samples",
        "6",
        "--max-length",
        "10",
        "--memory-budget-gb",
        "1",
        "--quiet",
    ]
    for d in world.dictionaries:
        args += ["--dictionary", str(d)]
    return args + list(extra)


def drop(args: list[str], *options: str) -> list[str]:
    """`args` without these options and their values."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in options:
            skip = True
        else:
            out.append(a)
    return out


def shared_temp(tmp_path_factory) -> Path:
    """The session's temporary folder that every pytest-xdist worker shares."""
    import os

    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_module_world(tmp_path_factory) -> ModuleWorld:
    """The module-output world, built once per session (as `shared_world`)."""
    from filelock import FileLock

    shared = shared_temp(tmp_path_factory)
    root, done = shared / "module-world", shared / "module-world.done"
    with FileLock(str(shared / "module-world.lock")):
        if not done.exists():
            build_module_world(root)
            done.touch()
    return module_world_at(root)


def shared_world(tmp_path_factory) -> World:
    """The world, built once per session by whichever worker gets there first."""
    from filelock import FileLock

    shared = shared_temp(tmp_path_factory)
    root, done = shared / "cli-world", shared / "cli-world.done"
    with FileLock(str(shared / "cli-world.lock")):
        if not done.exists():
            build_world(root)
            done.touch()
    return world_at(root)


# The module-output run that the CLI and serve tests share: every lens (Logit Lens's key side is
# skipped for the z dictionary), dense path, no self-check (the kernel tests cover it).
MODULE_RUN_OPTIONS = ("--lenses", "all", "--no-self-check")


def shared_module_run(tmp_path_factory, world: ModuleWorld) -> tuple[Path, list[str], str]:
    """`qlens signatures` over the module-output world, run once per session: (DIR, the
    command's arguments, what the first run wrote to stderr)."""
    import contextlib
    import io

    from filelock import FileLock

    shared = shared_temp(tmp_path_factory)
    out, log = shared / "module-run", shared / "module-run.stderr"
    args = base_args(world, out, *MODULE_RUN_OPTIONS)
    with FileLock(str(shared / "module-run.lock")):
        if not (out / "signatures.parquet").exists():
            from qlens_jax.cli import main

            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                assert main(args) == 0, stderr.getvalue()
            log.write_text(stderr.getvalue())
    return out, args, log.read_text()
