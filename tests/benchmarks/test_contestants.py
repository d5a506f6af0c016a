"""`benchmarks.throughput`'s contestants at a tiny size: the authors' code (run for real, in a
process of its own), `reference_torch.py` when no `--authors-repo` is given, and a fake
authors' checkout whose lists differ (no ratio may be printed then)."""

import json
import textwrap

import pytest

from benchmarks import throughput

TINY = ["--size", "tiny", "--features", "256", "--layers", "0", "3", "--ref-features", "1", "--batch", "1", "--seq", "16",
        "--quiet"]


def run(argv, tmp_path, capsys):
    path = tmp_path / "throughput.json"
    code = throughput.main(TINY + argv + ["--out", str(path)])
    return code, capsys.readouterr().out, json.loads(path.read_text())


def test_authors_code_is_the_contestant(authors_repo, tmp_path, capsys):
    work = tmp_path / "shared-inputs"
    code, text, data = run(["--authors-repo", str(authors_repo), "--authors-workdir", str(work), "--no-roofline"],
                           tmp_path, capsys)
    assert code == 0
    assert data["contestant"]["name"] == "authors"
    assert data["contestant"]["repo"] == str(authors_repo.resolve())
    assert f"contestant: the authors' code ({authors_repo.resolve()})" in text
    agreement = data["agreement"]
    assert agreement["passed"] and agreement["features_checked"] == 16
    assert agreement["identical"] == agreement["features_checked"]  # ids only: no tie allowance
    run_ = data["raw"]["reference"]
    assert set(run_["cache_seconds"]) == {"value", "key"} and all(s > 0 for s in run_["cache_seconds"].values())
    assert all(r["seconds"] > 0 and len(r["top_ids"]) == 25 for rows in run_["results"].values() for r in rows)
    whole = data["summary"]["whole_dictionary"]
    assert whole["reference_cache_seconds"] == run_["cache_seconds"]
    assert "authors:" in text and "ratio:" in text
    # the weights, sample and SAEs the authors' process read: a Hugging Face folder and sae_lens folders
    assert (work / "model" / "config.json").is_file() and (work / "tokens.npy").is_file()
    assert all((work / f"sae-{layer}" / "cfg.json").is_file() for layer in (0, 3))


def test_without_authors_repo_reference_torch_stands_in_and_the_roofline_is_accounted(tmp_path, capsys):
    code, text, data = run([], tmp_path, capsys)
    assert code == 0
    assert data["contestant"]["name"] == "reference_torch"
    assert "contestant: benchmarks/reference_torch.py (a re-implementation, not the authors' code)" in text
    roofline = data["roofline"]
    sweeps = roofline["sweeps"]
    assert sweeps["flops"] > 0 and 0 < sweeps["fraction_of_peak"] < 1.5
    assert sum(sweeps["split"].values()) == pytest.approx(sweeps["flops"], rel=1e-12)
    assert sweeps["split"]["attention"] > 0 and sweeps["split"]["mlp"] > 0
    assert sweeps["split"]["other"] < 0.05 * sweeps["flops"]
    assert len(roofline["readouts"]) == 4
    assert all(r["flops"] > 0 and r["fraction_of_peak"] > 0 for r in roofline["readouts"].values())
    assert "roofline" in text and "of peak" in text


FAKE_UTIL = '''
from dataclasses import dataclass

@dataclass
class Feature:
    model_id: str
    feature: int
    layer: int
    type: str
'''
FAKE_COMMON = '''
class ResidCache:
    @staticmethod
    def build_for_local_pile_sample(**kwargs):
        return ResidCache()

VJPResidCache = ResidCache
'''
FAKE_ANALYZE = '''
def analyze_feature(f, k, **kwargs):
    return {"top_ids": list(range(k)), "bottom_ids": list(range(k, 2 * k))}
'''


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
    code, text, data = run(["--authors-repo", str(fake_repo), "--no-roofline"], tmp_path, capsys)
    assert code == 1
    assert "AGREEMENT FAILED" in text and "ratio" not in text and "x " not in text.split("AGREEMENT FAILED")[1][:80]
    assert f"contestant: the authors' code ({fake_repo.resolve()})" in text
    assert data["contestant"]["name"] == "authors" and "summary" not in data
    assert not data["agreement"]["passed"] and data["agreement"]["mismatches"]


@pytest.mark.parametrize("argv, message", [
    (["--authors-repo", "/nonexistent/query-lens"], "--authors-repo /nonexistent/query-lens: not a checkout"),
    (["--authors-python", "/nonexistent/python"], "--authors-python /nonexistent/python: no such interpreter"),
    (["--size", "llama-tiny"], "GPT-2 sizes only, not --size llama-tiny"),
    (["--lenses", "logit_lens_value"], "timed for ['query_lens_key', 'query_lens_value'] only"),
])
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
