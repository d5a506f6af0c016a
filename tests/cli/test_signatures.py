"""`qlens signatures` end to end on a saved tiny model, tokenizer and sae_lens dictionaries:
the Parquet output equals `qlens_jax.query_lens` called directly on the same sample, run.json
records the run, a finished run restarts as a no-op, and a different run into the same
folder is refused."""

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import converters
import qlens_jax
from qlens_jax import numerics
from qlens_jax.cli import main
from qlens_jax.io.parquet import SCHEMA
from qlens_jax.tokens import token_strings

FIRST_ORDER_FIELDS = ("layer_top_ids", "layer_top_scores", "layer_bottom_ids", "layer_bottom_scores", "layer_energy")


def test_parquet_matches_query_lens(world, full_run):
    """Every row equals `qlens_jax.query_lens` called directly on the run's sample (conftest)."""
    out, _, signatures = full_run
    table = pq.read_table(out / "signatures.parquet")
    assert table.schema.equals(SCHEMA)
    vocab = np.asarray(token_strings(converters.load_tokenizer(world.model)), object)
    assert table.num_rows == sum(len(t) for t in signatures) == 6 * 3 * 40
    for expected in signatures:
        rows = table.filter(
            pc.and_(pc.equal(table["lens"], expected.lens), pc.equal(table["dictionary"], expected.dictionary))
        )
        got = {name: rows[name].to_pylist() for name in rows.column_names}
        assert got["feature"] == expected.feature_ids.tolist()
        assert set(got["layer"]) == {expected.layer}
        assert got["feature_str"] == [
            f"Feature {expected.dictionary}/{expected.layer}/{i}" for i in expected.feature_ids
        ]
        for side in ("top", "bottom"):
            np.testing.assert_array_equal(np.asarray(got[f"{side}_ids"]), expected.__dict__[f"{side}_ids"])
            np.testing.assert_array_equal(
                np.asarray(got[f"{side}_scores"], np.float32), expected.__dict__[f"{side}_scores"]
            )
            assert got[f"{side}_tokens"] == vocab[np.asarray(expected.__dict__[f"{side}_ids"])].tolist()
        if expected.lens.startswith("query_lens") or expected.lens == "first_order_value":
            np.testing.assert_array_equal(
                np.asarray(got["relative_variance"], np.float32), expected.stats["relative_variance"]
            )
        else:
            assert got["relative_variance"] == [None] * len(expected)
        if expected.lens.startswith("first_order"):
            assert got["layer_indices"] == [expected.layer_indices.tolist()] * len(expected)
            for name in FIRST_ORDER_FIELDS:
                np.testing.assert_array_equal(
                    np.asarray(got[name], np.float64), np.asarray(expected.__dict__[name], np.float64)
                )
            assert got["layer_top_tokens"] == vocab[expected.layer_top_ids].tolist()
        else:
            assert got["layer_indices"] == [None] * len(expected)


def test_output_order_is_lens_dictionary_feature(full_run):
    out, *_ = full_run
    table = pq.read_table(out / "signatures.parquet", columns=["lens", "dictionary_index", "feature"])
    keys = list(zip(table["lens"].to_pylist(), table["dictionary_index"].to_pylist(), table["feature"].to_pylist()))
    lens_order = {lens: i for i, lens in enumerate(qlens_jax.LENSES)}  # --lenses all: the kernel's order
    assert keys == sorted(keys, key=lambda key: (lens_order[key[0]], key[1], key[2]))


def test_run_json_records_the_run(world, full_run):
    out, args, _ = full_run
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["command"] == ["qlens", *args]
    assert (
        run["options"]["lenses"] == list(qlens_jax.LENSES)
        and run["options"]["k"] == 25
        and run["options"]["stats"] is True
    )
    assert run["options"]["precision"] == "float32" and run["fingerprint_inputs"]["precision"] == "float32"
    assert run["options"]["corpus_encoding"] == "utf-8"
    inputs = run["inputs"]
    assert len(inputs["model"]["sha256"]) == 64 and inputs["model"]["config"]["d_model"] == world.d_model
    assert [d["name"] for d in inputs["dictionaries"]] == ["resid-post-40", "resid-pre-40", "transcoder-40"]
    assert all(len(d["sha256"]) == 64 for d in inputs["dictionaries"])
    sample = inputs["sample"]
    assert sample["encoding"] == "utf-8"
    assert (
        sample["shape"] == [6, 10]
        and sample["seed"] == 0
        and sample["prepend_bos"] is False
        and sample["format"] == "text"
    )
    assert len(sample["file_sha256"]) == 64
    assert run["plan"]["path"] == "dense" and run["plan"]["shard_width"] == 40
    session = run["sessions"][0]
    assert session["versions"]["packages"]["jax"] and session["versions"]["device"]["platform"]
    assert {"inputs", "operators", "readout", "assemble", "total"} <= set(session["timings"])
    assert run["outputs"]["signatures.parquet"]["rows"] == 720
    assert (out / "operators" / "operators.json").is_file()
    assert not list(out.glob(".tmp-*")) and not list((out / "shards").glob(".tmp-*"))


def test_restart_of_a_finished_run_changes_nothing(full_run, capsys):
    out, args, _ = full_run
    before = (out / "signatures.parquet").read_bytes()
    mtime = (out / "signatures.parquet").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "signatures.parquet").read_bytes() == before
    assert (out / "signatures.parquet").stat().st_mtime_ns == mtime  # not even rewritten
    assert "resumed with 18/18 shards done" in capsys.readouterr().out
    assert len(json.loads((out / "run.json").read_text())["sessions"]) == 2


@pytest.mark.parametrize("change, differs", [(["--k", "5"], "k"), (["--precision", "bfloat16"], "precision")])
def test_different_inputs_into_the_same_folder_are_refused(world, full_run, capsys, monkeypatch, change, differs):
    out, args, _ = full_run
    # bfloat16 products are refused on CPU (qlens_jax.numerics); let the plan pass so that the
    # folder's fingerprint check, which comes after it, is what refuses the run.
    monkeypatch.setitem(numerics.BACKENDS, "bfloat16", None)
    before = (out / "signatures.parquet").read_bytes()
    changed = args + change
    assert main(changed) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("qlens signatures: error: --out") and f"different inputs ({differs});" in err and "\n" not in err
    )
    assert (out / "signatures.parquet").read_bytes() == before


def test_operators_cover_only_the_blocks_the_dictionaries_need(full_run):
    """The sweeps stop at the run's dictionaries: values from the lowest write point
    (sae-l0 writes resid_post[0]: block 0 is not swept), keys up to the highest read point
    (sae-l2 reads resid_pre[2]: block 2 is not swept)."""
    out, *_ = full_run
    meta = json.loads((out / "operators" / "operators.json").read_text())
    assert (meta["value_from_point"], meta["key_to_point"]) == (2, 4)
