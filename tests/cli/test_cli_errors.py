"""Bad input: exit code 2, one line naming the input, no traceback, and no work done (the
output folder is not even created)."""

import json
import shutil

import numpy as np
import pytest

from clt_files import write_clt_folder
from qlens_jax.cli import main
from qlens_jax.errors import InputError
from qlens_jax.io.rundir import RunDir
from world import base_args, drop, write_saelens


def _replace(args: list[str], option: str, value: str) -> list[str]:
    i = args.index(option)
    return args[: i + 1] + [value] + args[i + 2 :]


def _wide_dictionary(world, tmp_path):
    return write_saelens(tmp_path / "wide", 32, hook="blocks.0.hook_resid_post", seed=5)


def _deep_dictionary(world, tmp_path):
    return write_saelens(tmp_path / "deep", world.d_model, hook="blocks.7.hook_resid_post", seed=5)


def _short_clt(world, tmp_path):
    return write_clt_folder(tmp_path / "short-clt", 2, world.d_model, 8)


def _narrow_clt(world, tmp_path):
    return write_clt_folder(tmp_path / "narrow-clt", 3, world.d_model - 8, 8)


def _bad_padding_sample(world, tmp_path):
    path = tmp_path / "sample.npy"
    np.save(path, np.asarray([[5, 6, -1, 7], [5, 6, 7, 8]]))
    return path


def _jsonl_without_text(world, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text field"}) + "\n")
    return path


def _blank_corpus(world, tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\t\n" * 2000)  # enough whitespace tokens for any sample
    return path


def _blank_jsonl(world, tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text((json.dumps({"text": " \n "}) + "\n\n") * 2000)
    return path


def _retyped_dictionary(world, tmp_path):
    path = write_saelens(tmp_path / "retyped", world.d_model, hook="blocks.0.hook_resid_post", seed=5)
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "d_sae": "lots"}))
    return path


def _retyped_dictionary_learning(world, tmp_path):
    """A dictionary_learning folder whose config.json holds a float size; its ae.pt is not
    even readable (the config is checked first)."""
    path = tmp_path / "resid_post_layer_0" / "trainer_0"
    path.mkdir(parents=True)
    (path / "ae.pt").write_bytes(b"not read")
    trainer = {"dict_class": "AutoEncoder", "activation_dim": world.d_model, "dict_size": 12.5, "layer": 0}
    (path / "config.json").write_text(json.dumps({"trainer": trainer}))
    return path


def _huge_dictionary(world, tmp_path, key="W_dec", feature=5, value=3e38):
    """The world's first SAE with one feature's value vector (`W_dec` row) or key vector
    (`W_enc` column) set to a finite but huge value."""
    from safetensors.numpy import load_file, save_file

    path = tmp_path / f"huge-{key}"
    shutil.copytree(world.dictionaries[0], path)
    weights = load_file(path / "sae_weights.safetensors")
    if key == "W_dec":
        weights[key][feature, :] = value
    else:
        weights[key][:, feature] = value
    save_file(weights, path / "sae_weights.safetensors")
    return path


def _bytes_corpus(world, tmp_path):
    path = tmp_path / "bytes.txt"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KB; byte 128 is the first that is not UTF-8
    return path


def _bytes_jsonl(world, tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"text": "fine"}\n' * 3 + b'{"text": "caf\xe9"}\n')
    return path


# name -> (edit of the arguments, expected fragments of the one-line message)
CASES = {
    "missing model": (
        lambda a, w, t: _replace(a, "--model", str(t / "no-model")),
        ["--model", "no-model", "no such file"],
    ),
    "missing dictionary": (
        lambda a, w, t: a + ["--dictionary", str(t / "no-sae")],
        ["--dictionary", "no-sae", "no such file"],
    ),
    "missing corpus": (
        lambda a, w, t: _replace(a, "--corpus", str(t / "none.txt")),
        ["--corpus", "none.txt", "no such file"],
    ),
    "dictionary wider than the model": (
        lambda a, w, t: drop(a, "--dictionary") + ["--dictionary", str(_wide_dictionary(w, t))],
        ["--dictionary", "wide", "d_in=32", "d_model=48"],
    ),
    "dictionary beyond the model's layers": (
        lambda a, w, t: a + ["--dictionary", str(_deep_dictionary(w, t))],
        ["--dictionary", "deep", "layer 7", "0..2"],
    ),
    "model folder that is not a model": (
        lambda a, w, t: _replace(a, "--model", str(w.dictionaries[0])),
        ["--model", "sae-l0", "config.json"],
    ),
    "corpus too small": (
        lambda a, w, t: _replace(a, "--num-samples", "100000"),
        ["--corpus", "corpus.txt", "needs at least 1000000"],
    ),
    "corpus record without text": (
        lambda a, w, t: _replace(a, "--corpus", str(_jsonl_without_text(w, t))),
        ["--corpus", "line 2", "'text'", "--text-field"],
    ),
    "unknown lens": (
        lambda a, w, t: a + ["--lenses", "query_lens_value,tuned_lens"],
        ["--lenses", "'tuned_lens'", "logit_lens_key"],
    ),
    "submodule without transport": (
        lambda a, w, t: a + ["--lenses", "query_lens_key,logit_lens_value", "--submodule", "attn"],
        ["submodule='attn'", "logit_lens_value", "no transport"],
    ),
    "unknown lens spec part": (
        lambda a, w, t: a + ["--lenses", "value:fulll:unembed"],
        ["--lenses", "transition 'fulll'", "identity, first_order, full"],
    ),
    "feature out of range": (lambda a, w, t: a + ["--features", "0-40"], ["--features", "feature 40", "40 features"]),
    "missing feature file": (
        lambda a, w, t: a + ["--features", str(t / "sample.pkl")],
        ["--features", "sample.pkl", "no such file"],
    ),
    "layer without a dictionary": (lambda a, w, t: a + ["--layers", "1-2,5"], ["--layers", "[5]"]),
    "corpus and token sample": (
        lambda a, w, t: a + ["--token-sample", str(_bad_padding_sample(w, t))],
        ["exactly one of --corpus and --token-sample"],
    ),
    "token sample padded on the left": (
        lambda a, w, t: (
            drop(a, "--corpus", "--num-samples", "--max-length") + ["--token-sample", str(_bad_padding_sample(w, t))]
        ),
        ["--token-sample", "row 0", "pad on the right"],
    ),
    "BOS beyond the vocabulary": (
        lambda a, w, t: a + ["--prepend-bos", "--bos-id", "5000"],
        ["--corpus", "does not fit the model", "[0, 320)"],
    ),
    "windows longer than the model's positions": (
        lambda a, w, t: _replace(a, "--max-length", "100"),
        ["--max-length 100", "64 positions"],
    ),
    "corpus that is not UTF-8": (
        lambda a, w, t: _replace(a, "--corpus", str(_bytes_corpus(w, t))),
        ["--corpus", "bytes.txt", "not valid utf-8 text: byte 128 (0x80)", "--corpus-encoding"],
    ),
    "JSONL corpus that is not UTF-8": (
        lambda a, w, t: _replace(a, "--corpus", str(_bytes_jsonl(w, t))),
        ["--corpus", "bytes.jsonl", "byte 64 (0xe9)"],
    ),
    "unknown corpus encoding": (
        lambda a, w, t: a + ["--corpus-encoding", "no-such-codec"],
        ["--corpus-encoding 'no-such-codec'", "not a text codec"],
    ),
    "tf32 without a GPU": (lambda a, w, t: a + ["--precision", "tf32"], ["--precision tf32", "tf32 needs a GPU"]),
    "non-positive k": (lambda a, w, t: a + ["--k", "0"], ["--k 0", "at least 1"]),
    "output under a file": (
        lambda a, w, t: _replace(a, "--out", str(w.corpus_text / "out")),
        ["--out", "corpus.txt", "not a directory"],
    ),
    "output in a read-only place": (
        lambda a, w, t: _replace(a, "--out", "/proc/qlens-out"),
        ["--out", "/proc/qlens-out", "cannot write"],
    ),
    "feature id beyond any integer": (
        lambda a, w, t: a + ["--features", "99999999999999999999999"],
        ["--features", "larger than any feature id", "2147483647"],
    ),
    "feature range too long to list": (
        lambda a, w, t: a + ["--features", "0-2000000000"],
        ["--features", "lists 2000000001 ids"],
    ),
    "corpus of whitespace lines": (
        lambda a, w, t: _replace(a, "--corpus", str(_blank_corpus(w, t))),
        ["--corpus", "blank.txt", "only empty or whitespace"],
    ),
    "JSONL corpus of whitespace texts": (
        lambda a, w, t: _replace(a, "--corpus", str(_blank_jsonl(w, t))),
        ["--corpus", "blank.jsonl", "only empty or whitespace"],
    ),
    "dictionary config of the wrong type": (
        lambda a, w, t: drop(a, "--dictionary") + ["--dictionary", str(_retyped_dictionary(w, t))],
        ["--dictionary", "cfg.json", "config key 'd_sae' must be an integer, got str 'lots'"],
    ),
    "dictionary_learning config of the wrong type": (
        lambda a, w, t: drop(a, "--dictionary") + ["--dictionary", str(_retyped_dictionary_learning(w, t))],
        ["--dictionary", "config.json", "config key 'trainer.dict_size' must be an integer, got float 12.5"],
    ),
    "cross-layer transcoder of fewer layers than the model": (
        lambda a, w, t: drop(a, "--dictionary") + ["--dictionary", str(_short_clt(w, t))],
        ["--dictionary", "W_dec_0.safetensors", "spans 2 layers, but the model has 3"],
    ),
    "cross-layer transcoder narrower than the model": (
        lambda a, w, t: drop(a, "--dictionary") + ["--dictionary", str(_narrow_clt(w, t))],
        ["--dictionary", "W_enc_0.safetensors", "d_model=48"],
    ),
    "huge value vector": (
        lambda a, w, t: drop(a, "--dictionary") + ["--dictionary", str(_huge_dictionary(w, t))],
        ["dictionary 'resid-post-40' (layer 0)", "feature 5's W_dec row", "up to 3e+38", "overflows"],
    ),
    "huge key vector": (
        lambda a, w, t: (
            drop(a, "--dictionary")
            + ["--dictionary", str(_huge_dictionary(w, t, "W_enc", 7, -1e30)), "--lenses", "query_lens_key"]
        ),
        ["dictionary 'resid-post-40' (layer 0)", "feature 7's W_enc column", "query_lens_key", "overflows"],
    ),
    "huge value vector under bfloat16": (
        lambda a, w, t: (
            drop(a, "--dictionary") + ["--dictionary", str(_huge_dictionary(w, t, value=1e17)), "--dtype", "bfloat16"]
        ),
        ["feature 5's W_dec row", "(3.39e+38,"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_code_2(case, world, tmp_path, capsys):
    edit, fragments = CASES[case]
    out = tmp_path / "out"
    args = edit(base_args(world, out), world, tmp_path)
    assert main(args) == 2
    captured = capsys.readouterr()
    message = captured.err.strip()
    assert message.startswith("qlens signatures: error: ") and "\n" not in message, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not out.exists(), "no work (not even the output folder) before the inputs are checked"


def test_non_empty_folder_that_is_not_a_run_is_refused(world, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(base_args(world, out)) == 2
    assert "not empty and not a qlens run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_folder_in_use_is_refused(tmp_path):
    manifest = {"fingerprint": "x", "fingerprint_inputs": {}, "sessions": [{}], "command": []}
    with RunDir.open(tmp_path / "out", manifest):
        with pytest.raises(InputError, match="another qlens process is working in this folder"):
            RunDir.open(tmp_path / "out", manifest)


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["signatures", "--model", "m"])
    assert exit_info.value.code == 2
    assert "required" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["export", "view"])
def test_export_and_view_need_a_finished_run(command, world, tmp_path, capsys):
    assert main([command, str(tmp_path)]) == 2
    assert f"qlens {command}: error: {tmp_path}: not a qlens run folder" in capsys.readouterr().err
    out = tmp_path / "unfinished"
    manifest = {"fingerprint": "x", "fingerprint_inputs": {}, "sessions": [{}], "command": [], "status": "running"}
    RunDir.open(out, manifest).close()
    assert main([command, str(out)]) == 2
    assert "the run is not finished" in capsys.readouterr().err


PRECISION = ["--precision", "tf32 = TensorFloat-32", "GPUs only", "float32 accumulation", "Distinct from --dtype"]
HELP = {
    (): ["signatures", "export", "view", "demo", "channels", "evaluate", "main job"],
    ("signatures",): [
        "--model",
        "--dictionary",
        "--corpus",
        "--out",
        "--token-sample",
        "--num-samples",
        "--max-length",
        "--seed",
        "--prepend-bos",
        "--lenses",
        "--layers",
        "--features",
        "--k",
        "--dtype",
        "--path",
        "--memory-budget-gb",
        "--quiet",
        "default: 25",
        "1024",
        "resumable",
        "--corpus-encoding",
        *PRECISION,
    ],
    ("export",): ["feature_analysis.jsonl", "--format", "stream_transition"],
    ("view",): ["self-contained", "#q=", "--out"],
    ("demo",): ["bundled", "--num-samples", "--out", *PRECISION],
    ("channels",): ["rank-r map", "--rank", "--corpus", "--corpus-encoding", "--token-sample", "--seed", *PRECISION],
    ("evaluate",): ["I(T)", "--signatures", "--baselines", "--corpus-encoding", "--judge", *PRECISION],
}


@pytest.mark.parametrize("command", list(HELP))
def test_help_explains_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: qlens")
    for fragment in HELP[command]:
        assert fragment in text, fragment


def test_the_qlens_script_and_python_m_run_the_cli():
    import importlib
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    import qlens_jax.cli

    root = Path(__file__).resolve().parents[2]
    target = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]["qlens"]
    module, _, function = target.partition(":")
    assert getattr(importlib.import_module(module), function) is qlens_jax.cli.main
    done = subprocess.run([sys.executable, "-m", "qlens_jax.cli", "--help"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0 and "usage: qlens" in done.stdout and "evaluate" in done.stdout


@pytest.mark.parametrize("lens,extra", [("logit_lens_value", []), ("query_lens_value", ["--path", "dense"])])
def test_a_non_finite_score_stops_the_run_naming_the_feature(lens, extra, world, tmp_path, capsys, monkeypatch):
    """Past the weight-scale check (switched off here), the readout's own guard: NaN scores of
    feature 5 stop the run with exit code 2 before its shard is written (on the dense path
    before the self-check, which would call the NaN a disagreement, exit code 1)."""
    import qlens_jax.lens.scales

    monkeypatch.setattr(qlens_jax.lens.scales, "check_weight_scales", lambda *args, **kwargs: None)
    out = tmp_path / "out"
    args = drop(base_args(world, out), "--dictionary") + [
        "--dictionary",
        str(_huge_dictionary(world, tmp_path)),
        "--lenses",
        lens,
        *extra,
    ]
    assert main(args) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "Traceback" not in message
    for fragment in (f"{lens} of dictionary 'resid-post-40' (layer 0), feature 5", "non-finite score", "W_dec row"):
        assert fragment in message, (fragment, message)
    assert not (out / "signatures.parquet").exists() and not list(out.glob("shards/*"))
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # not marked complete


SEARCH_CASES = {
    "a byte that is not UTF-8 ($'\\xff')": ("\udcff", ["--promotes", "not valid UTF-8 text (byte 0xff at 0)"]),
    "a superscript digit": ("id:²", ["--promotes 'id:²'", "ASCII decimal digits"]),
    "5,000 digits": ("id:" + "9" * 5000, ["--promotes 'id:9999", "...'", "ASCII decimal digits"]),
    "an id beyond the vocabulary": ("id:320", ["--promotes id 320", "320 ids (0 .. 319)"]),
    "an empty token": ("", ["--promotes: empty token"]),
}


@pytest.mark.parametrize("case", list(SEARCH_CASES))
def test_search_refuses_bad_tokens_in_one_line(case, full_run, capsys):
    token, fragments = SEARCH_CASES[case]
    before = sorted(p.relative_to(full_run[0]) for p in full_run[0].rglob("*"))
    assert main(["search", str(full_run[0]), "--promotes", token]) == 2
    captured = capsys.readouterr()
    message = captured.err.strip()
    assert message.startswith("qlens search: error: ") and "\n" not in message and len(message) < 400, captured.err
    assert captured.out == ""
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert sorted(p.relative_to(full_run[0]) for p in full_run[0].rglob("*")) == before


def test_search_stops_on_a_non_finite_score(full_run, capsys, monkeypatch):
    from qlens_jax.serve.reverse import ReverseLookup

    def scores(self, entry, side, token):
        values = np.zeros(entry.d_sae, np.float32)
        values[3] = np.inf
        return values

    monkeypatch.setattr(ReverseLookup, "scores", scores)
    assert main(["search", str(full_run[0]), "--activated-by", " the"]) == 2
    message = capsys.readouterr().err.strip()
    assert (
        "query_lens_key of dictionary 'resid-post-40' (layer 0), feature 3: the readout gave a non-finite score"
        in message
    )
    assert "W_enc column" in message and "\n" not in message
