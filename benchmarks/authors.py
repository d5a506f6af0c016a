"""The authors' implementation of Query Lens (HYU-NLP/query-lens) as a benchmark contestant.

Their code is never copied into this project: the user passes the path of a checkout
(`--authors-repo DIR`) and it is imported from there, in a process of its own started with
the interpreter of its own environment (`--authors-python`, e.g. a venv with
`pip install -e ".[authors]"`). What both sides share is written to a folder first, by this
project's environment:

- the weights: the benchmark's Hugging Face model (GPT-2, Qwen3, or Gemma-3 at a published shape:
  `model_folder_name`), `save_pretrained` (plus a word-level
  tokenizer over its ids, which TransformerLens needs for `to_str_tokens`), loaded into
  TransformerLens's `HookedSAETransformer` from that folder without folding or centring
  (what `from_pretrained_no_processing` does for a registered name);
- the token sample (`tokens.npy`, no padding);
- one SAE per benchmarked layer on `blocks.{layer}.hook_resid_post`, written by sae_lens
  (`StandardSAE.save_model`) with the benchmark's synthetic weights, loaded by
  `SAE.load_from_disk`.

In the contestant's process each side runs as the authors' `analysis/run.py` runs one
baseline (`query_lens_value` / `query_lens_key`, the `gpt2-small.yaml` options:
`submodule=both`, layer-norm Jacobians on, `accumulation_steps=1`, `k=25`; float32, and for a
bfloat16 run float32 then bfloat16, model and SAEs in that dtype): the
residual cache is built once (`ResidCache` / `VJPResidCache`, timed and reported apart),
then `analyze_feature` is called per feature, and each call is timed. `pad_token_id=-1`
(their config key) says that no token id is padding: the sample has none, and leaving it
unset would take the tokenizer's end-of-text id for padding.

    python -m benchmarks.authors REQUEST.json RESULT.json     # what the benchmarks start
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import builders, common, machine, sizes

REQUIRED_FILES = ("util.py", "analysis/common.py", "analysis/jvp.py", "analysis/vjp.py")
SIDES = {"query_lens_value": "value", "query_lens_key": "key"}
K = 25


def check_repo(repo: str | Path) -> Path:
    """The checkout's path, refused (SystemExit naming it) unless it holds the authors' modules."""
    path = Path(repo).expanduser().resolve()
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise SystemExit(f"--authors-repo {repo}: not a checkout of HYU-NLP/query-lens (missing {', '.join(missing)})")
    return path


def check_python(python: str) -> str:
    """The contestant's interpreter, refused unless it exists."""
    if not Path(python).is_file():
        raise SystemExit(f"--authors-python {python}: no such interpreter")
    return python


def repo_commit(repo: Path) -> str | None:
    """The checkout's commit; None for a folder that is not the top of a git checkout (an
    extracted archive), so that an enclosing repository's commit is never reported."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel") or "/nonexistent").resolve() != repo.resolve():
            return None
        return git("rev-parse", "HEAD") or None
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# Shared inputs (written in this project's environment)
# ---------------------------------------------------------------------------------------------


def save_word_tokenizer(vocab: int, folder: Path) -> None:
    """A word-level tokenizer `t0 .. t{vocab-1}` (ids = token ids; no merges) in `folder`."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    last = f"t{vocab - 1}"
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="t0", eos_token=last, bos_token=last
    ).save_pretrained(folder)


def make_sae(W_enc, W_dec, layer: int):
    """A sae_lens StandardSAE on `blocks.{layer}.hook_resid_post` with these weights (copied)."""
    import numpy as np
    import sae_lens
    import torch
    from sae_lens.saes.sae import SAEMetadata

    d, n = W_enc.shape
    config = sae_lens.StandardSAEConfig(
        d_in=d,
        d_sae=n,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(model_name="benchmark", hook_name=f"blocks.{layer}.hook_resid_post"),
    )
    sae = sae_lens.StandardSAE(config)
    with torch.no_grad():
        sae.W_enc.copy_(torch.from_numpy(np.ascontiguousarray(W_enc)))
        sae.W_dec.copy_(torch.from_numpy(np.ascontiguousarray(W_dec)))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


# What TransformerLens can build from a local folder. GPT-2 and Qwen3 it converts from the
# folder's config, at any shape. Gemma-3 it builds only from its own table of the published
# configurations, chosen by the model's name (so the folder is named as the model:
# `google/gemma-3-270m`, `google/gemma-3-1b-pt`, and read with that relative path).
GEMMA3_NAMES = {"270m": (sizes.GEMMA3_270M, "google/gemma-3-270m"), "1b": (sizes.GEMMA3_1B, "google/gemma-3-1b-pt")}
WHY_NOT = {
    "gemma3": "TransformerLens takes Gemma-3 shapes from its own table of the published models, by name: only "
    "Gemma-3-270M and Gemma-3-1B",
    "llama": "loading Llama from a local folder into TransformerLens is not set up here",
}


def model_folder_name(spec: dict) -> str | None:
    """The folder name TransformerLens must read `spec`'s model from ("model" where any name
    does), or None when it cannot load that shape."""
    family = spec.get("family", "gpt2")
    if family in ("gpt2", "qwen3"):
        return "model"
    if family == "gemma3":
        return next((name for shape, name in GEMMA3_NAMES.values() if shape == spec), None)
    return None


def loads(spec: dict) -> bool:
    """Whether the authors' contestant can run on models of shape `spec`."""
    return model_folder_name(spec) is not None


def write_inputs(cfg: dict, directory: str) -> dict:
    """Model folder, token sample and per-layer SAE folders for `cfg`, in `directory`."""
    import numpy as np

    root = Path(directory)
    hf = builders.hf_model(cfg["hf"], cfg["seed"])
    if cfg["hf"].get("family", "gpt2") == "gpt2":
        hf.config.n_ctx = hf.config.n_positions  # TransformerLens reads GPT-2's context length from n_ctx
    model_name = model_folder_name(cfg["hf"])
    model_dir = root / model_name
    hf.save_pretrained(model_dir)
    save_word_tokenizer(hf.config.vocab_size, model_dir)
    tokens, _ = builders.token_sample(hf.config.vocab_size, cfg["batch"], cfg["seq"], cfg["seed"])
    np.save(root / "tokens.npy", tokens)
    saes = {}
    for layer in cfg["layers"]:
        # the numpy weights are freed once copied: a million-feature SAE is held twice at most
        sae = make_sae(*builders.dictionary_arrays(hf.config.hidden_size, cfg["features"], layer, cfg["seed"]), layer)
        saes[str(layer)] = str(root / f"sae-{layer}")
        sae.save_model(saes[str(layer)])
        del sae
    return {"root": str(root), "model": model_name, "tokens": str(root / "tokens.npy"), "saes": saes}


# ---------------------------------------------------------------------------------------------
# The contestant's process (the authors' environment)
# ---------------------------------------------------------------------------------------------


def load_transformer_lens(folder: str, device: str, dtype: str = "float32"):
    """`HookedSAETransformer` from a local Hugging Face folder, no folding, no centring, in `dtype`."""
    import torch
    import transformer_lens.loading_from_pretrained as loading
    from sae_lens import HookedSAETransformer

    dtype = getattr(torch, dtype)
    cfg = loading.get_pretrained_model_config(folder, fold_ln=False, device=device, dtype=dtype)
    state = loading.get_pretrained_state_dict(folder, cfg, None, dtype=dtype)
    model = HookedSAETransformer(cfg, None, move_to_device=False)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    model.eval()
    torch.set_grad_enabled(False)  # as the authors' load_model
    return model


def run_contestant_process(request: dict) -> dict:
    """Time the authors' `analyze_feature` per feature and side (see the module docstring)."""
    import numpy as np
    import torch

    # `analysis` and `util` are the authors' checkout, put on the path here
    sys.path.insert(0, request["repo"])
    from analysis.common import ResidCache, VJPResidCache  # pyright: ignore[reportMissingImports]
    from analysis.jvp import analyze_feature as value_feature  # pyright: ignore[reportMissingImports]
    from analysis.vjp import analyze_feature as key_feature  # pyright: ignore[reportMissingImports]
    from sae_lens import SAE
    from util import Feature  # pyright: ignore[reportMissingImports]

    device = "cuda" if torch.cuda.is_available() else "cpu"
    os.chdir(request["root"])  # the model folder is read by its name, relative to the inputs' folder
    pile_sample = torch.as_tensor(np.load(request["tokens"]), dtype=torch.long, device=device)
    out = {"device": device, "torch_threads": torch.get_num_threads(), "cache_seconds": {}, "results": {}}
    timed_dtype = request.get("dtype", "float32")
    # float32 first: a bfloat16 run also gives float32 lists (agreement check and overlap)
    for dtype in ("float32",) if timed_dtype == "float32" else ("float32", timed_dtype):
        start = time.perf_counter()
        model = load_transformer_lens(request["model"], device, dtype)
        out.setdefault("load_seconds", time.perf_counter() - start)
        out.setdefault("rss_setup_gb", round(machine.current_rss_gb(), 3))
        saes = {
            layer: SAE.load_from_disk(path, device=device).to(getattr(torch, dtype))
            for layer, path in request["saes"].items()
        }
        results = out["results"] if dtype == timed_dtype else out.setdefault("float32_results", {})
        for lens in request["lenses"]:
            side = SIDES[lens]
            build = VJPResidCache if side == "key" else ResidCache
            extra = {"cache_embed": True} if side == "key" else {}
            start = time.perf_counter()
            cache = build.build_for_local_pile_sample(
                model=model,
                local_pile_sample=pile_sample,
                accumulation_steps=1,
                module_type="all",
                return_device=device,
                pad_token_id=-1,
                use_layer_norm=True,
                **extra,
            )
            if dtype == timed_dtype:
                out["cache_seconds"][side] = time.perf_counter() - start
            for layer in request["layers"]:
                sae = saes[str(layer)]
                rows = []
                for feature in request["picks"]:
                    ftr = Feature(model_id="benchmark", feature=int(feature), layer=int(layer), type="sae")
                    common_args = dict(
                        model=model,
                        f=ftr,
                        sae=sae,
                        pile_sample=pile_sample,
                        rank=0,
                        world_size=1,
                        stream_transition="full",
                        submodule="both",
                        k=K,
                        accumulation_steps=1,
                        resid_cache=cache,
                    )
                    start = time.perf_counter()
                    if side == "value":
                        result = value_feature(**common_args, use_unembed_layer_norm=True, use_jvp_layer_norm=True)
                    else:
                        result = key_feature(**common_args, use_vjp_layer_norm=True)
                    seconds = time.perf_counter() - start
                    rows.append(
                        {
                            "feature": int(feature),
                            "seconds": seconds,
                            "top_ids": [int(i) for i in result["top_ids"]],
                            "bottom_ids": [int(i) for i in result["bottom_ids"]],
                        }
                    )
                results[f"{lens}/{layer}"] = rows
            del cache
        del model, saes
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return out


# ---------------------------------------------------------------------------------------------
# Launching it
# ---------------------------------------------------------------------------------------------


def run_contestant(cfg: dict, repo: Path, python: str, directory: str | Path, timeout: float | None = None) -> dict:
    """Write the shared inputs (in an isolated process of this environment), then run the
    authors' code on them with `python` in a process of its own; its result (as
    `run_contestant_process`) plus the contestant's description."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inputs = common.run_isolated(write_inputs, cfg=cfg, directory=str(directory))
    request = {
        "repo": str(repo),
        "root": inputs["root"],
        "model": inputs["model"],
        "tokens": inputs["tokens"],
        "saes": inputs["saes"],
        "dtype": cfg.get("dtype", "float32"),
        "lenses": [lens for lens in cfg["lenses"] if lens in SIDES],
        "layers": list(cfg["layers"]),
        "picks": list(cfg["picks"]),
    }
    (directory / "request.json").write_text(json.dumps(request, indent=1))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(common.REPO), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [python, "-m", "benchmarks.authors", str(directory / "request.json"), str(directory / "result.json")],
        cwd=common.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the authors' contestant failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads((directory / "result.json").read_text())
    result["process_wall_s"] = round(time.perf_counter() - start, 3)
    result["contestant"] = recorded(describe(repo, python))
    return result


def describe(repo: Path, python: str) -> dict:
    """What the JSON says about the authors' contestant."""
    commit = repo_commit(repo)
    return {
        "name": "authors",
        "label": f"the authors' code ({repo.name}{f' at {commit[:7]}' if commit else ''})",
        "repo": str(repo),
        "commit": commit,
        "python": python,
    }


def recorded(contestant: dict) -> dict:
    """The contestant as a results file records it: its paths as `common.portable_path` names them."""
    return contestant | {key: common.portable_path(contestant[key]) for key in ("repo", "python") if key in contestant}


REFERENCE = {
    "name": "reference_torch",
    "label": "benchmarks/reference_torch.py (a re-implementation, not the authors' code)",
}


def main(argv=None) -> int:
    request_path, result_path = (argv or sys.argv[1:])[:2]
    result = run_contestant_process(json.loads(Path(request_path).read_text()))
    Path(result_path).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
