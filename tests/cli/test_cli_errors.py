"""Bad input: exit code 2, one line naming the input, no traceback, and no work done (the
output folder is not even created)."""

import json

import numpy as np
import pytest
from world import base_args, drop, write_saelens

from qlens_jax.cli import main
from qlens_jax.errors import InputError
from qlens_jax.io.rundir import RunDir


def _replace(args: list[str], option: str, value: str) -> list[str]:
    i = args.index(option)
    return args[: i + 1] + [value] + args[i + 2 :]


def _wide_dictionary(world, tmp_path):
    return write_saelens(tmp_path / "wide", 32, hook="blocks.0.hook_resid_post", seed=5)


def _deep_dictionary(world, tmp_path):
    return write_saelens(tmp_path / "deep", world.d_model, hook="blocks.7.hook_resid_post", seed=5)


def _bad_padding_sample(world, tmp_path):
    path = tmp_path / "sample.npy"
    np.save(path, np.asarray([[5, 6, -1, 7], [5, 6, 7, 8]]))
    return path


def _jsonl_without_text(world, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text field"}) + "\n")
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
    "missing model": (lambda a, w, t: _replace(a, "--model", str(t / "no-model")), ["--model", "no-model", "no such file"]),
    "missing dictionary": (lambda a, w, t: a + ["--dictionary", str(t / "no-sae")], ["--dictionary", "no-sae", "no such file"]),
    "missing corpus": (lambda a, w, t: _replace(a, "--corpus", str(t / "none.txt")), ["--corpus", "none.txt", "no such file"]),
    "dictionary wider than the model": (
        lambda a, w, t: drop(a, "--dictionary") + ["--dictionary", str(_wide_dictionary(w, t))],
        ["--dictionary", "wide", "d_in=32", "d_model=48"],
    ),
    "dictionary beyond the model's layers": (
        lambda a, w, t: a + ["--dictionary", str(_deep_dictionary(w, t))], ["--dictionary", "deep", "layer 7", "0..2"],
    ),
    "model folder that is not a model": (
        lambda a, w, t: _replace(a, "--model", str(w.dictionaries[0])), ["--model", "sae-l0", "config.json"],
    ),
    "corpus too small": (lambda a, w, t: _replace(a, "--num-samples", "100000"), ["--corpus", "corpus.txt", "needs at least 1000000"]),
    "corpus record without text": (
        lambda a, w, t: _replace(a, "--corpus", str(_jsonl_without_text(w, t))), ["--corpus", "line 2", "'text'", "--text-field"],
    ),
    "unknown lens": (lambda a, w, t: a + ["--lenses", "query_lens_value,tuned_lens"], ["--lenses", "'tuned_lens'", "logit_lens_key"]),
    "feature out of range": (lambda a, w, t: a + ["--features", "0-40"], ["--features", "feature 40", "40 features"]),
    "missing feature file": (lambda a, w, t: a + ["--features", str(t / "sample.pkl")], ["--features", "sample.pkl", "no such file"]),
    "layer without a dictionary": (lambda a, w, t: a + ["--layers", "1-2,5"], ["--layers", "[5]"]),
    "corpus and token sample": (
        lambda a, w, t: a + ["--token-sample", str(_bad_padding_sample(w, t))], ["exactly one of --corpus and --token-sample"],
    ),
    "token sample padded on the left": (
        lambda a, w, t: drop(a, "--corpus", "--num-samples", "--max-length") + ["--token-sample", str(_bad_padding_sample(w, t))],
        ["--token-sample", "row 0", "pad on the right"],
    ),
    "BOS beyond the vocabulary": (
        lambda a, w, t: a + ["--prepend-bos", "--bos-id", "5000"], ["--corpus", "does not fit the model", "[0, 320)"],
    ),
    "windows longer than the model's positions": (
        lambda a, w, t: _replace(a, "--max-length", "100"), ["--max-length 100", "64 positions"],
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
        lambda a, w, t: a + ["--corpus-encoding", "no-such-codec"], ["--corpus-encoding 'no-such-codec'", "not a text codec"],
    ),
    "tf32 without a GPU": (lambda a, w, t: a + ["--precision", "tf32"], ["--precision tf32", "tf32 needs a GPU"]),
    "non-positive k": (lambda a, w, t: a + ["--k", "0"], ["--k 0", "at least 1"]),
    "output under a file": (lambda a, w, t: _replace(a, "--out", str(w.corpus_text / "out")), ["--out", "corpus.txt", "not a directory"]),
    "output in a read-only place": (lambda a, w, t: _replace(a, "--out", "/proc/qlens-out"), ["--out", "/proc/qlens-out", "cannot write"]),
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
    ("signatures",): ["--model", "--dictionary", "--corpus", "--out", "--token-sample", "--num-samples", "--max-length",
                      "--seed", "--prepend-bos", "--lenses", "--layers", "--features", "--k", "--dtype", "--path",
                      "--memory-budget-gb", "--quiet", "default: 25", "1024", "resumable", "--corpus-encoding", *PRECISION],
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
