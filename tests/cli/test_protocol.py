"""`--protocol paper` (and `Protocol.PAPER`): the paper's option values are set, and an option
given with another value is refused naming both, before any work."""

import json

import numpy as np
import pytest

import converters
from qlens_jax import default
from qlens_jax.cli import main
from qlens_jax.corpus import load_token_sample, tokenize_corpus
from qlens_jax.errors import InputError
from qlens_jax.evaluation import EvaluationOptions
from qlens_jax.job.inputs import eos_and_pad_ids
from qlens_jax.job.spec import SampleSpec
from qlens_jax.paper_sample import paper_sample
from qlens_jax.protocol import PAPER_EVALUATE, Protocol


def _signatures(out, *extra):
    return main(
        [
            "signatures",
            "--model",
            str(default.model_dir()),
            "--dictionary",
            str(default.dictionary_dir("resid-post-1")),
            "--corpus",
            str(default.heldout_text_path()),
            "--features",
            "0-3",
            "--lenses",
            "logit_lens_value",
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )


def test_signatures_with_the_paper_protocol_draw_the_authors_sample_in_bfloat16(tmp_path):
    assert _signatures(tmp_path / "run", "--protocol", "paper") == 0
    tokens, mask = load_token_sample(tmp_path / "run" / "sample.npy")
    tokenizer = converters.load_tokenizer(default.model_dir())
    corpus = tokenize_corpus(default.heldout_text_path(), tokenizer)
    expected, _ = paper_sample(corpus, 1024, 32, 42, *eos_and_pad_ids(tokenizer, default.model_dir()))
    np.testing.assert_array_equal(tokens, expected)
    assert mask.all()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "bfloat16" in json.dumps(record)


@pytest.mark.parametrize(
    "command, extra, message",
    [
        (
            "signatures",
            ["--windows", "concat"],
            "--protocol paper sets --windows paper; it contradicts --windows concat",
        ),
        ("signatures", ["--seed=7"], "it contradicts --seed 7"),
        ("evaluate", ["--match", "ids"], "--protocol paper sets --match strings; it contradicts --match ids"),
        ("evaluate", ["--kl-positions", "last"], "contradicts --kl-positions last"),
    ],
)
def test_contradicting_options_are_refused(tmp_path, capsys, command, extra, message):
    if command == "signatures":
        code = _signatures(tmp_path / "run", "--protocol", "paper", *extra)
    else:
        code = main(
            [
                "evaluate",
                "--model",
                str(default.model_dir()),
                "--dictionary",
                str(default.dictionary_dir("resid-post-1")),
                "--corpus",
                str(default.heldout_text_path()),
                "--baselines",
                "zero_out",
                "--protocol",
                "paper",
                *extra,
                "--out",
                str(tmp_path / "eval"),
                "--quiet",
            ]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


def test_python_api():
    options = EvaluationOptions.for_protocol(Protocol.PAPER)
    assert (options.kl_positions, options.alpha_search, options.error_term, options.generate_tokens, options.match) == (
        "all",
        "integer",
        False,
        20,
        "strings",
    )
    assert options.s_size == 25 and options.require_contexts and options.seed == 42
    assert EvaluationOptions.for_protocol(Protocol.PAPER, feature_chunk=8).feature_chunk == 8
    assert EvaluationOptions.for_protocol("default") == EvaluationOptions()
    with pytest.raises(InputError, match="Protocol.PAPER sets match='strings'; it contradicts match='ids'"):
        EvaluationOptions.for_protocol(Protocol.PAPER, match="ids")
    spec = SampleSpec.for_protocol(Protocol.PAPER, corpus="c.txt")
    assert (spec.windows, spec.seed, spec.num_samples, spec.max_length, spec.corpus) == ("paper", 42, 1024, 32, "c.txt")
    assert PAPER_EVALUATE["context_length"] == 128
