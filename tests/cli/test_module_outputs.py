"""`qlens signatures` on dictionaries at module outputs (sae_lens folders on `hook_attn_out`,
`attn.hook_z` with sae_lens's `hook_z` reshaping, `hook_mlp_out`) mixed with a residual SAE, on a
tiny Gemma-3 (post-norms; `z` is 64 wide, `d_model` 48): the Parquet output equals
`qlens_jax.query_lens` on the run's sample, Logit Lens's key side is skipped for the `z`
dictionary with a note (and refused when no dictionary has it), an interrupted run resumes to
the same bytes with its stored plan and operators, a changed dictionary is refused by the
fingerprint, `qlens export` / `qlens view` read the run and `qlens evaluate` scores it."""

import json
import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import converters
import qlens_jax
from qlens_jax.cli import main
from qlens_jax.corpus import load_token_sample
from qlens_jax.viewer import viewer_data
from world import base_args, drop, shared_module_run, shared_module_world, write_saelens

NAMES = ["resid-post-40", "attn-out-40", "z-40", "mlp-out-40"]
SITES = ["resid_post", "attn_out", "z", "mlp_out"]
NOTE = "qlens: note: logit_lens_key is not defined for z-40 (layer 2)"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shared_module_world(tmp_path_factory)


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    return shared_module_run(tmp_path_factory, world)


@pytest.fixture(scope="module")
def direct(world, run):
    """The kernel called directly on the run's sample: every lens for every dictionary, Logit
    Lens's key side (refused by the kernel for z) for the others."""
    tokens, mask = load_token_sample(run[0] / "sample.npy")
    model = converters.load_model(world.model)
    dictionaries = converters.load_dictionaries([str(d) for d in world.dictionaries], model)
    common = dict(k=25, self_check=False, memory_budget_gb=1.0)
    lenses = [lens for lens in qlens_jax.LENSES if lens != "logit_lens_key"]
    signatures = list(qlens_jax.query_lens(model, dictionaries, tokens, mask, lenses=lenses, **common))
    not_z = [d for d in dictionaries if d.site_in != "z"]
    signatures += list(qlens_jax.query_lens(model, not_z, tokens, mask, lenses=["logit_lens_key"], **common))
    return signatures


def test_parquet_matches_query_lens(run, direct):
    table = pq.read_table(run[0] / "signatures.parquet")
    assert table.num_rows == sum(len(t) for t in direct) == 40 * (4 * 6 - 1)
    assert sorted({(t.lens, t.dictionary) for t in direct}) == sorted(
        set(zip(table["lens"].to_pylist(), table["dictionary"].to_pylist()))
    )
    for expected in direct:
        rows = table.filter(
            pc.and_(pc.equal(table["lens"], expected.lens), pc.equal(table["dictionary"], expected.dictionary))
        )
        got = {name: rows[name].to_pylist() for name in rows.column_names}
        assert got["feature"] == expected.feature_ids.tolist() and set(got["layer"]) == {expected.layer}
        for side in ("top", "bottom"):
            np.testing.assert_array_equal(np.asarray(got[f"{side}_ids"]), expected.__dict__[f"{side}_ids"])
            np.testing.assert_array_equal(
                np.asarray(got[f"{side}_scores"], np.float32), expected.__dict__[f"{side}_scores"]
            )
        if expected.lens.startswith("first_order"):
            assert got["layer_indices"] == [expected.layer_indices.tolist()] * len(expected)
            np.testing.assert_array_equal(
                np.asarray(got["layer_energy"], np.float64), np.asarray(expected.layer_energy, np.float64)
            )


def test_default_names_sites_and_the_skipped_lens_in_run_json(run):
    out, _, stderr = run
    manifest = json.loads((out / "run.json").read_text())
    dictionaries = manifest["inputs"]["dictionaries"]
    assert [d["name"] for d in dictionaries] == NAMES
    assert [(d["site_in"], d["site_out"]) for d in dictionaries] == [(s, s) for s in SITES]
    assert manifest["skipped"] == [
        {
            "lens": "logit_lens_key",
            "dictionary_index": 2,
            "dictionary": "z-40",
            "layer": 2,
            "reason": manifest["skipped"][0]["reason"],
        }
    ]
    assert "heads' output space" in manifest["skipped"][0]["reason"]
    assert [line for line in stderr.splitlines() if line.startswith("qlens: note:")] == [
        line for line in stderr.splitlines() if NOTE in line
    ]
    assert stderr.count(NOTE) == 1
    table = pq.read_table(out / "signatures.parquet", columns=["lens", "dictionary"])
    pairs = set(zip(table["lens"].to_pylist(), table["dictionary"].to_pylist()))
    assert ("logit_lens_key", "z-40") not in pairs and ("logit_lens_key", "attn-out-40") in pairs
    assert manifest["outputs"]["signatures.parquet"]["rows"] == 920


def test_operators_record_the_module_output_sites(run, world):
    out, *_ = run
    meta = json.loads((out / "operators" / "operators.json").read_text())
    assert meta["sites"] == [["mlp_out", 0], ["attn_out", 1], ["z", 2]]
    assert {"value_at_sites", "key_at_sites", "z_hop_value", "z_hop_key"} <= set(meta["arrays"])


def test_a_lens_no_dictionary_has_is_refused_before_any_work(world, tmp_path, capsys):
    out = tmp_path / "z-only"
    args = drop(base_args(world, out, "--lenses", "query_lens_key,logit_lens_key"), "--dictionary")
    assert main(args + ["--dictionary", str(world.dictionaries[2])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "qlens signatures: error: --lenses: logit_lens_key is not defined for any dictionary of this run "
        "(z-40 (layer 2))"
    ) and err.endswith("drop logit_lens_key from --lenses")
    assert not out.exists()


def test_interrupted_run_resumes_to_identical_bytes_with_its_stored_plan(run, tmp_path, capsys):
    """A copy of the finished run with its last shards, the output and the status gone (as a
    killed run leaves it), continued with another memory budget: the stored plan and the saved
    operators are used, and the output has the same bytes."""
    out, args, _ = run
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    shards = sorted((copy / "shards").glob("*.parquet"))
    assert len(shards) == 23  # 6 lenses x 4 dictionaries, less logit_lens_key for z-40
    removed = [p for p in shards if ".d002." in p.name or p.name.startswith("logit_lens_key")]
    for path in removed + [copy / "signatures.parquet"]:
        path.unlink()
    manifest = json.loads((copy / "run.json").read_text())
    manifest["status"] = "running"
    (copy / "run.json").write_text(json.dumps(manifest))
    operators = (copy / "operators" / "operators.json").stat().st_mtime_ns
    changed = [str(copy) if a == str(out) else a for a in args]
    changed[changed.index("--memory-budget-gb") + 1] = "2"
    assert main(changed) == 0
    captured = capsys.readouterr()
    assert f"resumed with {23 - len(removed)}/23 shards done" in captured.out and NOTE in captured.err
    assert (copy / "signatures.parquet").read_bytes() == (out / "signatures.parquet").read_bytes()
    assert (copy / "operators" / "operators.json").stat().st_mtime_ns == operators  # loaded, not swept again
    resumed = json.loads((copy / "run.json").read_text())
    assert resumed["plan"] == manifest["plan"] and resumed["plan"]["memory_budget_gb"] == 1.0
    assert resumed["status"] == "complete" and len(resumed["sessions"]) == 2


def test_a_changed_z_dictionary_is_refused_by_the_fingerprint(world, run, tmp_path, capsys):
    out, args, _ = run
    other = write_saelens(
        tmp_path / "sae-z-l2", world.d_z, hook="blocks.2.attn.hook_z", seed=99, reshape_activations="hook_z"
    )
    changed = [str(other) if a == str(world.dictionaries[2]) else a for a in args]
    before = (out / "signatures.parquet").read_bytes()
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "different inputs (dictionaries)" in err
    assert (out / "signatures.parquet").read_bytes() == before


def test_export_writes_the_pairs_the_run_has(run, tmp_path):
    out, *_ = run
    assert main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    for lens in qlens_jax.LENSES:
        records = [
            json.loads(line)
            for line in (tmp_path / "export" / lens / "feature_analysis.jsonl").read_text().splitlines()
        ]
        names = {r["feature_str"].split()[1].split("/")[0] for r in records}
        assert names == set(NAMES) - ({"z-40"} if lens == "logit_lens_key" else set())
        assert len(records) == 40 * len(names)
        assert [(r["layer"], int(r["feature_str"].rsplit("/", 1)[1])) for r in records] == sorted(
            (r["layer"], int(r["feature_str"].rsplit("/", 1)[1])) for r in records
        )


def test_viewer_shows_every_feature_with_the_lenses_it_has(run, tmp_path):
    out, *_ = run
    assert main(["view", str(out), "--out", str(tmp_path / "viewer.html")]) == 0
    html = (tmp_path / "viewer.html").read_text(encoding="utf-8")
    assert "z-40" in html and "attn-out-40" in html and "mlp-out-40" in html
    data = viewer_data(out)
    assert len(data["features"]) == 160
    assert {data["dictionaries"][str(i)]["name"] for i in range(4)} == set(NAMES)
    for feature in data["features"]:
        lenses = set(feature["L"])
        expected = set(qlens_jax.LENSES) - ({"logit_lens_key"} if feature["d"] == 2 else set())
        assert lenses == expected, feature["s"]


def test_evaluate_scores_the_z_dictionary_of_the_run(world, run, tmp_path):
    """`qlens evaluate` reads the mixed run and splices the zero-out baseline at `z` (through the
    output projection and Gemma-3's post-norm; every site is checked against a hand splice in
    tests/evaluation)."""
    import csv

    out = tmp_path / "eval"
    z = world.dictionaries[SITES.index("z")]
    args = [
        "evaluate",
        "--model",
        str(world.model),
        "--dictionary",
        str(z),
        "--signatures",
        str(run[0]),
        "--corpus",
        str(world.corpus_text),
        "--features",
        "0-1",
        "--baselines",
        "zero_out",
        "--max-contexts",
        "40",
        "--min-contexts",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    pairs = {(r["dictionary"], r["lens"]) for r in rows}
    assert {("z-40", "zero_out"), ("z-40", "query_lens_value"), ("z-40", "first_order_key")} <= pairs
    assert {r["dictionary"] for r in rows} == {"z-40"} and ("z-40", "logit_lens_key") not in pairs
    assert all(0 <= float(r["output_score"]) <= 1 for r in rows if r["output_score"])
