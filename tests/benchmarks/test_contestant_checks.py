"""The benchmark's refusals: a fake authors' checkout whose lists differ (no ratio may be
printed), and bad contestant arguments refused before any work."""

import textwrap

import pytest

from benchmarks import throughput
from contestant_runs import run

FAKE_UTIL = """
from dataclasses import dataclass

@dataclass
class Feature:
    model_id: str
    feature: int
    layer: int
    type: str
"""
FAKE_COMMON = """
class ResidCache:
    @staticmethod
    def build_for_local_pile_sample(**kwargs):
        return ResidCache()

VJPResidCache = ResidCache
"""
FAKE_ANALYZE = """
def analyze_feature(f, k, **kwargs):
    return {"top_ids": list(range(k)), "bottom_ids": list(range(k, 2 * k))}
"""


@pytest.fixture
def fake_repo(tmp_path):
    root = tmp_path / "fake-query-lens"
    (root / "analysis").mkdir(parents=True)
    (root / "util.py").write_text(textwrap.dedent(FAKE_UTIL))
    (root / "analysis" / "__init__.py").write_text("")
    (root / "analysis" / "common.py").write_text(textwrap.dedent(FAKE_COMMON))
    for name in ("jvp.py", "vjp.py"):
        (root / "analysis" / name).write_text(textwrap.dedent(FAKE_ANALYZE))
    return root


def test_lists_that_differ_from_the_contestants_print_no_ratio(fake_repo, tmp_path, capsys):
    code, text, data = run(["--authors-repo", str(fake_repo), "--no-roofline", "--layers", "0"], tmp_path, capsys)
    assert code == 1
    assert "AGREEMENT FAILED" in text and "ratio" not in text and "x " not in text.split("AGREEMENT FAILED")[1][:80]
    assert f"contestant: the authors' code ({fake_repo.name})" in text
    assert data["contestant"]["name"] == "authors" and "summary" not in data
    assert not data["agreement"]["passed"] and data["agreement"]["mismatches"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--authors-repo", "/nonexistent/query-lens"], "--authors-repo /nonexistent/query-lens: not a checkout"),
        (["--authors-python", "/nonexistent/python"], "--authors-python /nonexistent/python: no such interpreter"),
        (["--size", "llama-tiny"], "the authors' code cannot run on --size llama-tiny"),
        # Gemma-3 only at the published shapes, which TransformerLens takes from its own table by name
        (["--size", "gemma3-tiny"], "only Gemma-3-270M and Gemma-3-1B"),
        (["--lenses", "logit_lens_value"], "timed for ['query_lens_key', 'query_lens_value'] only"),
    ],
)
def test_bad_contestant_arguments_are_refused_before_any_work(argv, message, fake_repo, capsys):
    base = ["--authors-repo", str(fake_repo)]
    with pytest.raises(SystemExit) as exit_:
        throughput.main(base + argv)
    assert message in str(exit_.value)
    assert capsys.readouterr().out == ""  # nothing started


def test_million_refuses_the_authors_contestant_with_identity_operators(fake_repo, capsys):
    from benchmarks import million

    with pytest.raises(SystemExit) as exit_:
        million.main(["--size", "tiny", "--authors-repo", str(fake_repo), "--synthetic-operators"])
    assert "--authors-repo: not with --synthetic-operators" in str(exit_.value)
    assert capsys.readouterr().out == ""


def test_the_papers_sample_is_not_mixed_with_a_sample_of_ones_own(capsys):
    with pytest.raises(SystemExit) as exit_:
        throughput.main(["--size", "tiny", "--paper-sample", "--batch", "4"])
    assert exit_.value.code == 2
    assert "--paper-sample: not with --batch / --seq" in capsys.readouterr().err
