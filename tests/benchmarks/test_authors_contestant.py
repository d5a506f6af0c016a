"""`benchmarks.throughput` with the authors' code as its contestant, run for real at a tiny
size in a process of its own (one test module per end-to-end run, so the runs spread over the
test workers)."""

import json

from contestant_runs import run


def test_authors_code_is_the_contestant(authors_repo, tmp_path, capsys):
    work = tmp_path / "shared-inputs"
    code, text, data = run(
        ["--authors-repo", str(authors_repo), "--authors-workdir", str(work), "--no-roofline"], tmp_path, capsys
    )
    assert code == 0
    assert data["contestant"]["name"] == "authors"
    # the results file names the checkout without the machine's path
    assert data["contestant"]["repo"] == f"{authors_repo.name} (outside the repository)"
    assert f"contestant: the authors' code ({authors_repo.name}" in text and str(
        authors_repo.resolve()
    ) not in json.dumps(data)
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
